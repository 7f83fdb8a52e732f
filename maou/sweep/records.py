"""The read model of recorded sweeps: what a storage holds about a sweep, typed, read in one place.

The trial recorder (:mod:`maou.sweep.run.recorder`) is the only writer of trials; everything that
reads them (the protocol deciding a step, export, report, status, plan, the dashboard notes and
figures) reads them through this module:

* :class:`TrialRecord`: one trial of a step study: its configuration (``ConfigKey``) and seed,
  state and value, metrics, how it ended (prune or fail reason), whether it was copied from an
  earlier step, its timing and placement. It is strict: a finished trial without its
  configuration key or seed is a :class:`RecordError` (a study that is not a sweep's step, say),
  never a default that would mis-pair the per-seed test.
* :class:`RecordedDecision`: a step's decision as the protocol wrote it (``decision`` attribute).
* :class:`StepRecord`: one step: its study's attributes (fingerprint, carried configuration,
  grid extensions, winner trials), its trials and its decision.
* :class:`SweepRecord`: the spec's steps in order, each read from the storage if it ran.

Reading never creates or migrates a storage (:func:`read_sweep` opens it with ``create=False``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from maou.errors import UserError
from maou.sweep.attrs import StudyAttr, TrialAttr
from maou.sweep.identity import ConfigKey

#: States in which a trial is a result (its configuration and seed need not run again).
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
#: ``fail_reason`` of a trial whose driver was interrupted: not a result, run again on resume.
INTERRUPTED = "interrupted"


class RecordError(UserError):
    """A study holds a trial the sweep did not record (no configuration key or seed)."""

    def __init__(self, study: str, detail: str) -> None:
        #: What is wrong, without the study's name (``trial #3 (COMPLETE) has no config_key``).
        self.study, self.detail = study, detail
        super().__init__(f"study {study!r}: {detail}: not a trial this sweep recorded "
                         f"(is the study another tool's, under a step's name?)")


@dataclass(frozen=True)
class TrialRecord:
    """One recorded trial: one (configuration, seed) of a step."""

    number: int
    #: The storage's id of the trial (what a writer needs to address it again).
    trial_id: int
    study: str
    state: TrialState
    key: ConfigKey
    seed: int
    value: float | None
    #: The training config as the trial ran it (seed, resolved paths and ``init_from`` included).
    config: dict[str, Any] = field(default_factory=dict)
    metric: str | None = None
    direction: str | None = None
    reduce: str = "final"
    final_metrics: dict[str, float | None] = field(default_factory=dict)
    best_metrics: dict[str, float | None] = field(default_factory=dict)
    prune_reason: str | None = None
    prune_detail: str | None = None
    prune_step: int | None = None
    fail_reason: str | None = None
    error: str | None = None
    #: ``<study>#<number>`` of the finished trial this one was copied from.
    reused_from: str | None = None
    wall_time_s: float | None = None
    steps_done: int | None = None
    max_steps: int | None = None
    best_step: int | None = None
    stop_reason: str | None = None
    device: str | None = None
    checkpoint: str | None = None
    dataset_hash: str | None = None
    package_version: str | None = None
    executor: str | None = None
    step_name: str | None = None
    #: ``step`` and each kept metric's values at every evaluation.
    curves: dict[str, list[Any]] = field(default_factory=dict)
    intermediate_values: dict[int, float] = field(default_factory=dict)
    datetime_start: datetime | None = None
    datetime_complete: datetime | None = None

    @classmethod
    def of(cls, trial: FrozenTrial, study_name: str) -> TrialRecord:
        """The record of ``trial``; :class:`RecordError` when it lacks its configuration key or seed."""
        a, T = trial.user_attrs, TrialAttr
        text, seed = a.get(T.CONFIG_KEY), a.get(T.SEED)
        if not isinstance(text, str) or isinstance(seed, bool) or not isinstance(seed, int):
            missing = " and ".join(n for n, ok in ((T.CONFIG_KEY, isinstance(text, str)),
                                                  (T.SEED, isinstance(seed, int) and not isinstance(seed, bool)))
                                   if not ok)
            raise RecordError(study_name, f"trial #{trial.number} ({trial.state.name}) has no {missing}")
        return cls(
            number=trial.number, trial_id=trial._trial_id, study=study_name, state=trial.state,
            key=ConfigKey.parse(text), seed=seed, value=trial.value, config=dict(a.get(T.CONFIG) or {}),
            metric=a.get(T.METRIC), direction=a.get(T.DIRECTION), reduce=a.get(T.REDUCE, "final"),
            final_metrics=dict(a.get(T.FINAL_METRICS) or {}), best_metrics=dict(a.get(T.BEST_METRICS) or {}),
            prune_reason=a.get(T.PRUNE_REASON), prune_detail=a.get(T.PRUNE_DETAIL),
            prune_step=a.get(T.PRUNE_STEP), fail_reason=a.get(T.FAIL_REASON), error=a.get(T.ERROR),
            reused_from=a.get(T.REUSED_FROM), wall_time_s=a.get(T.WALL_TIME_S),
            steps_done=a.get(T.STEPS_DONE), max_steps=a.get(T.MAX_STEPS), best_step=a.get(T.BEST_STEP),
            stop_reason=a.get(T.STOP_REASON), device=a.get(T.DEVICE), checkpoint=a.get(T.CHECKPOINT),
            dataset_hash=a.get(T.DATASET_HASH), package_version=a.get(T.PACKAGE_VERSION),
            executor=a.get(T.EXECUTOR), step_name=a.get(T.STEP), curves=dict(a.get(T.CURVES) or {}),
            intermediate_values=dict(trial.intermediate_values), datetime_start=trial.datetime_start,
            datetime_complete=trial.datetime_complete)

    @property
    def pair(self) -> tuple[ConfigKey, int]:
        """(configuration, seed): what a trial trains."""
        return self.key, self.seed

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def interrupted(self) -> bool:
        """A FAIL left by an interrupted run: not a result, run again on resume."""
        return self.state == TrialState.FAIL and self.fail_reason == INTERRUPTED

    @property
    def running(self) -> bool:
        return self.state in (TrialState.RUNNING, TrialState.WAITING)

    @property
    def reused(self) -> bool:
        return self.reused_from is not None

    @property
    def outcome(self) -> str:
        """How it ended, in one word or two: ``complete``, ``pruned <reason>``, ``failed <reason>``."""
        if self.state == TrialState.PRUNED:
            return f"pruned {self.prune_reason or 'pruned'}"
        if self.state == TrialState.FAIL:
            return f"failed {self.fail_reason or 'error'}"
        return self.state.name.lower()

    def metrics(self, reduce: str = "final") -> dict[str, float | None]:
        return self.final_metrics if reduce == "final" else self.best_metrics

    def value_under(self, metric: str, reduce: str) -> float | None:
        """This finished trial's value under another step's objective: its own when the objective is
        the same, its final metric when that objective reduces to the final one, else None."""
        if self.metric == metric and self.reduce == reduce:
            return self.value
        value = self.final_metrics.get(metric)
        return float(value) if reduce == "final" and value is not None else None


def deciding_trials(trials: Iterable[TrialRecord]) -> list[TrialRecord]:
    """The trial that counts for each (configuration, seed): its latest finished one (COMPLETE or
    PRUNED), else its latest failure; interrupted and running trials are no outcome. An errored trial
    that a later run of the same pair completed no longer counts."""
    chosen: dict[tuple[ConfigKey, int], TrialRecord] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.running or t.interrupted:
            continue
        current = chosen.get(t.pair)
        if current is None or t.finished or not current.finished:
            chosen[t.pair] = t
    return sorted(chosen.values(), key=lambda t: t.number)


@dataclass(frozen=True)
class LeaderboardEntry:
    key: ConfigKey
    mean: float | None
    std: float | None
    n: int
    pruned: int
    failed: int
    sem: float | None = None
    #: The optimizer step racing stopped it at (None: not raced out).
    raced: int | None = None


@dataclass(frozen=True)
class RecordedDecision:
    """A step's decision as read back from its study's ``decision`` attribute."""

    carried_key: ConfigKey
    winner_key: ConfigKey
    adopted: bool
    margin: float | None
    noise: float | None
    threshold: float | None
    rule: str
    leaderboard: tuple[LeaderboardEntry, ...]
    failed: bool = False
    noise_measured: bool = True
    edge: tuple[str, ...] = ()
    comparisons: tuple[dict[str, Any], ...] = ()
    metric: str | None = None
    direction: str | None = None
    #: The stored attribute as it is (``sweep status --json`` prints it).
    attrs: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> RecordedDecision:
        board = tuple(LeaderboardEntry(ConfigKey.of(e["config"]), e["mean"], e["std"], e["n"], e["pruned"],
                                       e["failed"], e.get("sem"), e.get("raced")) for e in attrs["leaderboard"])
        return cls(ConfigKey.parse(attrs["carried_key"]), ConfigKey.parse(attrs["winner_key"]), attrs["adopted"],
                   attrs["margin"], attrs["noise"], attrs["threshold"], attrs["rule"], board,
                   bool(attrs.get("failed", False)), bool(attrs.get("noise_measured", True)),
                   tuple(attrs.get("edge", ())), tuple(attrs.get("comparisons", ())),
                   attrs.get("metric"), attrs.get("direction"), dict(attrs))

    @property
    def winner(self) -> LeaderboardEntry | None:
        return next((e for e in self.leaderboard if e.key == self.winner_key), None)

    def comparison_of(self, key: ConfigKey) -> dict[str, Any] | None:
        return next((c for c in self.comparisons if ConfigKey.of(c["config"]) == key), None)


@dataclass(frozen=True)
class StepRecord:
    """One step of a sweep as its study records it (``started`` False: no study yet)."""

    index: int
    name: str
    study_name: str
    started: bool = False
    trials: tuple[TrialRecord, ...] = ()
    #: Trials that never got their configuration recorded (asked, then interrupted): no result.
    orphans: int = 0
    decision: RecordedDecision | None = None
    description: str = ""
    carried_in: dict[str, Any] = field(default_factory=dict)
    carried_out: dict[str, Any] | None = None
    fingerprint: dict[str, Any] | None = None
    grid_extensions: dict[str, list[Any]] = field(default_factory=dict)
    winner_trials: tuple[int, ...] = ()

    @property
    def finished_trials(self) -> tuple[TrialRecord, ...]:
        return tuple(t for t in self.trials if t.finished)

    def states(self) -> Counter:
        """Trials by state name."""
        counts = Counter(t.state.name for t in self.trials)
        if self.orphans:
            counts["FAIL"] += self.orphans
        return counts

    def prune_reasons(self) -> Counter:
        return Counter(t.prune_reason or "pruned" for t in self.trials if t.state == TrialState.PRUNED)

    def failure_reasons(self) -> Counter:
        """Pruned and failed trials by reason (``pruned value_collapse``, ``failed error``)."""
        return Counter(t.outcome for t in self.trials if t.state in (TrialState.PRUNED, TrialState.FAIL))

    def trials_of(self, key: ConfigKey) -> tuple[TrialRecord, ...]:
        return tuple(t for t in self.trials if t.key == key)


def read_step(study: Any, index: int, name: str | None = None) -> StepRecord:
    """The record of step ``index`` from its Optuna study (a live one or one loaded to read)."""
    attrs = study.user_attrs
    records, orphans = [], 0
    for t in study.get_trials(deepcopy=False):
        if TrialAttr.CONFIG_KEY not in t.user_attrs and (t.state in (TrialState.RUNNING, TrialState.WAITING)
                                                         or t.user_attrs.get(TrialAttr.FAIL_REASON) == INTERRUPTED):
            orphans += 1  # asked, never configured: a driver stopped in between
            continue
        records.append(TrialRecord.of(t, study.study_name))
    S = StudyAttr
    decision = attrs.get(S.DECISION)
    return StepRecord(
        index=index, name=name or attrs.get(S.STEP) or study.study_name.rsplit("/", 1)[-1],
        study_name=study.study_name, started=True, trials=tuple(records), orphans=orphans,
        decision=RecordedDecision.from_attrs(decision) if decision else None,
        description=attrs.get(S.DESCRIPTION, ""), carried_in=dict(attrs.get(S.CARRIED_IN) or {}),
        carried_out=attrs.get(S.CARRIED_OUT), fingerprint=attrs.get(S.FINGERPRINT),
        grid_extensions={k: list(v) for k, v in (attrs.get(S.GRID_EXTENSIONS) or {}).items()},
        winner_trials=tuple(attrs.get(S.WINNER_TRIALS, ())))


@dataclass(frozen=True)
class SweepRecord:
    """A sweep's steps in the spec's order, each as far as the storage holds it."""

    spec: Any
    #: The storage URL, password masked.
    storage: str
    steps: tuple[StepRecord, ...]

    @property
    def ran(self) -> tuple[StepRecord, ...]:
        """The steps that ran, in order, up to the first that did not (a study of a step the spec no
        longer has, or after a gap, decides nothing)."""
        out = []
        for step in self.steps:
            if not step.started:
                break
            out.append(step)
        return tuple(out)

    def require_ran(self) -> tuple[StepRecord, ...]:
        """The steps that ran (:attr:`ran`); one line (UserError) when not one did, as on a storage that
        holds none of the sweep's steps (a lock study alone): nothing to export or report."""
        if not self.ran:
            raise UserError(f"sweep {self.spec.name!r} has no step in {self.storage} yet; run `sweep run` first")
        return self.ran

    @property
    def done(self) -> bool:
        """Every step decided, none failed."""
        return bool(self.steps) and all(s.decision is not None and not s.decision.failed for s in self.steps)

    @property
    def final(self) -> StepRecord | None:
        """The last step when the sweep finished (its decision names the sweep's winner)."""
        return self.steps[-1] if self.done else None

    @property
    def final_winner(self) -> ConfigKey | None:
        final = self.final
        return final.decision.winner_key if final is not None and final.decision is not None else None

    def trials(self) -> list[TrialRecord]:
        return [t for s in self.ran for t in s.trials]

    def winner_trial(self, objective: Any) -> TrialRecord | None:
        """The finished sweep's best-valued trial of its winning configuration that kept a checkpoint."""
        final = self.final
        if final is None or final.decision is None:
            return None
        candidates = [t for t in final.trials_of(final.decision.winner_key)
                      if t.value is not None and math.isfinite(t.value) and t.checkpoint]
        if not candidates:
            return None
        return max(candidates, key=lambda t: objective.sign * (t.value or 0.0))


def read_sweep(spec: Any, storage: Any = None, storage_url: str | None = None) -> SweepRecord:
    """The record of ``spec``'s sweep in ``storage`` (or opened from ``storage_url``, else the spec's
    URL, never created: a missing storage is a one-line error)."""
    import optuna

    from maou.sweep.storage import mask_url, open_storage, step_study_names

    url = storage_url or spec.storage_url
    if storage is None:
        storage = open_storage(url, create=False)
    present = set(step_study_names(storage, spec.name))
    steps = []
    for index, step in enumerate(spec.steps):
        name = spec.study_name(index)
        if name in present:
            steps.append(read_step(optuna.load_study(study_name=name, storage=storage), index, step.name))
        else:
            steps.append(StepRecord(index, step.name, name, description=step.description))
    return SweepRecord(spec, mask_url(url), tuple(steps))


__all__ = ["FINISHED", "INTERRUPTED", "LeaderboardEntry", "RecordError", "RecordedDecision", "StepRecord",
           "SweepRecord", "TrialRecord", "deciding_trials", "read_step", "read_sweep"]
