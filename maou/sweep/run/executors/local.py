"""Run a step's trials one after another in this process (``max_concurrent`` above one: at once in
worker processes, :mod:`~maou.sweep.run.executors.pool`)."""

from __future__ import annotations

import traceback
from typing import Any

from maou.sweep.attrs import TrialAttr
from maou.sweep.run.job import TrainFn, run_job
from maou.sweep.run.recorder import TrialHandle
from maou.sweep.run.step import StepRun
from maou.trainer.result import Stop


class LocalExecutor:
    def __init__(self, train: TrainFn | None = None) -> None:
        #: The training function; tests pass a fake trainer with the same signature.
        self.train = train

    @classmethod
    def from_section(cls, config: Any) -> LocalExecutor:
        """Trials one after another in this process (``max_concurrent`` above one is the pool's:
        :func:`maou.sweep.run.executors.make_executor` picks it)."""
        return cls()

    def run(self, step: StepRun) -> None:
        recorder = step.recorder
        while (started := step.next_job()) is not None:
            handle, job = started
            recorder.annotate(handle, {TrialAttr.EXECUTOR: "local"})

            def report(step: int, metrics: dict[str, float], handle: TrialHandle = handle) -> Stop | None:
                return recorder.report(handle, step, metrics)

            def progress(step: int, total: int, handle: TrialHandle = handle) -> None:
                recorder.progress(handle, step, total)

            try:
                result = run_job(job, report, self.train, progress=progress)
            except KeyboardInterrupt:
                recorder.interrupt(handle)
                raise
            except Exception:  # noqa: BLE001 - a trial's error is recorded on the trial; the sweep goes on
                recorder.finish(handle, None, error=traceback.format_exc())
                continue
            recorder.finish(handle, result)
