"""Run a step's trials on Ray Tune: in parallel, on every GPU and node of a Ray cluster.

The Optuna storage stays the single source of truth and this process (the driver) writes it,
through the step's trial recorder only; workers never see Optuna. One ``Tuner.fit()`` runs one step:

* :class:`JobSearcher` (a Tune ``Searcher``): ``suggest`` calls ``step.next_job()``, which
  starts the Optuna trial (RUNNING) and answers the :class:`~maou.sweep.run.job.Job` the worker
  trains. No job left: ``FINISHED``.
* :class:`JobScheduler` (a FIFO ``TrialScheduler``): every result a worker reports goes through
  ``recorder.report`` (intermediate value, Optuna's pruner); a stop there answers ``STOP`` and
  Tune ends the worker. Collapse rules run inside the worker's job, as locally: a collapsed run
  ends by itself and reports its result. ``on_trial_error`` keeps the error text and resets the
  trial's history when Ray retries a dead worker from scratch (``FailureConfig``).
* the searcher's ``on_trial_complete`` (called once per trial, however it ended) hands the
  outcome to ``recorder.finish``: the worker's :class:`~maou.trainer.result.TrainResult`, or one
  rebuilt from the reported history for a trial Optuna's pruner stopped, or the error (FAIL).

The trainable (:func:`_trainable`) speaks the worker protocol of
:mod:`~maou.sweep.run.executors.remote` (each message a ``ray.tune.report``), and the searcher and
scheduler hand every message to the step's :class:`~maou.sweep.run.executors.remote.RemoteTrials`
(only a worker process that dies is retried). Ray is imported only here, and only when this
executor runs.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from maou.errors import UserError
from maou.sweep.attrs import TrialAttr
from maou.sweep.run.executors.remote import DATASET, JOB, RemoteTrials, placement, work
from maou.sweep.run.job import TrainFn
from maou.sweep.run.step import StepRun
from maou.sweep.spec import ExecutorSection

#: Ray's switch for multi-node clusters; off, a local Ray binds 127.0.0.1 only.
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


# ----------------------------------------------------------------------------- Ray session
def init_ray(config: ExecutorSection):
    """Connect to (``address``) or start a local Ray, once per process; returns the ``ray`` module."""
    if config.address and config.address.startswith("ray://"):
        raise UserError("executor.address: Ray Client (ray://) runs Tune's loop on the cluster, away from this "
                        "driver's Optuna storage; run `sweep run` on a cluster node with address: auto "
                        "(or HEAD:6379) instead")
    local = _local(config)
    if local:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # A local Ray of one node listens on the loopback interface only: Ray picks 127.0.0.1 as
        # the node address, and binds its servers to it, when "clusters" are off
        os.environ.setdefault(_LOOPBACK_ENV, "0")
        constants = sys.modules.get("ray._private.ray_constants")
        if constants is not None and os.environ[_LOOPBACK_ENV] == "0":  # Ray imported before: same switch
            constants.__dict__["ENABLE_RAY_CLUSTER"] = False
    # Keep the driver's working directory in trainables (Tune would chdir into the trial folder).
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    # Tune's newer console output prints an experiment banner even at verbose=0; the sweep has its own view.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray

    tune_logger = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _NoTuneResumeHint) for f in tune_logger.filters):
        tune_logger.addFilter(_NoTuneResumeHint())
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                  "log_to_driver": False, "configure_logging": True}
        if local:
            # A Ray of this sweep's own, even when `ray start` left a cluster on this machine.
            kwargs["address"] = "local"
            kwargs["num_cpus"] = max(os.cpu_count() or 1, math.ceil(config.cpus_per_trial))
        else:
            kwargs["address"] = config.address  # "auto", HOST:6379, or None with RAY_ADDRESS set
        ray.init(**kwargs)
    resources = ray.cluster_resources()
    for name, need in (("CPU", config.cpus_per_trial), ("GPU", config.gpus_per_trial)):
        have = resources.get(name, 0.0)
        if need > have:
            message = (f"executor.{name.lower()}s_per_trial is {need:g} but the Ray cluster has {have:g} "
                       f"{name}s{' (a local Ray on this machine)' if local else ''}")
            if local:
                raise UserError(message)
            logging.getLogger(__name__).warning("%s; trials wait until the cluster grows", message)
    return ray


def _local(config: ExecutorSection) -> bool:
    """A private Ray of this process (no cluster address given)."""
    return config.address is None and not os.environ.get("RAY_ADDRESS")


class _NoTuneResumeHint(logging.Filter):
    """Tune suggests ``Tuner.restore`` after Ctrl-C; a sweep resumes with ``sweep run`` instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage()


def _placement() -> dict[str, Any]:
    import ray

    return {TrialAttr.NODE_ID: ray.get_runtime_context().get_node_id(), **placement()}


def _trainable(config: dict[str, Any], train: TrainFn | None = None) -> None:
    """One trial in a Ray worker: the worker protocol of :mod:`~maou.sweep.run.executors.remote`,
    each message a Tune result (with the flat metrics, for Tune's own logs)."""
    from ray import tune
    from ray.tune.result import AUTO_RESULT_KEYS, DONE

    reserved = {*AUTO_RESULT_KEYS, DONE, "trial_id", "step"}

    def emit(message: dict[str, Any], metrics: dict[str, float] | None = None) -> None:
        flat = {k: v for k, v in (metrics or {}).items() if k not in reserved}
        tune.report({**flat, **message})

    work(config[JOB], emit, train, _placement(), config.get(DATASET))


@functools.lru_cache(maxsize=1)
def _tune_classes():
    """The Searcher and TrialScheduler subclasses (built on first use: Ray is imported lazily).

    Tune pickles both into its experiment folder; they hold no closure over the step and pickle
    as empty objects (the state lives in the Optuna storage)."""
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler
    from ray.tune.search import Searcher

    class JobSearcher(Searcher):
        """Trials come from the step's Optuna study, never from Tune's own sampling."""

        def __init__(self, state: RemoteTrials) -> None:
            super().__init__(metric=None, mode=None)
            self.state = state

        def set_search_properties(self, metric, mode, config, **spec) -> bool:
            return True

        def suggest(self, trial_id: str):
            suggestion = self.state.suggest(trial_id)
            if suggestion is None and self.state.exhausted_at is not None and not self.state.live:
                return Searcher.FINISHED
            return suggestion

        def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
            self.state.complete(trial_id, error)

        def save_to_dir(self, *args, **kwargs) -> None:
            pass

        def __getstate__(self) -> dict:
            return {}

    class JobScheduler(FIFOScheduler):
        """Every result goes through the step's collapse detectors and Optuna pruner."""

        def __init__(self, state: RemoteTrials) -> None:
            super().__init__()
            self.state = state

        def on_trial_result(self, tune_controller, trial, result) -> str:
            stop = self.state.message(trial.trial_id, result)
            return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE

        def on_trial_error(self, tune_controller, trial) -> None:
            self.state.error(trial.trial_id, _error_text(trial), trial.num_failures)

        def __getstate__(self) -> dict:
            return {}

    return JobSearcher, JobScheduler


def _error_text(trial) -> str:
    path = trial.error_file
    if path and os.path.isfile(path):
        text = Path(path).read_text(errors="replace")
        return text[-4000:]
    return f"Ray trial {trial.trial_id} failed ({trial.num_failures} failures)"


def _dirname(trial) -> str:
    job = trial.config.get(JOB)
    return f"trial-{getattr(job, 'number', 'x')}-{trial.trial_id}"


class RayExecutor:
    """Run each step as one Ray Tune experiment; trials inside a step run side by side."""

    def __init__(self, config: ExecutorSection, train: TrainFn | None = None) -> None:
        self.config = config
        #: The training function; tests pass a fake trainer with the same signature.
        self.train = train

    @classmethod
    def from_section(cls, config: ExecutorSection) -> RayExecutor:
        return cls(config)

    def run(self, step: StepRun) -> None:
        ray = init_ray(self.config)
        from ray import tune

        from maou.sweep.run.executors.shipping import offer_for

        offer, server = offer_for(step.context.dataset, cluster=not _local(self.config))
        state = RemoteTrials(step, "ray", threads=max(1, int(self.config.cpus_per_trial)),
                             on_gpu=self.config.gpus_per_trial > 0, offer=offer, id_attr=TrialAttr.trial_id("ray"))
        searcher_class, scheduler_class = _tune_classes()
        resources = {"cpu": self.config.cpus_per_trial, "gpu": self.config.gpus_per_trial}
        trainable = tune.with_resources(tune.with_parameters(_trainable, train=self.train), resources)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{step.index + 1:02d}-{step.step.name}")
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher_class(state), scheduler=scheduler_class(state), num_samples=-1,
                max_concurrent_trials=self.config.max_concurrent, reuse_actors=True,
                trial_name_creator=_dirname, trial_dirname_creator=_dirname),
            run_config=tune.RunConfig(
                name=name, storage_path=str((step.context.spec.runs_path / "ray").resolve()),
                failure_config=tune.FailureConfig(max_failures=self.config.max_retries),
                verbose=0, log_to_file=True))
        try:
            tuner.fit()
        finally:
            if server is not None:
                ray.kill(server)
            state.interrupt_all()
        if state.interrupted:  # Tune ends a run early only when interrupted (Ctrl-C): stop the sweep
            raise KeyboardInterrupt(f"Ray Tune stopped with {state.interrupted} trials unfinished")


__all__ = ["RayExecutor", "init_ray"]
