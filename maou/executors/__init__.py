"""Executors run a step's trials: in this process (``local``, the default) or on Ray Tune.

An executor has one method, ``run(trials)``: it pulls jobs with ``trials.next_job()`` until it
returns ``None``, runs each job's training, forwards every evaluation to ``trials.report`` (which
answers with a stop reason or ``None``) and hands the outcome to ``trials.finish``.
"""

from __future__ import annotations


def make_executor(config):
    """The executor for a spec's ``executor`` section (Ray imported only when asked for)."""
    if config.kind == "ray":
        from maou.executors.ray import RayExecutor

        return RayExecutor(config)
    from maou.executors.local import LocalExecutor

    return LocalExecutor()
