"""One trial's training run, as every executor runs it (in process locally, in a worker under Ray).

A :class:`Job` is plain, picklable data: the resolved training config, where its checkpoint goes,
the spec's pruning rules and the run's budget in steps. :func:`run_job` builds the collapse
monitor and trains; every evaluation goes out through ``report`` first (the driver records it and
may answer a stop of Optuna's pruner) and then through the monitor, so a collapse stops a run the
same way locally and under Ray. Nothing here imports Optuna or Ray.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

from maou.layout import Dataset
from maou.sweep.run.pruning import PruningConfig, build_monitor
from maou.sweep.run.stopping import Run
from maou.trainer.config import TrainConfig
from maou.trainer.result import Report, Stop, TrainResult

#: Trains one config on the job's datasets: ``(config, report, checkpoint_dir, dataset) -> TrainResult``;
#: tests pass fakes.
TrainFn = Callable[[TrainConfig, Report, "str | None", "Dataset | None"], TrainResult]
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
    #: The datasets the run resolved (folder, content hash, files): opened and checked against the
    #: content hash on load (None: the config's build folder, unchecked).
    dataset: Dataset | None = None
    #: The step's objective (metric, direction): what "best evaluation" means for this run.
    objective: tuple[str, str] | None = None


def train_on_datasets(config: TrainConfig, report: Report, checkpoint_dir: str | None,
                      dataset: Dataset | None = None, best_by: tuple[str, str] | None = None,
                      on_step: Progress | None = None) -> TrainResult:
    """The real trainer: the run's ``dataset`` (its files' sizes checked, its content hash
    verified, cached per process), then train (``best_by``: the objective)."""
    from maou.data.resolve import load_datasets
    from maou.trainer.loop import train_stage

    return train_stage(config, load_datasets(config, dataset), report=report, checkpoint_dir=checkpoint_dir,
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
        train = functools.partial(train_on_datasets, best_by=job.objective,
                                  on_step=_Throttled(progress) if progress is not None else None)
    collapse = build_monitor(job.config.stage, job.pruning, job.max_steps)  # a Stopper where it trains
    run = Run(job.max_steps)

    def monitored(step: int, metrics: dict[str, float]) -> Stop | None:
        run.history.append((step, metrics))
        outer = report(step, metrics)
        return collapse.observe(run, step, metrics) or outer

    return train(job.config, monitored, job.checkpoint_dir, job.dataset)


__all__ = ["Job", "TrainFn", "run_job", "train_on_datasets"]
