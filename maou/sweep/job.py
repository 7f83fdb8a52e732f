"""One trial's training run, as every executor runs it (in process locally, in a worker under Ray).

A :class:`Job` is plain, picklable data: the resolved training config, where its checkpoint goes,
the spec's pruning rules and the run's budget in steps. :func:`run_job` builds the collapse
monitor and trains; every evaluation goes out through ``report`` first (the driver records it and
may answer a stop of Optuna's pruner) and then through the monitor, so a collapse stops a run the
same way locally and under Ray. Nothing here imports Optuna or Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from maou.sweep.pruning import PruningConfig, build_monitor
from maou.trainer.config import DataConfig, TrainConfig
from maou.trainer.result import History, Report, Stop, TrainResult

#: Trains one config: ``(config, report, checkpoint_dir) -> TrainResult``; tests pass fakes.
TrainFn = Callable[[TrainConfig, Report, "str | None"], TrainResult]


@dataclass(frozen=True)
class Job:
    number: int
    config: TrainConfig
    checkpoint_dir: str
    pruning: PruningConfig
    #: The run's budget in optimizer steps (grace periods are shares of it).
    max_steps: int


#: Dataset folders handed to this process for a data config (a node-local copy of the driver's
#: datasets, :mod:`maou.sweep.executors.shipping`): used as they are, never rebuilt here.
_PROVIDED: dict[DataConfig, str] = {}


def provide_dataset(data: DataConfig, directory: str) -> None:
    """Train every config whose ``data`` is ``data`` on the built datasets in ``directory``."""
    _PROVIDED[data] = directory


@lru_cache(maxsize=4)
def _stage_data(stage: int, dataset_dir: str | None, dataset_hash: str | None):
    from maou.trainer.tensors import load_stage_data

    return load_stage_data(stage, dataset_dir)


def dataset_of(config: TrainConfig, progress: bool = False) -> tuple[str | None, str | None]:
    """Build the stage's datasets if needed and return their folder and content hash
    (``(None, None)`` for a stage whose rows are synthetic)."""
    from maou.stages import stage

    if stage(config.stage).data_source == "synthetic":
        return None, None
    from maou.data.build import ensure_datasets
    from maou.trainer.tensors import dataset_content_hash

    if config.data in _PROVIDED:
        return _PROVIDED[config.data], dataset_content_hash(_PROVIDED[config.data])
    directory = ensure_datasets(config.data, progress=progress)
    return str(directory), dataset_content_hash(directory)


def train_on_datasets(config: TrainConfig, report: Report, checkpoint_dir: str | None) -> TrainResult:
    """The real trainer: the config's datasets (built if needed, cached per process), then train."""
    from maou.trainer.loop import train_stage

    dataset_dir, dataset_hash = dataset_of(config)
    return train_stage(config, _stage_data(config.stage, dataset_dir, dataset_hash), report=report,
                       checkpoint_dir=checkpoint_dir)


def run_job(job: Job, report: Report, train: TrainFn = train_on_datasets) -> TrainResult:
    """Train ``job``; each evaluation is reported, then checked by the collapse monitor."""
    monitor = build_monitor(job.config.stage, job.pruning, job.max_steps)
    history: History = []

    def monitored(step: int, metrics: dict[str, float]) -> Stop | None:
        history.append((step, metrics))
        outer = report(step, metrics)
        return monitor.check(history) or outer

    return train(job.config, monitored, job.checkpoint_dir)


__all__ = ["Job", "TrainFn", "dataset_of", "provide_dataset", "run_job", "train_on_datasets"]
