"""A step's decision: its configurations' results over seeds, and whether a challenger replaces
the carried configuration.

The carried configuration competes in every step. Each challenger whose every seed completed is
compared with it on paired per-seed differences (:mod:`maou.sweep.run.stats`); the p-values of all
challengers go through Holm's correction, so picking the best of ``k`` is accounted for. A
challenger is adopted when it is significant at its Holm level, its mean gain exceeds
``selection.min_margin`` and no guard metric got worse than its tolerance; among several, the
largest gain wins. With one seed the noise is not measured: only ``min_margin`` and the guards
stand between a gain and its adoption. Pruned or failed configurations never win.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import TrialState

from maou.sweep.identity import ConfigKey
from maou.sweep.records import TrialRecord, deciding_trials
from maou.sweep.run.stats import Paired, alpha_of, critical_gain, holm, paired
from maou.sweep.spec import Guard, Objective, Selection


@dataclass
class ConfigStats:
    """One configuration's results over its seeds."""

    key: ConfigKey
    #: seed -> objective value of its completed trial
    values: dict[int, float] = field(default_factory=dict)
    pruned: int = 0
    failed: int = 0
    prune_reasons: list[str] = field(default_factory=list)
    #: guard metric -> seed -> value
    guard_values: dict[str, dict[int, float]] = field(default_factory=dict)
    #: The optimizer step its racing stop came at (None: not raced).
    raced_at: int | None = None

    @property
    def overrides(self) -> dict[str, Any]:
        return self.key.overrides

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values.values()) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values.values()) if len(self.values) > 1 else 0.0

    @property
    def sem(self) -> float | None:
        """Standard error of the mean (None with one seed)."""
        return self.std / math.sqrt(self.n) if self.n > 1 else None

    @property
    def eligible(self) -> bool:
        """Only configurations whose every seed completed can win."""
        return self.n > 0 and self.pruned == 0 and self.failed == 0

    def guard_mean(self, metric: str) -> float:
        values = [v for v in self.guard_values.get(metric, {}).values() if math.isfinite(v)]
        return statistics.fmean(values) if values else math.nan


@dataclass
class Comparison:
    """A challenger against the carried configuration."""

    key: ConfigKey
    test: Paired
    #: Holm's level for this comparison (None: no p-value, one seed)
    level: float | None = None
    #: the gain it needed: ``max(t_crit(level) * se, min_margin)``
    needed: float | None = None
    significant: bool = False
    guard_failures: list[str] = field(default_factory=list)
    adopted: bool = False

    def as_attrs(self) -> dict[str, Any]:
        t = self.test
        return {"config": self.key.overrides, "n": t.n, "gain": _num(t.gain), "se": _num(t.se), "t": _num(t.t),
                "p": _num(t.p), "holm_level": _num(self.level), "needed": _num(self.needed),
                "significant": self.significant, "guard_failures": self.guard_failures, "adopted": self.adopted}


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, 6)


@dataclass
class StepDecision:
    carried_key: ConfigKey
    winner_key: ConfigKey
    adopted: bool
    rule: str
    stats: list[ConfigStats]
    comparisons: list[Comparison] = field(default_factory=list)
    #: Not one trial of the step completed: nothing to carry on (the sweep stops).
    failed: bool = False
    #: Grid keys whose winning value is the grid's minimum or maximum.
    edge: list[str] = field(default_factory=list)
    #: Values a grid grew by past its edge, per key.
    extended: dict[str, list[Any]] = field(default_factory=dict)
    objective: Objective | None = None
    #: Challengers that started but were stopped (pruned, raced, failed): in Holm's count at p = 1.
    holm_stopped: list[ConfigKey] = field(default_factory=list)
    #: Seeds each configuration got, when adaptive seeds added some, and why.
    seeds_added: dict[str, Any] = field(default_factory=dict)

    @property
    def winner(self) -> ConfigStats:
        return next(s for s in self.stats if s.key == self.winner_key)

    @property
    def best_comparison(self) -> Comparison | None:
        """The comparison of the best-mean challenger (adopted or not)."""
        return max(self.comparisons, key=lambda c: c.test.gain, default=None)

    @property
    def noise_measured(self) -> bool:
        """False only where challengers were compared without a noise estimate (one seed); a step
        with nothing to compare has nothing to measure."""
        return not self.comparisons or any(c.test.se is not None for c in self.comparisons)

    @property
    def margin(self) -> float:
        best = self.best_comparison
        return best.test.gain if best is not None else math.nan

    @property
    def noise(self) -> float | None:
        best = self.best_comparison
        return best.test.se if best is not None else None

    @property
    def threshold(self) -> float | None:
        best = self.best_comparison
        return best.needed if best is not None else None

    def as_attrs(self) -> dict[str, Any]:
        """The decision as the study's ``decision`` user attribute (strict JSON)."""
        objective = self.objective
        return {"carried_key": self.carried_key.text, "winner_key": self.winner_key.text, "adopted": self.adopted,
                "margin": _num(self.margin), "noise": _num(self.noise), "threshold": _num(self.threshold),
                "noise_measured": self.noise_measured, "rule": self.rule, "failed": self.failed,
                "edge": self.edge, "extended": self.extended,
                "metric": objective.metric if objective else None,
                "direction": objective.direction if objective else None,
                "winner_overrides": self.winner_key.overrides,
                "comparisons": [c.as_attrs() for c in self.comparisons],
                "holm_count": len(self.comparisons) + len(self.holm_stopped),
                "holm_stopped_at_p1": [k.overrides for k in self.holm_stopped],
                "seeds_added": self.seeds_added,
                "leaderboard": [{"config": s.overrides, "mean": _num(s.mean), "std": _num(s.std), "sem": _num(s.sem),
                                 "n": s.n, "pruned": s.pruned, "failed": s.failed, "raced": s.raced_at}
                                for s in self.stats]}


def collect_stats(trials: Iterable[TrialRecord], reduce: str = "final",
                  guard_metrics: Iterable[str] = ()) -> dict[ConfigKey, ConfigStats]:
    """Group a step's ended trials by configuration: each (configuration, seed) by the trial that
    counts for it (:func:`~maou.sweep.records.deciding_trials`: interrupted ones are no results, a
    failure a later run completed no longer counts)."""
    guards = tuple(guard_metrics)
    stats: dict[ConfigKey, ConfigStats] = {}
    for t in deciding_trials(trials):
        s = stats.setdefault(t.key, ConfigStats(t.key))
        if t.state == TrialState.COMPLETE:
            assert t.value is not None
            s.values[t.seed] = float(t.value)
            recorded = t.metrics(reduce)
            for metric in guards:
                value = recorded.get(metric)
                s.guard_values.setdefault(metric, {})[t.seed] = math.nan if value is None else float(value)
        elif t.state == TrialState.PRUNED:
            s.pruned += 1
            s.prune_reasons.append(t.prune_reason or "pruned")
            if t.prune_reason == "racing" and t.prune_step:
                s.raced_at = max(s.raced_at or 0, t.prune_step)
        else:
            s.failed += 1
    return stats


def _guard_failures(challenger: ConfigStats, carried: ConfigStats, guards: tuple[Guard, ...]) -> list[str]:
    failures = []
    for g in guards:
        worse_by = g.sign * (carried.guard_mean(g.metric) - challenger.guard_mean(g.metric))
        if not worse_by <= g.tolerance:  # NaN (not reported) fails too
            failures.append(f"{g.metric} worse by {worse_by:.4g} (tolerance {g.tolerance:g})")
    return failures


def describe_rule(selection: Selection, guards: tuple[Guard, ...]) -> str:
    guard_text = "; guards: " + ", ".join(f"{g.metric} may not get worse by more than {g.tolerance:g}"
                                          for g in guards) if guards else ""
    return (f"paired per-seed differences against the carried configuration; one-sided t-test at "
            f"alpha {alpha_of(selection.noise_sigmas):.3g} ({selection.noise_sigmas:g} sigma), Holm-corrected "
            f"over every challenger that started (a stopped one at p = 1); adopt the largest significant gain "
            f"above {selection.min_margin:g}{guard_text}; with one seed the noise is not measured and only the "
            f"margin applies; pruned or failed configurations never win")


def decide(stats: dict[ConfigKey, ConfigStats], carried_key: ConfigKey, objective: Objective,
           selection: Selection, guards: tuple[Guard, ...] = ()) -> StepDecision:
    """Pick the step's winner (see the module docstring)."""
    sign = objective.sign
    ordered = sorted(stats.values(), key=lambda s: (not s.eligible, -sign * s.mean if s.eligible else 0.0, s.key.text))
    rule = describe_rule(selection, guards)
    if not any(s.n for s in ordered):  # not one trial of the step completed: nothing to decide on
        return StepDecision(carried_key, carried_key, False, rule + "; no trial of the step completed", ordered,
                            failed=True, objective=objective)
    carried = stats.get(carried_key)
    challengers = [s for s in ordered if s.eligible and s.key != carried_key]
    if carried is None or not carried.eligible:
        best = challengers[0] if challengers else None
        if best is None:
            return StepDecision(carried_key, carried_key, False, rule, ordered, objective=objective)
        return StepDecision(carried_key, best.key, True, rule + "; the carried configuration did not complete, "
                            "so the best one is adopted", ordered, objective=objective)
    comparisons = [Comparison(c.key, paired(c.values, carried.values, sign)) for c in challengers]
    # every challenger that started counts in Holm's correction: a pruned one (collapsed, raced, failed)
    # enters with p = 1, so stopping challengers never makes the others' adoption easier
    stopped = [s.key for s in ordered if s.key != carried_key and not s.eligible]
    significant, levels = holm([c.test.p for c in comparisons] + [1.0] * len(stopped),
                               alpha_of(selection.noise_sigmas))
    significant, levels = significant[:len(comparisons)], levels[:len(comparisons)]
    for comparison, challenger, passed, level in zip(comparisons, challengers, significant, levels, strict=True):
        comparison.level = level
        measured = comparison.test.se is not None
        comparison.significant = passed if measured else comparison.test.gain > 0
        critical = critical_gain(comparison.test.se, comparison.test.n, level)
        comparison.needed = max(critical if critical is not None else 0.0, selection.min_margin)
        comparison.guard_failures = _guard_failures(challenger, carried, guards)
    adoptable = [c for c in comparisons if c.significant and c.test.gain > selection.min_margin
                 and not c.guard_failures]
    winner = max(adoptable, key=lambda c: c.test.gain, default=None)
    if winner is not None:
        winner.adopted = True
    return StepDecision(carried_key, winner.key if winner else carried_key, winner is not None, rule, ordered,
                        comparisons, objective=objective, holm_stopped=stopped)


__all__ = ["Comparison", "ConfigStats", "StepDecision", "collect_stats", "decide", "describe_rule"]
