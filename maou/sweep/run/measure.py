"""How long a training takes on this machine, measured on the device the run would use, with one
timing of its optimizer steps (:func:`timed_steps`: the trainer's own, :mod:`maou.trainer.loop`'s
``set_up``, ``training_batches`` and ``optimizer_step``, on one clock of this machine) for both:

* :func:`measure_training`, ``sweep plan``'s estimate (and ``sweep run``'s first ETA), times a
  training in its parts (:class:`~maou.sweep.run.cost.TrainingCost` adds them up). Its wall time is
  more than its optimizer steps: the process that trains it starts (a worker's interpreter and
  imports, the datasets opened, the first set-up and the first step's warm-up: once per process),
  every training builds its model and optimizer, evaluates every ``budget.eval_every`` steps on its
  evaluation rows, computes its final metrics on the whole validation split, writes its checkpoint,
  and the driver records it all in the storage:

  * **steps**: the real optimizer step of the configuration (its model, loss, optimizer and
    threads) on the rows it trains on when its datasets are built (else random rows of the stage's
    shapes: nothing is built here), each waited for, timed after one warm-up step until
    ``step_budget_s`` seconds or ``max_timed_steps`` steps, whichever comes first. On a CPU the
    steps start at a small batch and grow 4x while the next size's steps still fit the budget; a
    step at the configuration's batch is the largest timed batch's, scaled by rows (a CPU step's
    time grows about linearly with its rows; an upper bound where it grows less);
  * **evaluations**: an evaluation pass on as many validation rows as ``eval_budget_s`` allows
    (twice when it is cheap: the first pays the warm-up), scaled by rows to an evaluation during
    training (``eval_rows``) and to the closing one on the whole validation split;
  * **set-up**: a second model, optimizer and data on the device (as every training builds), and
    the checkpoint written to a temporary folder;
  * **start-up**: where trials run in worker processes, a fresh interpreter importing what a
    worker imports before its first step, timed from its start to its exit (:class:`WorkerProbe`,
    once a process); in process, the first optimizer's ``torch._dynamo`` import; either way the
    datasets opened, the first set-up (the split's training reference) and the first step's warm-up;
  * **storage**: :func:`~maou.sweep.run.cost.storage_op_seconds`; and the other work's load,
    sampled while the steps are timed (:class:`_Runnable`), for trials at once.

* :func:`short_training`, the local pool's GPU probe (in a worker), trains a configuration as a
  trial does, its steps paced as ``train_stage``'s, and reads the device's free and peak memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maou.sweep.run.cost import TrainingCost, evaluations, storage_op_seconds

#: Seconds of optimizer steps one measurement times, at most (and at most ``MAX_TIMED_STEPS`` of them).
STEP_BUDGET_S = 1.5
MAX_TIMED_STEPS = 20
#: Steps timed at a batch before the next, larger one is tried.
MIN_TIMED_STEPS = 2
#: Seconds of evaluation one measurement times, about.
EVAL_BUDGET_S = 0.4
#: On a CPU the steps are first timed at this batch (or the config's, if smaller), then at 4x as
#: long as the next size's warm-up and ``MIN_TIMED_STEPS`` fit the budget.
START_BATCH = 16
GROWTH = 4
#: What a worker process of the local pool imports before its first step: the entry point (spawn
#: runs it again), the pool, the datasets and the trainer, torch, and the ``torch._dynamo`` the
#: first optimizer imports.
WORKER_IMPORTS = ("import maou.cli, maou.sweep.run.executors.pool, maou.data.resolve, maou.trainer.loop, torch, "
                  "torch._dynamo")
#: A CUDA context's device memory, which ``max_memory_reserved`` does not count.
CONTEXT_BYTES = 512 * 2**20

#: Costs paid once per process, measured once per process: ``worker process``, ``torch._dynamo import``.
_ONCE: dict[str, float] = {}


@dataclass(frozen=True)
class ShortTraining:
    """A short training as :func:`short_training` measured it."""

    #: ``time.monotonic()`` at the end of each optimizer step (one clock for this machine's processes).
    stamps: tuple[float, ...]
    #: The run's peak device memory, its CUDA context included (0: no device memory, a CPU).
    peak_bytes: int = 0
    #: The device's free memory when it started, this process's CUDA context counted free (None: a CPU).
    free_bytes: int | None = None

    @property
    def step_s(self) -> float:
        """Seconds a step, from the first step's end to the last one's."""
        return (self.stamps[-1] - self.stamps[0]) / max(1, len(self.stamps) - 1)


class _Runnable:
    """Threads runnable on this machine besides the measurement's own, sampled while it measures
    (``/proc/loadavg``'s running count: the load right now, not a minute's average that this
    process's own imports, or the run that just ended, are part of); the load average elsewhere."""

    def __init__(self, own: int) -> None:
        self.own = own
        self.samples: list[int] = []

    def sample(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open("/proc/loadavg") as f:
                self.samples.append(int(f.read().split()[3].split("/")[0]))

    @property
    def others(self) -> float:
        if not self.samples:
            return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return max(0.0, sum(self.samples) / len(self.samples) - self.own)


def _timed_import(name: str) -> float:
    """Seconds importing ``name`` took here (0 when it already was imported; once per process)."""
    key = f"{name} import"
    if key not in _ONCE:
        if name in sys.modules:
            return 0.0
        import importlib

        started = time.perf_counter()
        importlib.import_module(name)
        _ONCE[key] = time.perf_counter() - started
    return _ONCE[key]


class WorkerProbe:
    """A fresh interpreter importing what a worker imports (:data:`WORKER_IMPORTS`), timed from its
    start to its exit: started early (it runs beside this process's own imports), then either
    :meth:`seconds` or :meth:`cancel`. Once per process: a later probe reads the first one's time."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.process: subprocess.Popen | None = None
        if "worker process" not in _ONCE:
            self.process = subprocess.Popen([sys.executable, "-c", WORKER_IMPORTS], stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def seconds(self) -> float | None:
        """The start-up, imports and exit of a worker interpreter (None: it failed)."""
        if self.process is None:
            return _ONCE.get("worker process")
        try:
            code = self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.cancel()
            return None
        self.process = None
        if code != 0:
            return None
        _ONCE["worker process"] = time.perf_counter() - self.started
        return _ONCE["worker process"]

    def cancel(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def _random_data(config: Any, train: int, val: int) -> Any:
    """Random rows of the stage's shapes (datasets not built): ``train`` and ``val`` rows."""
    import torch

    from maou.shogi.shapes import BOARD_SHAPE, PIECE_IDS_NUM, PIECES_IN_HAND_NUM
    from maou.stages import stage
    from maou.trainer.split import Split
    from maou.trainer.tensors import StageData

    def split(n: int) -> Split:
        targets = {t.name: (torch.rand((n, t.width) if t.width else (n,)) < 0.1).to(getattr(torch, t.dtype))
                   for t in stage(config.stage).targets}
        return Split(torch.randint(0, PIECE_IDS_NUM, (n, *BOARD_SHAPE), dtype=torch.uint8),
                     torch.randint(0, 3, (n, PIECES_IN_HAND_NUM), dtype=torch.uint8), targets)

    return StageData(config.stage, split(train), split(val))


def _built_data(config: Any, up_to_date: bool | None) -> tuple[Any, float] | None:
    """The configuration's datasets as a trial opens them, and the seconds that took, when they are
    built and up to date (``up_to_date``: the answer already known; None: asked here; the synthetic
    Stage 1 rows always are); never builds."""
    from maou.data.build import datasets_up_to_date
    from maou.data.resolve import load_datasets
    from maou.stages import stage

    if stage(config.stage).data_source != "synthetic" and not (
            datasets_up_to_date(config.data) if up_to_date is None else up_to_date):
        return None
    started = time.perf_counter()
    data = load_datasets(config)
    return data, time.perf_counter() - started


def _sync(device: Any) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def timed_steps(run: Any, config: Any, batches: Iterator[Any], lr: float,
                wait: bool = True) -> Iterator[tuple[float, float]]:
    """The optimizer steps of ``run`` (a :class:`~maou.trainer.loop.TrainingRun` of ``config``) on
    ``batches`` at learning rate ``lr``, yielding each step's start (its batch fetched first) and
    end on ``time.monotonic()``, until the batches end or the caller stops. ``wait``: each step
    waited for (its own seconds); else paced as ``train_stage`` paces its steps (each loss read, on
    CUDA one step late), as copies at once share a device."""
    from maou.trainer.loop import RunningLoss, optimizer_step

    running = RunningLoss(run.device)
    while True:
        started = time.monotonic()
        batch = next(batches, None)
        if batch is None:
            return
        loss = optimizer_step(run, config, lr, *batch)
        if wait:
            _sync(run.device)
        else:
            running.add(loss)
        yield started, time.monotonic()


def _time_steps(run: Any, config: Any, rows: int, budget_s: float, max_timed: int, start_batch: int,
                runnable: _Runnable) -> tuple[float, int, int, float]:
    """(seconds of a step at the config's batch, the batch timed, steps timed, the first step's
    extra time): steps timed until ``budget_s`` or ``max_timed``; on a CPU from ``start_batch``
    up, 4x at a time while the next size fits."""
    from maou.trainer.loop import training_batches

    full = max(1, min(config.batch_size, rows))
    batch = full if run.device.type == "cuda" else min(full, start_batch)
    began = time.perf_counter()
    first_extra: float | None = None
    while True:
        sized = dataclasses.replace(config, batch_size=batch)
        batches = training_batches(run, sized, rows, batch, max_timed + 1)
        times: list[float] = []
        grow: int | None = None
        try:
            steps = timed_steps(run, sized, batches, config.optim.lr)
            started, ended = next(steps)
            warm_up = ended - started
            for started, ended in steps:
                times.append(ended - started)
                runnable.sample()
                if len(times) < MIN_TIMED_STEPS:
                    continue
                spent, step = time.perf_counter() - began, sum(times) / len(times)
                if batch < full:
                    bigger = min(full, batch * GROWTH)
                    if spent + step * bigger / batch * (1 + MIN_TIMED_STEPS) <= budget_s:
                        grow = bigger
                        break
                if spent >= budget_s:
                    break
        finally:
            batches.close()
        step = sum(times) / len(times)
        if first_extra is None:
            first_extra = max(0.0, warm_up - step)
        if grow is None:
            return step * full / batch, batch, len(times), first_extra
        batch = grow


def _time_evaluation(run: Any, config: Any, rows: int, budget_s: float, row_s: float) -> float:
    """Seconds an evaluation takes a validation row: one pass on as many rows as ``budget_s``
    allows (guessed from a training step's seconds a row, ``row_s``), at most ``rows``."""
    import torch

    from maou.trainer.metrics import evaluate

    split = run.val_full
    n = max(1, min(len(split), rows, max(16, int(budget_s / 2 / max(row_s / 2, 1e-9)))))
    part = split if n >= len(split) else split.subset(torch.arange(n, device=split.device))
    seconds = math.inf
    for _ in range(2):  # the first pass at a shape pays its warm-up: a second one when the first was cheap
        started = time.perf_counter()
        evaluate(run.model, run.task, run.loss_fn, part, run.reference, max(config.batch_size, 256), run.amp_dtype)
        _sync(run.device)
        seconds = min(seconds, time.perf_counter() - started)
        if seconds > budget_s / 2:
            break
    return seconds / n


def _time_checkpoint(run: Any, config: Any) -> float:
    from maou.trainer.checkpoint import CHECKPOINT_NAME, save_checkpoint

    with tempfile.TemporaryDirectory(prefix="maou-measure-") as folder:
        started = time.perf_counter()
        save_checkpoint(Path(folder) / CHECKPOINT_NAME, run.model, config, 0)
        return time.perf_counter() - started


def measure_training(config: Any, train_rows: int, val_rows: int | None = None, *, workers: bool = False,
                     worker_probe: WorkerProbe | None = None, up_to_date: bool | None = None,
                     storage_url: str | None = None, step_budget_s: float = STEP_BUDGET_S,
                     max_timed_steps: int = MAX_TIMED_STEPS, eval_budget_s: float = EVAL_BUDGET_S,
                     start_batch: int = START_BATCH) -> TrainingCost:
    """One training of ``config`` (``train_rows`` training rows, ``val_rows`` validation rows
    when its datasets are not built; ``workers``: the trials run in worker processes, whose start-up
    ``worker_probe`` times when given, else one started here), measured here in its parts (see the
    module docstring); ``up_to_date``: whether its datasets are built and up to date, when the
    caller has asked (else asked here); ``storage_url``: the driver's storage, whose operations are
    timed beside it. Never builds datasets."""
    import torch  # noqa: F401 - what everything below needs; a trial's process has it already

    from maou.trainer.config import Budget
    from maou.trainer.loop import set_up

    began = time.perf_counter()
    probe = (worker_probe or WorkerProbe()) if workers else None  # it starts while this process loads
    if worker_probe is not None and not workers:
        worker_probe.cancel()
    startup: list[tuple[str, float]] = []
    dynamo = _timed_import("torch._dynamo")  # the first optimizer's import (a worker's is in its probe)
    total_steps = config.budget.total_steps(train_rows, config.batch_size)
    probe_config = dataclasses.replace(config, init_from=None, eval_at_start=False,
                                       budget=Budget(max_steps=max_timed_steps + 1, eval_every=max_timed_steps + 1))
    built = _built_data(probe_config, up_to_date)
    if built is not None:
        data, opened = built
        train_rows = len(data.train)
        val_rows = len(data.val)
    else:
        val_rows = val_rows if val_rows is not None else max(1, train_rows // 9)
        rows = max(2, min(2 * config.batch_size, 2**16))
        eval_part = val_rows if config.eval_rows == 0 else min(config.eval_rows, val_rows)
        data, opened = _random_data(config, rows, max(1, min(eval_part, 2048))), 0.0
    if workers:
        worker = probe.seconds() if probe is not None else None
        startup.append(("worker process", worker if worker is not None else dynamo))
    else:
        startup.append(("torch._dynamo import", dynamo))
    if built is not None:
        startup.append(("datasets opened", opened))
    started = time.perf_counter()
    run = set_up(probe_config, data)
    cold_setup = time.perf_counter() - started
    runnable = _Runnable(own=max(1, config.threads))
    step_s, timed_batch, timed, first_extra = _time_steps(run, probe_config, len(data.train), step_budget_s,
                                                          max_timed_steps, start_batch, runnable)
    eval_rows = val_rows if config.eval_rows == 0 else min(config.eval_rows, val_rows)
    row_s = _time_evaluation(run, probe_config, eval_rows, eval_budget_s, step_s / max(1, config.batch_size))
    checkpoint = _time_checkpoint(run, probe_config)
    started = time.perf_counter()
    set_up(probe_config, data)  # what every training builds again
    setup = time.perf_counter() - started
    startup += [("first set-up", max(0.0, cold_setup - setup)), ("first step", first_extra)]
    final_rows = val_rows if eval_rows < val_rows else 0
    return TrainingCost(
        device=str(run.device), batch_size=config.batch_size, steps=total_steps, step_s=step_s,
        timed_batch=timed_batch, timed_steps=timed,
        evals=evaluations(total_steps, config.budget.eval_every, config.eval_at_start), eval_rows=eval_rows,
        eval_s=row_s * eval_rows, final_rows=final_rows, final_s=row_s * final_rows, setup_s=setup + checkpoint,
        startup=tuple(startup), op_s=storage_op_seconds(storage_url) if storage_url else None,
        real_data=built is not None, load=runnable.others, seconds=time.perf_counter() - began)


def short_training(config: Any) -> ShortTraining:
    """A short training of ``config`` as a trial trains it, measured (the local pool's GPU probe, in
    a worker process): its datasets opened as a trial opens them (cached per process), its budget of
    optimizer steps paced as ``train_stage`` paces them (:func:`timed_steps`), then the closing
    evaluation on the whole validation split (its memory counts too); the device's free memory
    before and the run's peak after, its cache emptied (what this process trains next starts from
    nothing)."""
    import torch

    from maou.data.resolve import load_datasets
    from maou.trainer.loop import set_up, training_batches
    from maou.trainer.metrics import evaluate

    cuda = config.device != "cpu" and torch.cuda.is_available()
    device = torch.device(config.device if config.device.startswith("cuda") else "cuda") if cuda else None
    free = None
    if device is not None:
        torch.cuda.reset_peak_memory_stats(device)
        free = torch.cuda.mem_get_info(device)[0] + CONTEXT_BYTES
    data = load_datasets(config)
    run = set_up(config, data)
    rows = len(data.train)
    batches = training_batches(run, config, rows, config.batch_size, config.budget.total_steps(rows, config.batch_size))
    try:
        stamps = tuple(ended for _, ended in timed_steps(run, config, batches, config.optim.lr, wait=False))
    finally:
        batches.close()
    evaluate(run.model, run.task, run.loss_fn, run.val_full, run.reference, max(config.batch_size, 256), run.amp_dtype)
    del run, batches  # the run's device memory freed before the cache is emptied
    peak = 0
    if device is not None:
        peak = torch.cuda.max_memory_reserved(device) + CONTEXT_BYTES
        torch.cuda.empty_cache()
    return ShortTraining(stamps, peak, free)


__all__ = ["CONTEXT_BYTES", "ShortTraining", "WorkerProbe", "measure_training", "short_training", "timed_steps"]
