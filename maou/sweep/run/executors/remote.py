"""Trials in other processes: the worker's side and the driver's bookkeeping, for any executor whose
workers are not the driver (Ray Tune's workers, a local process pool).

The worker (:func:`work`) runs :func:`~maou.sweep.run.job.run_job` and sends messages through
``emit``, a dict each (JSON strings under the keys below, so any transport carries them):

* ``RECORD``: one evaluation ``{"step", "metrics", **placement}``;
* ``PROGRESS``: ``{"step", "total"}``, how far the trainer got between evaluations;
* ``FINAL``: once, at the end: ``{"result": TrainResult.to_plain()}`` or ``{"error": traceback}``
  (a Python error is a result, not a reason to retry), plus the placement.

A transport that can carry the driver's answer back (the local pool) passes ``answer``: after each
evaluation the worker waits for it, and a :class:`~maou.trainer.result.Stop` there ends the run at
that very evaluation, as in process (Ray ends the worker from the outside instead).

The driver keeps one :class:`RemoteTrials` per step: it starts trials (``suggest``: the job a worker
trains, by the executor's own id of the trial), feeds every message to the trial recorder
(``message``: evaluations, progress, the final record; True when the trial must stop: Optuna's
pruner, or any stop the recorder answers, then :meth:`RemoteTrials.stop_of` is that stop),
and records how each ended (``complete``), a worker's death (``error``: a retry starts from
scratch) or an interruption. The recorder stays the only writer of trials.
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from maou.strict import with_overrides
from maou.sweep.attrs import TrialAttr
from maou.sweep.run.job import Job, TrainFn, run_job
from maou.sweep.run.recorder import TrialHandle
from maou.sweep.run.step import StepRun
from maou.trainer.config import TrainConfig
from maou.trainer.result import Stop, TrainResult

JOB = "maou"  # the Job a worker trains
RECORD = "maou_record"  # JSON: {"step", "metrics", "node_id", "cuda_visible_devices"}
FINAL = "maou_final"  # JSON: {"result": TrainResult.to_plain()} or {"error": traceback}, plus placement
PROGRESS = "maou_progress"  # JSON: {"step", "total"}: how far the trainer got between evaluations
DATASET = "maou_dataset"  # the DatasetOffer of a multi-node run (executors/shipping.py), or absent

#: ``emit(message, metrics)``: send one message to the driver (``metrics``: the flat metrics of an
#: evaluation, for transports that log them).
Emit = Callable[[dict[str, Any], "dict[str, float] | None"], None]
#: ``answer()``: the driver's answer to the evaluation just sent: the stop that ends the run, or None.
Answer = Callable[[], "Stop | None"]


def placement() -> dict[str, Any]:
    """Where this worker runs (a worker of another executor may add its node)."""
    return {TrialAttr.CUDA_VISIBLE_DEVICES: os.environ.get("CUDA_VISIBLE_DEVICES")}


def work(job: Job, emit: Emit, train: TrainFn | None = None, placed: dict[str, Any] | None = None,
         offer: Any = None, answer: Answer | None = None) -> None:
    """One trial in a worker: train, sending every evaluation and progress, then one final message;
    ``answer``: waits for the driver's answer to each evaluation (a stop ends the run there)."""
    placed = dict(placed if placed is not None else placement())
    if offer is not None and job.dataset is not None:  # another node's dataset: this node's copy of it
        from maou.data.resolve import local_copy
        from maou.sweep.run.executors.shipping import local_dataset

        placed[TrialAttr.DATASET_DIR] = local_dataset(offer)
        job = replace(job, dataset=local_copy(job.dataset, placed[TrialAttr.DATASET_DIR]))

    def report(step: int, metrics: dict[str, float]) -> Stop | None:
        emit({"step": int(step), RECORD: json.dumps({"step": int(step), "metrics": metrics, **placed})}, metrics)
        # without an answer, the driver stops a trial from the outside: the executor ends this worker
        return answer() if answer is not None else None

    def progress(step: int, total: int) -> None:  # twice a second at most (run_job throttles)
        emit({PROGRESS: json.dumps({"step": int(step), "total": int(total)})}, None)

    try:
        final: dict[str, Any] = {"result": run_job(job, report, train, progress=progress).to_plain()}
    except Exception:  # noqa: BLE001 - the driver records it on the trial (FAIL); no retry
        final = {"error": traceback.format_exc()}
    emit({FINAL: json.dumps({**final, **placed})}, None)


@dataclass
class _InWorker:
    """One trial in flight in a worker: what it trains, and what the driver heard of it so far."""

    handle: TrialHandle
    job: Job
    #: The worker's final message (result or error), once it came.
    final: dict[str, Any] | None = None
    #: The last worker death's error text (the trial fails with it unless a retry ends well).
    error: str | None = None
    #: Where it runs was recorded (once per attempt).
    placed: bool = False
    #: A worker died under it and it runs again from scratch.
    retried: bool = False
    #: The stop the recorder answered (the worker is told, or ended).
    stop: Stop | None = None
    #: Where it trained (``cuda``, ``cpu``), from its placement.
    device: str | None = None


class RemoteTrials:
    """The driver's bookkeeping of one step whose trials run in workers: the executor's trial id ->
    the trial in flight (one record each)."""

    def __init__(self, step: StepRun, kind: str, threads: int | None, on_gpu: bool, offer: Any = None,
                 id_attr: str | None = None) -> None:
        """``threads``: each worker's torch threads (None: the config's own ``threads``)."""
        self.step, self.recorder, self.kind, self.offer = step, step.recorder, kind, offer
        self.threads, self.on_gpu, self.id_attr = threads, on_gpu, id_attr
        self.live: dict[str, _InWorker] = {}  # trial id -> trial in flight
        self.finished = 0
        self.interrupted = 0
        #: ``self.finished`` when ``next_job`` last answered None (ask again only after a trial ends).
        self.exhausted_at: int | None = None

    # -- starting
    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """The next trial's job as a worker's config (``JOB``, ``DATASET``), or None for now."""
        if self.exhausted_at == self.finished:
            return None
        started = self.step.next_job(adjust=self.worker_config)
        if started is None:
            self.exhausted_at = self.finished
            return None
        self.exhausted_at = None
        handle, job = started
        self.live[trial_id] = _InWorker(handle, job)
        self.recorder.annotate(handle, {TrialAttr.EXECUTOR: self.kind,
                                        **({self.id_attr: trial_id} if self.id_attr else {})})
        return {JOB: replace(job, checkpoint_dir=str(Path(job.checkpoint_dir).resolve())), DATASET: self.offer}

    def worker_config(self, config: TrainConfig) -> TrainConfig:
        """The config a worker trains: its own CPU threads, and paths absolute (no chdir games)."""
        from maou.data.build import build_dir

        data = config.data
        changes: dict[str, Any] = {"data.games": [str(Path(p).resolve()) for p in data.games],
                                   "data.dir": str(build_dir(data).resolve())}
        if self.threads is not None:
            changes["threads"] = self.threads
        if config.init_from:
            changes["init_from"] = str(Path(config.init_from).resolve())
        return with_overrides(config, changes, "executor")

    # -- messages
    def message(self, trial_id: str, message: dict[str, Any]) -> bool:
        """One message from a worker; True when the trial must stop (Optuna's pruner, or any stop the
        recorder answers: :meth:`stop_of`). An evaluation of a trial already told to stop is not
        recorded (a worker that ran on before the stop reached it): the trial stopped where the
        stop was answered, as in process."""
        trial = self.live.get(trial_id)
        if trial is None:
            return False
        if PROGRESS in message:
            progress = json.loads(message[PROGRESS])
            self.recorder.progress(trial.handle, progress["step"], progress["total"])
            return False
        if FINAL in message:
            trial.final = json.loads(message[FINAL])
            self._place(trial, trial.final)
            return False
        if RECORD not in message:
            return False
        if trial.stop is not None:
            return True
        record = json.loads(message[RECORD])
        self._place(trial, record)
        with warnings.catch_warnings():
            if trial.retried:  # a retry reports the steps of the dead attempt again
                warnings.filterwarnings("ignore", message=".*is already reported")
            trial.stop = self.recorder.report(trial.handle, record["step"], record["metrics"])
        return trial.stop is not None

    def stop_of(self, trial_id: str) -> Stop | None:
        """The stop the recorder answered for the trial (None: it runs on)."""
        trial = self.live.get(trial_id)
        return trial.stop if trial is not None else None

    def _place(self, trial: _InWorker, record: dict[str, Any]) -> None:
        if trial.placed:
            return
        trial.placed = True
        T = TrialAttr
        gpu = record.get(T.CUDA_VISIBLE_DEVICES)
        placed = {T.NODE_ID: record.get(T.NODE_ID), T.CUDA_VISIBLE_DEVICES: gpu}
        if T.DATASET_DIR in record:  # a node-local copy of the dataset (another node than the driver's)
            placed[T.DATASET_DIR] = record[T.DATASET_DIR]
        self.recorder.annotate(trial.handle, placed)
        trial.device = "cuda" if gpu not in (None, "") and self.on_gpu else "cpu"

    # -- ending
    def complete(self, trial_id: str, error: bool) -> None:
        """The trial's worker is done: record how it ended (``error``: the worker failed for good)."""
        trial = self.live.pop(trial_id, None)
        if trial is None:
            return
        handle, final = trial.handle, trial.final
        self.finished += 1
        if error:
            self.recorder.finish(handle, None, error=trial.error or f"the {self.kind} trial failed")
        elif final is not None and "error" in final:
            self.recorder.finish(handle, None, error=final["error"])
        elif final is not None:
            self.recorder.finish(handle, TrainResult.from_plain(final["result"]))
        elif handle.stop is not None:
            self.recorder.finish(handle, self._stopped_result(trial))
        else:
            self.interrupt(handle)

    def _stopped_result(self, trial: _InWorker) -> TrainResult:
        """A trial Optuna's pruner stopped: its result is what it reported (no checkpoint)."""
        handle, job = trial.handle, trial.job
        history = list(handle.history)
        step, final = history[-1] if history else (0, {})
        metric = self.recorder.objective.metric
        sign = self.recorder.objective.sign
        scored = [(s, m) for s, m in history if s > 0 and _finite(m.get(metric))]  # step 0: untrained
        best_step, best = max(scored, key=lambda sm: sign * sm[1][metric]) if scored else (step, final)
        return TrainResult(stage=job.config.stage, steps_done=step, max_steps=job.max_steps, stop=handle.stop,
                           final_metrics=final, best_metrics=best, best_step=best_step, history=history,
                           wall_time_s=time.time() - handle.started, device=trial.device or "unknown")

    def interrupt(self, handle: TrialHandle) -> None:
        """A trial that ended without an outcome (driver interrupted): FAIL, re-run on resume."""
        self.interrupted += 1
        self.recorder.interrupt(handle)

    def interrupt_all(self) -> None:
        leftovers = list(self.live.values())
        self.live.clear()
        for trial in leftovers:
            self.interrupt(trial.handle)

    def error(self, trial_id: str, text: str, retries: int) -> None:
        """A worker failed; it may be retried from scratch: forget what the dead attempt reported."""
        trial = self.live.get(trial_id)
        if trial is None:
            return
        trial.error, trial.retried = text, True
        trial.handle.history.clear()
        trial.handle.stop = None
        trial.stop, trial.final, trial.placed = None, None, False
        self.recorder.annotate(trial.handle, {TrialAttr.failures(self.kind): retries})


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


__all__ = ["DATASET", "FINAL", "JOB", "PROGRESS", "RECORD", "Answer", "Emit", "RemoteTrials", "placement", "work"]
