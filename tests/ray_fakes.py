"""Trainers for the Ray tests. They run inside Ray workers, so they live in an importable module
that the tests ship by value (``ray.cloudpickle.register_pickle_by_value``): workers need not have
``tests/`` on their path."""

from __future__ import annotations

import os
import time
from pathlib import Path

from maou.sweep.job import train_on_datasets
from maou.trainer.result import TrainResult


def crash_once(config, report, checkpoint_dir) -> TrainResult:
    """Seed 0: the worker process dies (``os._exit``) right after its first evaluation, once.

    A marker in the trial's checkpoint folder remembers the first attempt; Ray's retry trains
    for real."""
    marker = Path(checkpoint_dir) / "crashed-once"
    if config.seed != 0 or marker.exists():
        return train_on_datasets(config, report, checkpoint_dir)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(os.getpid()))

    def report_then_die(step, metrics):
        report(step, metrics)
        os._exit(1)

    return train_on_datasets(config, report_then_die, checkpoint_dir)


def flaky(config, report, checkpoint_dir) -> TrainResult:
    """lr > 1 raises a Python error (recorded on the trial as FAIL, not retried); otherwise
    :func:`crash_once`."""
    if config.optim.lr > 1.0:
        raise RuntimeError("CUDA out of memory (simulated)")
    return crash_once(config, report, checkpoint_dir)


def slow(config, report, checkpoint_dir) -> TrainResult:
    """The real trainer, held back a little so concurrent trials overlap in time."""
    time.sleep(1.0)
    return train_on_datasets(config, report, checkpoint_dir)
