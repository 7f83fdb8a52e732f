"""Trainers for the Ray tests. They run inside Ray workers, so they live in an importable module
that the tests ship by value (``ray.cloudpickle.register_pickle_by_value``): workers need not have
``tests/`` on their path."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from maou.sweep.run.job import train_on_datasets
from maou.trainer.result import TrainResult


def crash_once(config, report, checkpoint_dir, dataset=None) -> TrainResult:
    """Seed 0: the worker process dies (``os._exit``) right after its first evaluation, once.

    A marker in the trial's checkpoint folder remembers the first attempt; Ray's retry trains
    for real."""
    marker = Path(checkpoint_dir) / "crashed-once"
    if config.seed != 0 or marker.exists():
        return train_on_datasets(config, report, checkpoint_dir, dataset)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(os.getpid()))

    def report_then_die(step, metrics):
        report(step, metrics)
        os._exit(1)

    return train_on_datasets(config, report_then_die, checkpoint_dir, dataset)


def flaky(config, report, checkpoint_dir, dataset=None) -> TrainResult:
    """lr > 1 raises a Python error (recorded on the trial as FAIL, not retried); otherwise
    :func:`crash_once`."""
    if config.optim.lr > 1.0:
        raise RuntimeError("CUDA out of memory (simulated)")
    return crash_once(config, report, checkpoint_dir)


def slow(config, report, checkpoint_dir, dataset=None) -> TrainResult:
    """The real trainer, held back a little so concurrent trials overlap in time."""
    time.sleep(1.0)
    return train_on_datasets(config, report, checkpoint_dir, dataset)


def record_data_paths(config, report, checkpoint_dir, dataset=None) -> TrainResult:
    """The real trainer, writing ``data-paths.json`` into the trial's folder: the dataset files the
    worker opened (Python's ``open``) and mapped (``/proc/self/maps``) and its working directory.
    On a node whose ``MAOU_TEST_NODE_CWD`` is set, it first moves there: a node where the driver's
    working directory is elsewhere."""
    elsewhere = os.environ.get("MAOU_TEST_NODE_CWD")
    if elsewhere:
        os.makedirs(elsewhere, exist_ok=True)
        os.chdir(elsewhere)
    state = sys.__dict__.setdefault("_maou_test_opened", [])  # per worker process, across trials
    if not state:
        state.append(None)
        sys.addaudithook(lambda event, args: state.append(str(args[0])) if event == "open" and args
                         and isinstance(args[0], (str, os.PathLike)) else None)
    del state[1:]
    time.sleep(1.0)  # concurrent trials overlap in time: both nodes train
    result = train_on_datasets(config, report, checkpoint_dir, dataset)
    with open("/proc/self/maps") as maps:
        mapped = sorted({line.split(maxsplit=5)[-1].strip() for line in maps if ".feather" in line})
    opened = sorted({p for p in state[1:] if p.endswith((".feather", "manifest.json"))})
    Path(checkpoint_dir, "data-paths.json").write_text(json.dumps({"opened": opened, "mapped": mapped,
                                                                   "cwd": os.getcwd()}))
    return result
