"""Executors run a step's trials: in this process (``local``) or on Ray Tune (``ray``); ``auto``
(the default) picks one for the machine (:func:`resolve_auto`).

An :class:`Executor` has one method, ``run(step)``: it pulls ``(handle, job)`` pairs with
``step.next_job()`` until it answers ``None``, runs each job (:func:`maou.sweep.run.job.run_job`)
with every evaluation forwarded to ``step.recorder.report``, and hands the outcome to
``step.recorder.finish`` (or ``interrupt``). The recorder is the only writer of trials.

:data:`EXECUTORS` is the registry: the spec's ``executor.kind`` and ``sweep run --executor`` take
its names, and :func:`make_executor` builds one by name (the class imported only then, so Ray is
imported only when it runs). An executor whose trials run in other processes speaks the worker
protocol of :mod:`maou.sweep.run.executors.remote`.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from maou.sweep.run.step import StepRun


class Executor(Protocol):
    """Runs the trials of one step (see the module docstring)."""

    def run(self, step: StepRun) -> None: ...


@dataclass(frozen=True)
class ExecutorKind:
    name: str
    #: One line for ``--help``.
    summary: str
    #: ``module:Class`` built with the spec's ``executor`` section (None: resolved first, ``auto``).
    factory: str | None


EXECUTORS: dict[str, ExecutorKind] = {k.name: k for k in (
    ExecutorKind("auto", "local on a CPU-only or one-GPU machine, ray when several trials' GPUs fit", None),
    ExecutorKind("local", "trials one after another in this process",
                 "maou.sweep.run.executors.local:LocalExecutor"),
    ExecutorKind("ray", "trials side by side on Ray Tune, across GPUs and nodes",
                 "maou.sweep.run.executors.ray:RayExecutor"),
)}


def visible_gpus() -> int:
    """CUDA devices this process sees (``CUDA_VISIBLE_DEVICES`` applied); 0 without CUDA."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_auto(config: Any, gpus: int | None = None) -> Any:
    """The ``executor`` section ``auto`` stands for here (other kinds are returned as they are).

    * a cluster address (``address``, or ``RAY_ADDRESS`` set): ``ray``;
    * at least two trials' worth of GPUs (``gpus`` visible, default :func:`visible_gpus`;
      ``gpus_per_trial``, or 1 when 0): ``ray`` with that ``gpus_per_trial``, so every GPU
      trains (fractions pack several trials on one GPU, all mapping one copy of the data);
    * otherwise (CPU only, or one GPU for one trial): ``local``, in this process.
    """
    if config.kind != "auto":
        return config
    if config.address is not None or os.environ.get("RAY_ADDRESS"):
        return dataclasses.replace(config, kind="ray")
    per_trial = config.gpus_per_trial or 1.0
    gpus = visible_gpus() if gpus is None else gpus
    if math.floor(gpus / per_trial + 1e-9) >= 2:
        return dataclasses.replace(config, kind="ray", gpus_per_trial=per_trial)
    return dataclasses.replace(config, kind="local")


def make_executor(config: Any) -> Executor:
    """The executor for a spec's ``executor`` section (``auto`` resolved first)."""
    config = resolve_auto(config)
    kind = EXECUTORS.get(config.kind)
    if kind is None or kind.factory is None:
        raise ValueError(f"executor.kind must be one of {', '.join(EXECUTORS)}, got {config.kind!r}")
    module, _, name = kind.factory.partition(":")
    executor: Executor = getattr(importlib.import_module(module), name).from_section(config)
    return executor


__all__ = ["EXECUTORS", "Executor", "ExecutorKind", "make_executor", "resolve_auto", "visible_gpus"]
