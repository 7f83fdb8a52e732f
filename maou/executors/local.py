"""Run trials one after another in this process."""

from __future__ import annotations

import traceback
from typing import Callable

from maou.job import JobResult, run_job

RunJob = Callable[..., JobResult]


class LocalExecutor:
    def __init__(self, run: RunJob = run_job) -> None:
        #: The training function; tests pass a fake trainer with the same signature.
        self.run_job = run

    def run(self, trials) -> None:
        while (job := trials.next_job()) is not None:
            try:
                result = self.run_job(job.config, lambda step, metrics, job=job: trials.report(job, step, metrics),
                                      job.checkpoint_dir)
            except KeyboardInterrupt:
                job.trial.set_user_attr("fail_reason", "interrupted")
                trials.study.tell(job.trial, state=_fail())
                raise
            except Exception:  # noqa: BLE001 - a trial's error is recorded on the trial; the sweep goes on
                trials.finish(job, None, error=traceback.format_exc())
                continue
            trials.finish(job, result)


def _fail():
    from optuna.trial import TrialState

    return TrialState.FAIL
