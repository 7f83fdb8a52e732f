"""What trainings cost here, from what :mod:`~maou.sweep.run.measure` measured: one training in its
parts (:class:`TrainingCost`), trials at once, and the driver's storage work.

* **Trials at once on a CPU**: :func:`contention` is how much slower each of ``k`` trials at once
  runs than one alone, from the cores, the threads per trial and the other work's load (sampled
  while the steps are timed) (``sweep plan``'s estimate).
* **Trials at once on one GPU**: the local pool's probe trains a configuration alone, then as 2,
  4, ... copies at once (each a :func:`~maou.sweep.run.measure.short_training`);
  :func:`window_rate` counts their samples per second over the window they all train in and
  :func:`choose_concurrency` picks the ``k`` with the most samples per second that fits the free
  device memory.
* **Storage**: an operation on a temporary storage of the same kind beside the sweep's
  (:func:`storage_op_seconds`), times the operations the driver makes (``OPS_*``, counted).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

#: Storage operations (reads and writes) of the driver, counted by phase with a counting storage on
#: ``sweep run sweeps/cpu/stage3-lr-batch.yaml`` (local pool, 2 at once: 1,304 operations for 16
#: trainings, 10 copies, 6 steps): a trained training (started, annotated, finished, its dashboard
#: note) and one more for each of its evaluations; a finished trial copied into a later step; a
#: step (its study opened, its plan, its decision, its notes); the sweep (its lock, its checks).
OPS_PER_TRAINING = 43
OPS_PER_EVALUATION = 1
OPS_PER_COPY = 10
OPS_PER_STEP = 69
OPS_PER_SWEEP = 71
#: Storage operations timed by :func:`storage_op_seconds`: a step study of ``PROBE_TRIALS`` trials,
#: each written ``PROBE_ATTRS`` attributes of ``PROBE_BYTES`` (a trial's 23 attributes are 2.3 kB),
#: then read whole ``PROBE_READS`` times (as the driver reads a step). An operation is the mean of
#: a write and a read (the driver's are about half and half), the slowest tenth of each left out
#: (another process's disk sync, not the rule).
PROBE_TRIALS, PROBE_ATTRS, PROBE_BYTES, PROBE_READS = 4, 8, 250, 10
#: The GPU probe: share of the free device memory the trials at once may take together.
HEADROOM = 0.9
#: The fewest trials at once within this share of the most samples/s win (more only cost memory).
WITHIN = 0.05

#: Storage operation seconds by (kind, folder).
_STORAGE: dict[tuple[str, str], float | None] = {}


@dataclass(frozen=True)
class TrainingCost:
    """One training of a configuration here, in its measured parts (seconds)."""

    device: str
    #: The configuration's batch and optimizer steps.
    batch_size: int
    steps: int
    #: One optimizer step at ``batch_size`` (scaled by rows from ``timed_batch``), and how many were timed.
    step_s: float
    timed_batch: int
    timed_steps: int
    #: Evaluations during a training, their rows, one's seconds.
    evals: int
    eval_rows: int
    eval_s: float
    #: The closing evaluation on the whole validation split (0 rows: the evaluations see it whole).
    final_rows: int
    final_s: float
    #: A training's model, optimizer, data on the device and checkpoint.
    setup_s: float
    #: Once per process that trains: (what, seconds).
    startup: tuple[tuple[str, float], ...]
    #: One storage operation of the driver (None: not measured, a server's storage).
    op_s: float | None
    #: Timed on the built datasets (else random rows of the stage's shapes).
    real_data: bool
    #: Threads runnable besides the measurement's own while it measured (other work's load).
    load: float
    #: How long the measurement took.
    seconds: float

    @property
    def startup_s(self) -> float:
        return sum(seconds for _, seconds in self.startup)

    @property
    def training_s(self) -> float:
        """One training alone in a warm process, without the driver's storage work."""
        return self.setup_s + self.steps * self.step_s + self.evals * self.eval_s + self.final_s

    @property
    def ops_per_training(self) -> int:
        return OPS_PER_TRAINING + OPS_PER_EVALUATION * self.evals


def evaluations(steps: int, eval_every: int, at_start: bool) -> int:
    """Evaluations of a training of ``steps`` optimizer steps: every ``eval_every`` and at the end
    (and the untrained model first when ``at_start``)."""
    return int(at_start) + math.ceil(steps / max(1, eval_every))


def contention(at_once: int, threads: int, cores: int, load: float) -> float:
    """How many times slower each of ``at_once`` trials of ``threads`` threads (0: every core) runs
    than one alone on ``cores`` cores, with ``load`` runnable threads of other work: each thread
    gets at most a core, and a share of them when more want one."""
    per = threads if threads > 0 else cores
    alone = max(1.0, (load + per) / cores)
    together = max(1.0, (load + at_once * per) / cores)
    return together / alone


# ----------------------------------------------------------------------------- trials at once on one GPU
class Measurement(NamedTuple):
    """One round of the probe: ``k`` copies at once, their samples/s together, their peak device
    memory together."""

    k: int
    samples_per_s: float
    peak_bytes: int


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def choose_concurrency(measurements: Sequence[tuple[int, float, int]], free_bytes: int | None,
                       headroom: float = HEADROOM, within: float = WITHIN) -> tuple[int, str]:
    """The trials at once from the probe's ``(k, total samples/s, peak bytes together)``, and why.

    A ``k`` fits when its copies' peak memory is at most ``headroom`` of ``free_bytes`` (None: no
    device memory to mind, as on a CPU); one copy always fits (it is what runs anyway). Of those that
    fit, the fewest whose samples/s are within ``within`` of the most win."""
    measured = sorted(Measurement(*m) for m in measurements)
    if not measured:
        return 1, "nothing measured"
    fits = [m for m in measured if m.k == 1 or free_bytes is None or m.peak_bytes <= headroom * free_bytes]
    most = max(m.samples_per_s for m in fits)
    chosen = next(m for m in fits if m.samples_per_s >= (1 - within) * most)
    alone = next((m for m in measured if m.k == 1), measured[0])
    words = [f"probe: {chosen.k} at once train {chosen.samples_per_s:,.0f} samples/s together, "
             f"{alone.k} alone {alone.samples_per_s:,.0f}"]
    if free_bytes is not None:
        words.append(f"peak {_gib(chosen.peak_bytes)} of {_gib(free_bytes)} free")
    over = [str(m.k) for m in measured if m not in fits]
    if over:
        words.append(f"{', '.join(over)} at once would not fit")
    return chosen.k, "; ".join(words)


def window_rate(stamps: Sequence[Sequence[float]], batch_size: int) -> float:
    """Samples/s of copies trained at once (each copy's step times), counted over the window every
    copy trains in: from the last copy's first step to the first copy's last one."""
    runs = [s for s in stamps if len(s) >= 2]
    if not runs:
        return 0.0
    start, end = max(s[0] for s in runs), min(s[-1] for s in runs)
    if end <= start:  # they did not overlap: each alone, added up
        return sum(batch_size * (len(s) - 1) / (s[-1] - s[0]) for s in runs if s[-1] > s[0])
    steps = sum(sum(1 for t in s if start < t <= end) for s in runs)
    return batch_size * steps / (end - start)


# ----------------------------------------------------------------------------- the driver's storage work
def storage_op_seconds(url: str) -> float | None:
    """Seconds one operation of a storage like ``url``'s takes here, on average: a temporary SQLite
    or journal storage of the same kind, in the folder of ``url``'s file when it exists (else the
    temporary folder), written and read as the driver does (``PROBE_*``), then removed; 0 for
    ``memory:``; None for a database server (not measured: nothing is written there). Once per
    process and folder."""
    from maou.sweep.storage.urls import file_of

    if url == "memory:":
        return 0.0
    path = file_of(url)
    if path is None:
        return None
    kind = "journal" if url.startswith("journal://") else "sqlite"
    folder = path.parent if path.parent.is_dir() and os.access(path.parent, os.W_OK) else Path(tempfile.gettempdir())
    key = (kind, str(folder))
    if key not in _STORAGE:
        try:
            _STORAGE[key] = _time_storage(kind, folder)
        except Exception:  # noqa: BLE001 - only an estimate: an unwritable folder leaves it unmeasured
            _STORAGE[key] = None
    return _STORAGE[key]


def _time_storage(kind: str, folder: Path) -> float:
    import optuna
    from optuna.study import StudyDirection

    from maou.sweep.storage import open_storage

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "a new study created" line
    with tempfile.TemporaryDirectory(prefix=".maou-measure-", dir=folder) as tmp:
        target = Path(tmp) / "probe"
        storage = open_storage(f"sqlite:///{target}" if kind == "sqlite" else f"journal://{target}")
        try:
            study = storage.create_new_study([StudyDirection.MAXIMIZE], "probe")
            writes, reads = [], []
            for _ in range(PROBE_TRIALS):
                trial = storage.create_new_trial(study)
                for i in range(PROBE_ATTRS):
                    started = time.perf_counter()
                    storage.set_trial_user_attr(trial, f"probe{i}", "x" * PROBE_BYTES)
                    writes.append(time.perf_counter() - started)
            for _ in range(PROBE_READS):
                started = time.perf_counter()
                storage.get_all_trials(study, deepcopy=False)
                reads.append(time.perf_counter() - started)
            return (_trimmed_mean(writes) + _trimmed_mean(reads)) / 2
        finally:
            _dispose(storage)
            optuna.logging.set_verbosity(verbosity)


def _trimmed_mean(values: list[float]) -> float:
    kept = sorted(values)[: max(1, len(values) * 9 // 10)]
    return sum(kept) / len(kept)


def _dispose(storage: Any) -> None:
    """Close an RDB storage's connections (its file is removed next)."""
    for _ in range(4):
        engine = getattr(storage, "engine", None)
        if engine is not None:
            with contextlib.suppress(Exception):
                engine.dispose()
            return
        storage = getattr(storage, "inner", None)
        if storage is None:
            return


__all__ = ["HEADROOM", "OPS_PER_COPY", "OPS_PER_EVALUATION", "OPS_PER_STEP", "OPS_PER_SWEEP", "OPS_PER_TRAINING",
           "WITHIN", "Measurement", "TrainingCost", "choose_concurrency", "contention", "evaluations",
           "storage_op_seconds", "window_rate"]
