"""Executors run a step's trials: in this process (``local``, the default) or on Ray Tune.

An executor has one method, ``run(step)``: it pulls ``(handle, job)`` pairs with
``step.next_job()`` until it answers ``None``, runs each job (:func:`maou.sweep.job.run_job`)
with every evaluation forwarded to ``step.recorder.report``, and hands the outcome to
``step.recorder.finish`` (or ``interrupt``). The recorder is the only writer of trials.
"""

from __future__ import annotations

from typing import Any


def make_executor(config: Any) -> Any:
    """The executor for a spec's ``executor`` section (Ray imported only when asked for)."""
    if config.kind == "ray":
        from maou.sweep.executors.ray import RayExecutor

        return RayExecutor(config)
    from maou.sweep.executors.local import LocalExecutor

    return LocalExecutor()
