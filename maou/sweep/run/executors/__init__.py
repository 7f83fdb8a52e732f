"""Executors run a step's trials: in this process (``local``) or on Ray Tune (``ray``); ``auto``
(the default) picks one for the machine (:func:`resolve_auto`).

An executor has one method, ``run(step)``: it pulls ``(handle, job)`` pairs with
``step.next_job()`` until it answers ``None``, runs each job (:func:`maou.sweep.run.job.run_job`)
with every evaluation forwarded to ``step.recorder.report``, and hands the outcome to
``step.recorder.finish`` (or ``interrupt``). The recorder is the only writer of trials.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any


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


def make_executor(config: Any) -> Any:
    """The executor for a spec's ``executor`` section (Ray imported only when it is Ray)."""
    config = resolve_auto(config)
    if config.kind == "ray":
        from maou.sweep.run.executors.ray import RayExecutor

        return RayExecutor(config)
    from maou.sweep.run.executors.local import LocalExecutor

    return LocalExecutor()
