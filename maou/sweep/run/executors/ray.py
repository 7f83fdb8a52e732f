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

The trainable (:func:`_trainable`) calls :func:`maou.sweep.run.job.run_job` with a reporter that
forwards each evaluation with ``ray.tune.report`` and ends with one record holding the result (or
the traceback of an exception: a Python error is a result, not a reason to retry; only a worker
process that dies is retried). Ray is imported only here, and only when this executor runs.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import sys
import time
import traceback
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from maou.errors import UserError
from maou.strict import with_overrides
from maou.sweep.run.job import Job, TrainFn, run_job
from maou.sweep.run.recorder import TrialHandle
from maou.sweep.run.step import StepRun
from maou.sweep.spec import Executor
from maou.trainer.config import TrainConfig
from maou.trainer.result import TrainResult

#: Ray's switch for multi-node clusters; off, a local Ray binds 127.0.0.1 only.
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: Keys of the records a worker reports (next to the flat metrics, which Tune's own logs show).
_RECORD = "maou_record"  # JSON: {"step", "metrics", "node_id", "cuda_visible_devices"}
_FINAL = "maou_final"  # JSON: {"result": TrainResult.to_plain()} or {"error": traceback}, plus placement
_PROGRESS = "maou_progress"  # JSON: {"step", "total"}: how far the trainer got between evaluations
_DATASET = "maou_dataset"  # the DatasetOffer of a multi-node run (executors/shipping.py), or absent


# ----------------------------------------------------------------------------- Ray session
def init_ray(config: Executor):
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


def _local(config: Executor) -> bool:
    """A private Ray of this process (no cluster address given)."""
    return config.address is None and not os.environ.get("RAY_ADDRESS")


class _NoTuneResumeHint(logging.Filter):
    """Tune suggests ``Tuner.restore`` after Ctrl-C; a sweep resumes with ``sweep run`` instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage()


def _placement() -> dict[str, Any]:
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def _trainable(config: dict[str, Any], train: TrainFn | None = None) -> None:
    """One trial in a Ray worker: train, reporting every evaluation, then one final record."""
    from ray import tune
    from ray.tune.result import AUTO_RESULT_KEYS, DONE

    job: Job = config["maou"]
    placement = _placement()
    reserved = {*AUTO_RESULT_KEYS, DONE, "trial_id", "step"}
    if config.get(_DATASET) is not None:  # another node's dataset: this node's copy of it
        from maou.sweep.run.executors.shipping import local_dataset
        from maou.sweep.run.job import provide_dataset

        placement["dataset_dir"] = local_dataset(config[_DATASET])
        provide_dataset(job.config.data, placement["dataset_dir"])

    def report(step: int, metrics: dict[str, float]) -> None:
        record = {"step": int(step), "metrics": metrics, **placement}
        flat = {k: v for k, v in metrics.items() if k not in reserved}  # for Tune's own logs
        tune.report({**flat, "step": int(step), _RECORD: json.dumps(record)})
        return None  # Optuna's pruner stops a trial from the driver's scheduler: Tune ends this worker

    def progress(step: int, total: int) -> None:  # twice a second at most (run_job throttles)
        tune.report({_PROGRESS: json.dumps({"step": int(step), "total": int(total)})})

    try:
        final: dict[str, Any] = {"result": run_job(job, report, train, progress=progress).to_plain()}
    except Exception:  # noqa: BLE001 - the driver records it on the trial (FAIL); no retry
        final = {"error": traceback.format_exc()}
    tune.report({_FINAL: json.dumps({**final, **placement})})


# ----------------------------------------------------------------------------- driver side
class _StepState:
    """The driver's bookkeeping of one step: Ray trial id -> the live trial and its records."""

    def __init__(self, step: StepRun, executor: Executor, offer: Any = None) -> None:
        self.step, self.recorder, self.executor, self.offer = step, step.recorder, executor, offer
        self.live: dict[str, tuple[TrialHandle, Job]] = {}  # ray trial id -> trial in flight
        self.final: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, str] = {}
        self.placed: set[str] = set()
        self.retried: set[str] = set()
        self.device: dict[str, str] = {}
        self.finished = 0
        self.interrupted = 0
        #: ``self.finished`` when ``next_job`` last answered None (ask again only after a trial ends).
        self.exhausted_at: int | None = None

    # -- searcher side
    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.exhausted_at == self.finished:
            return None
        started = self.step.next_job(adjust=self._worker_config)
        if started is None:
            self.exhausted_at = self.finished
            return None
        self.exhausted_at = None
        handle, job = started
        self.live[trial_id] = started
        self.recorder.annotate(handle, {"executor": "ray", "ray_trial_id": trial_id})
        return {"maou": replace(job, checkpoint_dir=str(Path(job.checkpoint_dir).resolve())), _DATASET: self.offer}

    def _worker_config(self, config: TrainConfig) -> TrainConfig:
        """The config a worker trains: its own CPU threads, and paths absolute (no chdir games)."""
        from maou.data.build import build_dir

        data = config.data
        changes: dict[str, Any] = {"threads": max(1, int(self.executor.cpus_per_trial)),
                                   "data.games": [str(Path(p).resolve()) for p in data.games],
                                   "data.dir": str(build_dir(data).resolve())}
        if config.init_from:
            changes["init_from"] = str(Path(config.init_from).resolve())
        return with_overrides(config, changes, "executor")

    def complete(self, trial_id: str, error: bool) -> None:
        started = self.live.pop(trial_id, None)
        if started is None:
            return
        handle, job = started
        self.finished += 1
        final = self.final.pop(trial_id, None)
        if error:
            self.recorder.finish(handle, None, error=self.errors.pop(trial_id, "the Ray trial failed"))
        elif final is not None and "error" in final:
            self.recorder.finish(handle, None, error=final["error"])
        elif final is not None:
            self.recorder.finish(handle, TrainResult.from_plain(final["result"]))
        elif handle.stop is not None:
            self.recorder.finish(handle, self._stopped_result(trial_id, handle, job))
        else:
            self.interrupt(handle)

    def _stopped_result(self, trial_id: str, handle: TrialHandle, job: Job) -> TrainResult:
        """A trial Optuna's pruner stopped: its result is what it reported (no checkpoint)."""
        history = list(handle.history)
        step, final = history[-1] if history else (0, {})
        metric = self.recorder.objective.metric
        sign = 1.0 if self.recorder.objective.direction == "maximize" else -1.0
        scored = [(s, m) for s, m in history if s > 0 and _finite(m.get(metric))]  # step 0: untrained
        best_step, best = max(scored, key=lambda sm: sign * sm[1][metric]) if scored else (step, final)
        return TrainResult(stage=job.config.stage, steps_done=step, max_steps=job.max_steps, stop=handle.stop,
                           final_metrics=final, best_metrics=best, best_step=best_step, history=history,
                           wall_time_s=time.time() - handle.started, device=self.device.get(trial_id, "unknown"))

    def interrupt(self, handle: TrialHandle) -> None:
        """A trial that ended without an outcome (driver interrupted): FAIL, re-run on resume."""
        self.interrupted += 1
        self.recorder.interrupt(handle)

    # -- scheduler side
    def result(self, trial_id: str, result: dict[str, Any]) -> bool:
        """One reported record; True when the trial must stop."""
        started = self.live.get(trial_id)
        if started is None:
            return False
        handle = started[0]
        if _PROGRESS in result:
            progress = json.loads(result[_PROGRESS])
            self.recorder.progress(handle, progress["step"], progress["total"])
            return False
        if _FINAL in result:
            final = json.loads(result[_FINAL])
            self._place(trial_id, handle, final)
            self.final[trial_id] = final
            return False
        if _RECORD not in result:
            return False
        record = json.loads(result[_RECORD])
        self._place(trial_id, handle, record)
        with warnings.catch_warnings():
            if trial_id in self.retried:  # a retry reports the steps of the dead attempt again
                warnings.filterwarnings("ignore", message=".*is already reported")
            stop = self.recorder.report(handle, record["step"], record["metrics"])
        return stop is not None

    def _place(self, trial_id: str, handle: TrialHandle, record: dict[str, Any]) -> None:
        if trial_id in self.placed:
            return
        self.placed.add(trial_id)
        gpu = record.get("cuda_visible_devices")
        placed = {"node_id": record.get("node_id"), "cuda_visible_devices": gpu}
        if "dataset_dir" in record:  # a node-local copy of the dataset (another node than the driver's)
            placed["dataset_dir"] = record["dataset_dir"]
        self.recorder.annotate(handle, placed)
        self.device[trial_id] = "cuda" if gpu not in (None, "") and self.executor.gpus_per_trial > 0 else "cpu"

    def error(self, trial_id: str, text: str, retries: int) -> None:
        """A worker failed; Ray may retry it from scratch: forget what the dead attempt reported."""
        started = self.live.get(trial_id)
        if started is None:
            return
        handle = started[0]
        self.errors[trial_id] = text
        handle.history.clear()
        handle.stop = None
        self.final.pop(trial_id, None)
        self.placed.discard(trial_id)
        self.retried.add(trial_id)
        self.recorder.annotate(handle, {"ray_failures": retries})


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@functools.lru_cache(maxsize=1)
def _tune_classes():
    """The Searcher and TrialScheduler subclasses (built on first use: Ray is imported lazily).

    Tune pickles both into its experiment folder; they hold no closure over the step and pickle
    as empty objects (the state lives in the Optuna storage)."""
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler
    from ray.tune.search import Searcher

    class JobSearcher(Searcher):
        """Trials come from the step's Optuna study, never from Tune's own sampling."""

        def __init__(self, state: _StepState) -> None:
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

        def __init__(self, state: _StepState) -> None:
            super().__init__()
            self.state = state

        def on_trial_result(self, tune_controller, trial, result) -> str:
            stop = self.state.result(trial.trial_id, result)
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
    job = trial.config.get("maou")
    return f"trial-{getattr(job, 'number', 'x')}-{trial.trial_id}"


class RayExecutor:
    """Run each step as one Ray Tune experiment; trials inside a step run side by side."""

    def __init__(self, config: Executor, train: TrainFn | None = None) -> None:
        self.config = config
        #: The training function; tests pass a fake trainer with the same signature.
        self.train = train

    def run(self, step: StepRun) -> None:
        ray = init_ray(self.config)
        from ray import tune

        from maou.sweep.run.executors.shipping import offer_for

        offer, server = offer_for(step.context.base, cluster=not _local(self.config))
        state = _StepState(step, self.config, offer)
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
            leftovers = list(state.live.values())
            state.live.clear()
            for handle, _ in leftovers:
                state.interrupt(handle)
        if state.interrupted:  # Tune ends a run early only when interrupted (Ctrl-C): stop the sweep
            raise KeyboardInterrupt(f"Ray Tune stopped with {state.interrupted} trials unfinished")


__all__ = ["RayExecutor", "init_ray"]
