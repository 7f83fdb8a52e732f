"""The trial recorder: the only writer of trials to the Optuna storage.

Every trial of a step goes through one :class:`TrialRecorder`: :meth:`~TrialRecorder.start` (a
RUNNING trial with its configuration), :meth:`~TrialRecorder.report` (an evaluation: intermediate
value, then what the step's :class:`~maou.sweep.run.stopping.Stopper` answers),
:meth:`~TrialRecorder.finish` (COMPLETE, PRUNED with the stop that ended it, or FAIL with the error),
:meth:`~TrialRecorder.interrupt` (FAIL ``interrupted``: run again on resume),
:meth:`~TrialRecorder.copy` (a finished trial of an earlier step reused) and
:meth:`~TrialRecorder.fail_stale` (trials a dead driver left RUNNING). Executors call it and
nothing else calls ``study.tell``.

A trial is one (configuration, seed). Its Optuna params are the step's searched keys and the seed;
its user attributes carry the rest of its story (resolved config, metrics, stop reason, ...).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from maou.sweep.attrs import StudyAttr, TrialAttr
from maou.sweep.identity import ConfigKey
from maou.sweep.records import FINISHED, INTERRUPTED, TrialRecord
from maou.sweep.run import faults
from maou.sweep.run.planner import Training
from maou.sweep.run.stopping import Stopper
from maou.sweep.spec import Objective
from maou.trainer.result import History, Stop, TrainResult

#: Metrics whose whole curve is kept on each trial (``curves`` user attribute), beside the
#: objective's intermediate values: what a person checks when a run looks wrong.
CURVE_METRICS = ("train_loss", "val_loss", "val_f1", "val_pred_pos_rate", "val_policy_top1",
                 "val_policy_entropy", "val_value_skill", "val_value_std", "val_value_accuracy", "val_accuracy")


#: ``fail_reason`` of a trial by what its error says (the counts a stopped step prints).
FAIL_CAUSES = (("disk full", ("disk full:", "No space left on device")),
               ("cuda out of memory", ("CUDA out of memory", "OutOfMemoryError")),
               ("dataset unreadable", ("dataset file", "Not an Arrow file")))


def fail_cause(error: str) -> str:
    """A failed trial's cause in a few words, from its error text (``error`` when none is known)."""
    for cause, signs in FAIL_CAUSES:
        if any(sign in error for sign in signs):
            return cause
    return "error"


def _finite_or_none(value: float | None) -> float | None:
    return round(value, 6) if value is not None and math.isfinite(value) else None


def curves(history: History, *also: str) -> dict[str, list[Any]]:
    """The evaluation history as columns: ``step`` and each of :data:`CURVE_METRICS` (and ``also``)
    present."""
    out: dict[str, list[Any]] = {"step": [step for step, _ in history]}
    for name in dict.fromkeys((*CURVE_METRICS, *also)):
        if any(name in metrics for _, metrics in history):
            out[name] = [_finite_or_none(metrics.get(name)) for _, metrics in history]
    return out


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """Ask ``trial`` for parameter ``name`` from distribution ``dist`` through the public API."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)  # type: ignore[attr-defined]


class Observer:
    """What a sweep's onlookers are told (the live view, the dashboard notes); every method is a no-op
    here, so an observer overrides what it needs. The protocol tells steps, the recorder trials."""

    def step_started(self, spec: Any, index: int, study: optuna.Study, run: Any) -> None:
        pass

    def step_finished(self, spec: Any, index: int, study: optuna.Study, decision: Any) -> None:
        pass

    def trial_started(self, handle: TrialHandle) -> None:
        pass

    def trial_reported(self, handle: TrialHandle, step: int, metrics: dict[str, float]) -> None:
        pass

    def trial_progress(self, handle: TrialHandle, step: int, total: int, samples_per_s: float | None) -> None:
        pass

    def trial_finished(self, handle: TrialHandle, state: TrialState, reason: str,
                       value: float | None = None) -> None:
        pass

    def trial_recorded(self, study: optuna.Study, record: TrialRecord, winner: bool) -> None:
        """A trial's outcome is final in the storage (finished, copied), or its winner mark changed."""


class Observers(Observer):
    """Several observers told in turn, each event by its own method."""

    def __init__(self, *observers: Observer | None) -> None:
        self.observers = [o for o in observers if o is not None]

    def _tell(self, event: str, *args: Any) -> None:
        for o in self.observers:
            method = getattr(o, event, None)  # a view may listen to only some events
            if method is not None:
                method(*args)

    def step_started(self, spec: Any, index: int, study: optuna.Study, run: Any) -> None:
        self._tell("step_started", spec, index, study, run)

    def step_finished(self, spec: Any, index: int, study: optuna.Study, decision: Any) -> None:
        self._tell("step_finished", spec, index, study, decision)

    def trial_started(self, handle: TrialHandle) -> None:
        self._tell("trial_started", handle)

    def trial_reported(self, handle: TrialHandle, step: int, metrics: dict[str, float]) -> None:
        self._tell("trial_reported", handle, step, metrics)

    def trial_progress(self, handle: TrialHandle, step: int, total: int, samples_per_s: float | None) -> None:
        self._tell("trial_progress", handle, step, total, samples_per_s)

    def trial_finished(self, handle: TrialHandle, state: TrialState, reason: str,
                       value: float | None = None) -> None:
        self._tell("trial_finished", handle, state, reason, value)

    def trial_recorded(self, study: optuna.Study, record: TrialRecord, winner: bool) -> None:
        self._tell("trial_recorded", study, record, winner)


@dataclass
class TrialHandle:
    """A trial in flight: its Optuna trial, what it trains, what it reported so far."""

    trial: optuna.Trial
    training: Training
    started: float = field(default_factory=time.time)
    history: History = field(default_factory=list)
    #: The stop the step's stopper answered (the job's own stops come back in its result).
    stop: Stop | None = None
    #: (time, optimizer step) of the last progress heard
    last_progress: tuple[float, int] | None = None
    #: The run's budget in optimizer steps (racing compares runs at the same share of it).
    max_steps: int = 0

    @property
    def number(self) -> int:
        return self.trial.number

    # what a stopper sees of it (maou.sweep.run.stopping.Running)
    @property
    def key(self) -> ConfigKey:
        return self.training.key

    @property
    def seed(self) -> int:
        return self.training.seed

    @property
    def optuna_trial(self) -> optuna.Trial:
        return self.trial


class TrialRecorder:
    """Writes the trials of one step study."""

    def __init__(self, study: optuna.Study, objective: Objective, observer: Observer | None = None,
                 stopper: Stopper | None = None) -> None:
        self.study, self.objective = study, objective
        self.observer: Observer = observer if observer is not None else Observer()
        #: What decides, after each evaluation, whether a trial stops (set when the step opens:
        #: :func:`maou.sweep.run.step.open_step`); it hears how every trial ended.
        self.stopper: Stopper = stopper if stopper is not None else Stopper()

    # ------------------------------------------------------------------ starting
    def fail_stale(self) -> int:
        """Trials left RUNNING or WAITING by a driver that died: FAIL ``interrupted``."""
        stale = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
        for frozen in stale:
            trial = self.study.ask() if frozen.state == TrialState.WAITING else optuna.trial.Trial(
                self.study, frozen._trial_id)
            trial.set_user_attr(TrialAttr.FAIL_REASON, INTERRUPTED)
            self.study.tell(trial.number, state=TrialState.FAIL)
        return len(stale)

    def propose(self, distributions: dict[str, BaseDistribution]) -> tuple[optuna.Trial, dict[str, Any]]:
        """A new trial whose searched keys the study's sampler proposes."""
        faults.point("ask")
        trial = self.study.ask()
        return trial, {key: suggest(trial, key, dist) for key, dist in distributions.items()}

    def start(self, training: Training, params: dict[str, Any], distributions: dict[str, BaseDistribution],
              attrs: dict[str, Any], trial: optuna.Trial | None = None) -> TrialHandle:
        """The trial of ``training`` RUNNING in the study with its ``params`` (the searched values its
        step's distributions hold), or ``trial`` when :meth:`propose` made it."""
        if trial is None:
            faults.point("enqueue")
            self.study.enqueue_trial(params, skip_if_exists=False)
            faults.point("ask")
            trial = self.study.ask()
            for key in params:
                suggest(trial, key, distributions[key])
        for name, value in attrs.items():
            trial.set_user_attr(name, value)
        handle = TrialHandle(trial, training)
        self.observer.trial_started(handle)
        return handle

    def copy(self, source: TrialRecord, value: float | None, params: dict[str, Any],
             distributions: dict[str, BaseDistribution], step_name: str) -> None:
        """A finished trial of an earlier step, added to this study as it is (``reused_from``),
        with ``value`` its value under this step's objective."""
        faults.point("copy")
        o, T = self.objective, TrialAttr
        frozen = self.study._storage.get_trial(source.trial_id)
        self.study.add_trial(optuna.trial.create_trial(
            state=source.state, value=value if source.state == TrialState.COMPLETE else None,
            params=params, distributions={k: distributions[k] for k in params},
            user_attrs={**frozen.user_attrs, T.STEP: step_name, T.STUDY: self.study.study_name,
                        T.METRIC: o.metric, T.DIRECTION: o.direction, T.REDUCE: o.reduce,
                        T.REUSED_FROM: f"{source.study}#{source.number}"},
            intermediate_values=dict(source.intermediate_values)))
        copied = self.study.get_trials(deepcopy=False)[-1]  # add_trial appends
        self._recorded(copied)

    # ------------------------------------------------------------------ running
    def report(self, handle: TrialHandle, step: int, metrics: dict[str, float]) -> Stop | None:
        """Record one evaluation; a :class:`Stop` when the step's stopper ends the trial.

        Step 0 is the untrained model: it stays out of Optuna's intermediate values (pruners
        compare a trial's best value so far, and initialisation noise is no evidence); the
        collapse rules and the trial's ``curves`` see it."""
        handle.history.append((step, metrics))
        value = metrics.get(self.objective.metric)
        if step > 0 and value is not None and math.isfinite(value):
            handle.trial.report(value, step)
        self.observer.trial_reported(handle, step, metrics)
        stop = self.stopper.observe(handle, step, metrics)
        if stop is not None:
            handle.stop = stop
        return stop

    def skip(self, stop: Stop, attrs: dict[str, Any], params: dict[str, Any],
             distributions: dict[str, BaseDistribution]) -> None:
        """A training that need not run (``stop``: why, e.g. its configuration was raced out):
        recorded PRUNED as it is, so the pair counts as decided, without training."""
        faults.point("skip")
        attrs = {**attrs, **TrialAttr.of_stop(stop), TrialAttr.STEPS_DONE: 0, TrialAttr.CURVES: {"step": []}}
        self.study.add_trial(optuna.trial.create_trial(
            state=TrialState.PRUNED, params=params, distributions={k: distributions[k] for k in params},
            user_attrs=attrs))
        self._recorded(self.study.get_trials(deepcopy=False)[-1])

    def progress(self, handle: TrialHandle, step: int, total: int) -> None:
        """How far a running trial got (no storage write: only the view hears of it)."""
        now = time.time()
        speed = None
        if handle.last_progress is not None and now > handle.last_progress[0] and step > handle.last_progress[1]:
            then, before = handle.last_progress
            speed = (step - before) * handle.training.config.batch_size / (now - then)
        handle.last_progress = (now, step)
        self.observer.trial_progress(handle, step, total, speed)

    def annotate(self, handle: TrialHandle, attrs: dict[str, Any]) -> None:
        """Facts an executor learns about a running trial (where it ran, how often it was retried)."""
        for name, value in attrs.items():
            handle.trial.set_user_attr(name, value)

    # ------------------------------------------------------------------ ending
    def finish(self, handle: TrialHandle, result: TrainResult | None, error: str | None = None) -> TrialState:
        """Tell Optuna how the trial ended, with its metrics and stop reason on the trial."""
        trial, T = handle.trial, TrialAttr
        trial.set_user_attr(T.WALL_TIME_S, round(time.time() - handle.started, 3))
        trial.set_user_attr(T.CURVES, curves(handle.history, self.objective.metric))
        if result is not None:
            self._record_result(trial, result)
        value: float | None = None
        reason = ""
        if error is not None:
            cause = fail_cause(error)
            reason = f"{cause}: " + (error.strip().splitlines() or [""])[-1]
            trial.set_user_attr(T.FAIL_REASON, cause)
            trial.set_user_attr(T.ERROR, error[-4000:])
            state = TrialState.FAIL
        elif result is not None and result.stop is not None:
            reason = result.stop.reason
            for name, value in T.of_stop(result.stop).items():
                trial.set_user_attr(name, value)
            state = TrialState.PRUNED
        else:
            assert result is not None
            metrics = result.final_metrics if self.objective.reduce == "final" else result.best_metrics
            value = metrics.get(self.objective.metric)
            state = TrialState.COMPLETE
            if value is None or not math.isfinite(value):
                reason = f"objective metric {self.objective.metric} missing or not finite"
                trial.set_user_attr(T.FAIL_REASON, reason)
                state = TrialState.FAIL
        self.stopper.finished(handle, result.stop if state == TrialState.PRUNED and result is not None else None)
        faults.point("tell")
        if state == TrialState.COMPLETE:
            self.study.tell(trial, value)
        else:
            self.study.tell(trial, state=state)
        self._recorded(self.study._storage.get_trial(trial._trial_id))
        self.observer.trial_finished(handle, state, reason, value)
        return state

    def _recorded(self, frozen: FrozenTrial, winner: bool = False) -> None:
        self.observer.trial_recorded(self.study, TrialRecord.of(frozen, self.study.study_name), winner)

    def mark_winner(self, winner: ConfigKey) -> list[int]:
        """Mark the trials of the step's winning configuration: the study's ``winner_trials``; the
        observers hear of every trial whose mark changed (Optuna allows no attribute of a finished
        trial to change, so the dashboard shows the mark in the trial's note)."""
        finished = self.study.get_trials(deepcopy=False, states=FINISHED)
        winners = [t.number for t in finished if TrialRecord.of(t, self.study.study_name).key == winner]
        previous = set(self.study.user_attrs.get(StudyAttr.WINNER_TRIALS, []))
        self.study.set_user_attr(StudyAttr.WINNER_TRIALS, winners)
        for t in finished:
            if (t.number in winners) != (t.number in previous):
                self._recorded(t, t.number in winners)
        return winners

    @staticmethod
    def _record_result(trial: optuna.Trial, result: TrainResult) -> None:
        # non-finite values become null: the storage and the dashboard expect strict JSON
        T = TrialAttr
        trial.set_user_attr(T.FINAL_METRICS, {k: _finite_or_none(v) for k, v in result.final_metrics.items()})
        trial.set_user_attr(T.BEST_METRICS, {k: _finite_or_none(v) for k, v in result.best_metrics.items()})
        for name in T.RESULT_FIELDS:
            trial.set_user_attr(name, getattr(result, name))
        if result.dataset_hash:
            trial.set_user_attr(T.DATASET_HASH, result.dataset_hash)

    def interrupt(self, handle: TrialHandle) -> None:
        """A trial that ended without an outcome (the driver was interrupted): run again on resume."""
        handle.trial.set_user_attr(TrialAttr.FAIL_REASON, INTERRUPTED)
        self.study.tell(handle.trial, state=TrialState.FAIL)
        self.observer.trial_finished(handle, TrialState.FAIL, INTERRUPTED)


__all__ = ["CURVE_METRICS", "FAIL_CAUSES", "Observer", "Observers", "TrialHandle", "TrialRecorder", "curves",
           "fail_cause", "suggest"]
