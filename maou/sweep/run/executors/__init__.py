"""Executors run a step's trials: on this machine (``local``: in this process, or ``max_concurrent``
at once in worker processes) or on Ray Tune (``ray``); ``auto`` (the default) picks one for the
machine, and how many trials run at once (:func:`choose`, :func:`resolve_auto`).

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
    ExecutorKind("auto", "local on a CPU-only or one-GPU machine (as many trials at once as its cores or "
                 "GPU memory hold), ray when several trials' GPUs fit", None),
    ExecutorKind("local", "trials one after another in this process, or executor.max_concurrent at once in "
                 "worker processes", "maou.sweep.run.executors.local:LocalExecutor"),
    ExecutorKind("ray", "trials side by side on Ray Tune, across GPUs and nodes",
                 "maou.sweep.run.executors.ray:RayExecutor"),
)}


def visible_gpus() -> int:
    """CUDA devices this process sees (``CUDA_VISIBLE_DEVICES`` applied); 0 without CUDA."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cores() -> int:
    """CPU cores this process may run on (its affinity mask, as ``taskset`` and containers set it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Choice:
    """What an ``executor`` section comes to on this machine, and why (``sweep run`` prints
    :attr:`line`)."""

    #: The section the executor is built from: ``kind`` local or ray; for local, ``max_concurrent``
    #: is the number of trials at once (1 or null: in this process; null with ``probe``: measured).
    section: Any
    #: Why, in a few words.
    reason: str
    #: On one GPU: the trials at once are measured (:mod:`~maou.sweep.run.executors.pool`) when the
    #: first step starts.
    probe: bool = False

    @property
    def at_once(self) -> int:
        """The trials known to run at once (1 where the probe measures it on a GPU or a Ray cluster
        holds as many as fit)."""
        return self.section.max_concurrent or 1

    @property
    def line(self) -> str:
        section = self.section
        if section.kind == "ray":
            what = "on a Ray cluster" if section.address is not None or os.environ.get("RAY_ADDRESS") else "on Ray Tune"
        elif self.probe:
            what = "trials at once measured on the GPU when the first step starts"
        elif (section.max_concurrent or 1) > 1:
            what = f"{section.max_concurrent} trials at once"
        else:
            what = "one trial at a time"
        return f"executor: {section.kind}, {what} ({self.reason})"


def choose(config: Any, threads: int = 1, gpus: int | None = None, cpu_cores: int | None = None) -> Choice:
    """The ``executor`` section ``auto`` stands for here, and the trials at once of a local one.

    * a cluster address (``address``, or ``RAY_ADDRESS`` set): ``ray``;
    * at least two trials' worth of GPUs (``gpus`` visible, default :func:`visible_gpus`;
      ``gpus_per_trial``, or 1 when 0): ``ray`` with that ``gpus_per_trial``, so every GPU
      trains (fractions pack several trials on one GPU, all mapping one copy of the data);
    * otherwise ``local``, with ``max_concurrent`` trials at once when the spec sets it, else:
      on CPU, as many as the cores hold at ``threads`` torch threads a trial
      (``max(1, cores // threads)``; ``threads`` 0, torch's default of every core: one); on one GPU
      with no ``gpus_per_trial``, measured when the first step starts (``probe``: the number with the
      most samples/s that fits the GPU's memory); one when ``gpus_per_trial`` says a trial takes
      more than half of it.

    An explicit ``local`` runs ``max_concurrent`` trials at once (null: one, in this process); an
    explicit ``ray`` is kept as it is.
    """
    if config.kind == "ray":
        return Choice(config, "executor.kind ray")
    if config.kind == "local":
        return Choice(config, "executor.max_concurrent" if config.max_concurrent else "executor.kind local")
    if config.address is not None or os.environ.get("RAY_ADDRESS"):
        return Choice(dataclasses.replace(config, kind="ray"), f"cluster address {config.address or 'RAY_ADDRESS'}")
    per_trial = config.gpus_per_trial or 1.0
    gpus = visible_gpus() if gpus is None else gpus
    if math.floor(gpus / per_trial + 1e-9) >= 2:
        return Choice(dataclasses.replace(config, kind="ray", gpus_per_trial=per_trial),
                      f"{gpus} GPUs, {per_trial:g} per trial")
    local = dataclasses.replace(config, kind="local")
    if config.max_concurrent is not None:
        return Choice(local, "executor.max_concurrent")
    if gpus >= 1:
        if config.gpus_per_trial == 0:
            return Choice(local, f"{gpus} GPU", probe=True)
        return Choice(dataclasses.replace(local, max_concurrent=1), f"{gpus} GPU, {config.gpus_per_trial:g} per trial")
    have = cores() if cpu_cores is None else cpu_cores
    k = max(1, have // threads) if threads > 0 else 1
    per = f"threads {threads} per trial" if threads > 0 else "threads 0: every core per trial"
    return Choice(dataclasses.replace(local, max_concurrent=k), f"{have} core{'s' if have != 1 else ''}, {per}")


def resolve_auto(config: Any, gpus: int | None = None, threads: int = 1, cpu_cores: int | None = None) -> Any:
    """The ``executor`` section ``auto`` stands for here (:func:`choose`'s section; explicit kinds
    are returned as they are)."""
    return choose(config, threads, gpus, cpu_cores).section


def make_executor(config: Any, threads: int = 1) -> Executor:
    """The executor for a spec's ``executor`` section (``auto`` resolved first, for trials of
    ``threads`` torch threads). One that runs trials in worker processes has a ``close()``."""
    choice = choose(config, threads)
    kind = EXECUTORS.get(choice.section.kind)
    if kind is None or kind.factory is None:
        raise ValueError(f"executor.kind must be one of {', '.join(EXECUTORS)}, got {config.kind!r}")
    section = choice.section
    if choice.probe or (section.kind == "local" and (section.max_concurrent or 1) > 1):
        from maou.sweep.run.executors.pool import PoolExecutor  # several local trials at once

        if choice.probe:
            return PoolExecutor(None, max_retries=section.max_retries)
        return PoolExecutor.from_section(section)
    module, _, name = kind.factory.partition(":")
    executor: Executor = getattr(importlib.import_module(module), name).from_section(choice.section)
    return executor


__all__ = ["EXECUTORS", "Choice", "Executor", "ExecutorKind", "choose", "cores", "make_executor", "resolve_auto",
           "visible_gpus"]
