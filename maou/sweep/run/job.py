"""One trial's training run, as every executor runs it (in process locally, in a worker under Ray).

A :class:`Job` is plain, picklable data: the resolved training config, where its checkpoint goes,
the spec's pruning rules and the run's budget in steps. :func:`run_job` builds the collapse
monitor and trains; every evaluation goes out through ``report`` first (the driver records it and
may answer a stop of Optuna's pruner) and then through the monitor, so a collapse stops a run the
same way locally and under Ray. Nothing here imports Optuna or Ray.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from maou.errors import UserError
from maou.stages import stage
from maou.sweep.run.pruning import PruningConfig, build_monitor
from maou.trainer.config import DataConfig, TrainConfig
from maou.trainer.result import History, Report, Stop, TrainResult

if TYPE_CHECKING:
    from maou.trainer.tensors import StageData

#: Trains one config: ``(config, report, checkpoint_dir) -> TrainResult``; tests pass fakes.
TrainFn = Callable[[TrainConfig, Report, "str | None"], TrainResult]
#: ``(optimizer step, steps of the budget)``, as a run goes.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Job:
    number: int
    config: TrainConfig
    checkpoint_dir: str
    pruning: PruningConfig
    #: The run's budget in optimizer steps (grace periods are shares of it).
    max_steps: int
    #: Content hash of the datasets the sweep recorded (None for synthetic rows): verified on load.
    dataset_hash: str | None = None
    #: The step's objective (metric, direction): what "best evaluation" means for this run.
    objective: tuple[str, str] | None = None


class DatasetChanged(UserError):
    """The data a trial would train on is not the data its sweep recorded."""


#: Dataset folders handed to this process for a data config (a node-local copy of the driver's
#: datasets, :mod:`maou.sweep.run.executors.shipping`): used as they are, never rebuilt here.
_PROVIDED: dict[DataConfig, str] = {}


def provide_dataset(data: DataConfig, directory: str) -> None:
    """Train every config whose ``data`` is ``data`` on the built datasets in ``directory``."""
    _PROVIDED[data] = directory


@lru_cache(maxsize=4)
def _cached_stage_data(stage: int, dataset_dir: str | None, dataset_hash: str | None) -> StageData:
    from maou.trainer.tensors import load_stage_data

    return load_stage_data(stage, dataset_dir)


def dataset_of(config: TrainConfig, progress: bool = False) -> tuple[str | None, str | None]:
    """Build the stage's datasets if needed and return their folder and content hash
    (``(None, None)`` for a stage whose rows are synthetic)."""
    if stage(config.stage).data_source == "synthetic":
        return None, None
    with _ready(config, progress) as (directory, content_hash):
        return directory, content_hash


@contextlib.contextmanager
def _ready(config: TrainConfig, progress: bool) -> Iterator[tuple[str, str | None]]:
    """The stage's dataset folder and content hash: a node-local copy handed to this process as it
    is, else the build folder, built if needed, its lock held while the block reads it."""
    if config.data in _PROVIDED:
        from maou.trainer.tensors import dataset_content_hash

        directory = _PROVIDED[config.data]
        yield directory, dataset_content_hash(directory)
        return
    from maou.data.build import datasets_ready

    with datasets_ready(config.data, progress=progress) as (path, content_hash):
        yield str(path), content_hash


def load_datasets(config: TrainConfig, expected_hash: str | None = None, progress: bool = False) -> StageData:
    """The stage's data, read while holding its build folder's lock (cached per process by content
    hash); :class:`DatasetChanged` when ``expected_hash`` is given and the data differs."""
    if stage(config.stage).data_source == "synthetic":
        return _cached_stage_data(config.stage, None, None)
    with _ready(config, progress) as (directory, content_hash):
        if expected_hash is not None and content_hash != expected_hash:
            raise DatasetChanged(
                f"the datasets in {directory} changed under this sweep (recorded {expected_hash[:12]}, found "
                f"{(content_hash or 'none')[:12]}): their games changed, or another sweep rebuilt the folder; "
                f"give each corpus its own data.dir (the default does) and run the sweep again")
        return _cached_stage_data(config.stage, str(directory), content_hash)


def train_on_datasets(config: TrainConfig, report: Report, checkpoint_dir: str | None,
                      expected_hash: str | None = None, best_by: tuple[str, str] | None = None,
                      on_step: Progress | None = None) -> TrainResult:
    """The real trainer: the config's datasets (built if needed, verified against
    ``expected_hash``, cached per process), then train (``best_by``: the objective)."""
    from maou.trainer.loop import train_stage

    return train_stage(config, load_datasets(config, expected_hash), report=report, checkpoint_dir=checkpoint_dir,
                       best_by=best_by, on_step=on_step)


class _Throttled:
    """``progress(step, total)`` at most every ``interval_s`` seconds (and at the last step)."""

    def __init__(self, progress: Progress, interval_s: float = 0.5) -> None:
        self.progress, self.interval_s, self.last = progress, interval_s, 0.0

    def __call__(self, step: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval_s or step == total:
            self.last = now
            self.progress(step, total)


def run_job(job: Job, report: Report, train: TrainFn | None = None, progress: Progress | None = None) -> TrainResult:
    """Train ``job`` (with ``train``, by default the real trainer on the job's verified datasets);
    each evaluation is reported, then checked by the collapse monitor. ``progress(step, total)``
    hears of the optimizer steps of the real trainer, twice a second."""
    if train is None:
        train = functools.partial(train_on_datasets, expected_hash=job.dataset_hash, best_by=job.objective,
                                  on_step=_Throttled(progress) if progress is not None else None)
    monitor = build_monitor(job.config.stage, job.pruning, job.max_steps)
    history: History = []

    def monitored(step: int, metrics: dict[str, float]) -> Stop | None:
        history.append((step, metrics))
        outer = report(step, metrics)
        return monitor.check(history) or outer

    return train(job.config, monitored, job.checkpoint_dir)


__all__ = ["DatasetChanged", "Job", "TrainFn", "dataset_of", "load_datasets", "provide_dataset", "run_job",
           "train_on_datasets"]
