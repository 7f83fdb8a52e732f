"""A step's decision: its configurations' results over seeds, and whether a challenger replaces
the carried configuration.

The carried configuration competes in every step; a challenger replaces it only when its mean
over seeds beats the carried mean by more than the seed noise (``selection.noise_sigmas``
standard errors of the difference of means, and at least ``selection.min_margin``). Pruned or
failed configurations never win.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from maou.sweep.identity import ConfigKey
from maou.sweep.recorder import is_interrupted
from maou.sweep.spec import Selection


@dataclass
class ConfigStats:
    """One configuration's results over its seeds."""

    key: ConfigKey
    values: list[float] = field(default_factory=list)
    pruned: int = 0
    failed: int = 0
    prune_reasons: list[str] = field(default_factory=list)

    @property
    def overrides(self) -> dict[str, Any]:
        return self.key.overrides

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def eligible(self) -> bool:
        """Only configurations whose every seed completed can win."""
        return self.n > 0 and self.pruned == 0 and self.failed == 0


@dataclass
class StepDecision:
    carried_key: ConfigKey
    winner_key: ConfigKey
    adopted: bool
    margin: float
    noise: float
    threshold: float
    rule: str
    stats: list[ConfigStats]
    #: Not one trial of the step completed: nothing to carry on (the sweep stops).
    failed: bool = False

    @property
    def winner(self) -> ConfigStats:
        return next(s for s in self.stats if s.key == self.winner_key)

    def as_attrs(self) -> dict[str, Any]:
        """The decision as the study's ``decision`` user attribute (strict JSON)."""
        def num(x: float) -> float | None:
            return None if x is None or not math.isfinite(x) else round(x, 6)

        return {"carried_key": self.carried_key.text, "winner_key": self.winner_key.text, "adopted": self.adopted,
                "margin": num(self.margin), "noise": num(self.noise), "threshold": num(self.threshold),
                "rule": self.rule, "failed": self.failed,
                "winner_overrides": self.winner_key.overrides,
                "leaderboard": [{"config": s.overrides, "mean": num(s.mean), "std": num(s.std), "n": s.n,
                                 "pruned": s.pruned, "failed": s.failed} for s in self.stats]}


@dataclass(frozen=True)
class LeaderboardEntry:
    key: ConfigKey
    mean: float | None
    std: float | None
    n: int
    pruned: int
    failed: int


@dataclass(frozen=True)
class RecordedDecision:
    """A decision as read back from a study's ``decision`` attribute (status, export, views)."""

    carried_key: ConfigKey
    winner_key: ConfigKey
    adopted: bool
    margin: float | None
    noise: float | None
    threshold: float | None
    rule: str
    leaderboard: tuple[LeaderboardEntry, ...]
    failed: bool = False

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> RecordedDecision:
        board = tuple(LeaderboardEntry(ConfigKey.of(e["config"]), e["mean"], e["std"], e["n"], e["pruned"],
                                       e["failed"]) for e in attrs["leaderboard"])
        return cls(ConfigKey.parse(attrs["carried_key"]), ConfigKey.parse(attrs["winner_key"]), attrs["adopted"],
                   attrs["margin"], attrs["noise"], attrs["threshold"], attrs["rule"], board,
                   bool(attrs.get("failed", False)))

    @classmethod
    def of_study(cls, study: Any) -> RecordedDecision | None:
        attrs = study.user_attrs.get("decision")
        return cls.from_attrs(attrs) if attrs else None

    @property
    def winner(self) -> LeaderboardEntry | None:
        return next((e for e in self.leaderboard if e.key == self.winner_key), None)


def collect_stats(trials: Iterable[FrozenTrial]) -> dict[ConfigKey, ConfigStats]:
    """Group a step's ended trials by configuration (interrupted ones are not results)."""
    stats: dict[ConfigKey, ConfigStats] = {}
    for t in trials:
        text = t.user_attrs.get("config_key")
        if text is None or t.state in (TrialState.RUNNING, TrialState.WAITING) or is_interrupted(t):
            continue
        key = ConfigKey.parse(text)
        s = stats.setdefault(key, ConfigStats(key))
        if t.state == TrialState.COMPLETE:
            assert t.value is not None
            s.values.append(float(t.value))
        elif t.state == TrialState.PRUNED:
            s.pruned += 1
            s.prune_reasons.append(t.user_attrs.get("prune_reason", "pruned"))
        else:
            s.failed += 1
    return stats


def decide(stats: dict[ConfigKey, ConfigStats], carried_key: ConfigKey, direction: str,
           selection: Selection) -> StepDecision:
    """Pick the step's winner: the best eligible mean, adopted only when it beats the noise."""
    sign = 1.0 if direction == "maximize" else -1.0
    ordered = sorted(stats.values(), key=lambda s: (not s.eligible, -sign * s.mean if s.eligible else 0.0))
    carried = stats.get(carried_key)
    best = ordered[0] if ordered and ordered[0].eligible else None
    rule = (f"adopt when mean gain > max({selection.noise_sigmas:g} x SE of the difference of means, "
            f"{selection.min_margin:g}); pruned or failed configurations never win")
    if not any(s.n for s in ordered):  # not one trial of the step completed: nothing to decide on
        return StepDecision(carried_key, carried_key, False, math.nan, math.nan, math.nan,
                            rule + "; no trial of the step completed", ordered, failed=True)
    if best is None or best.key == carried_key:
        return StepDecision(carried_key, carried_key, False, 0.0, 0.0, 0.0, rule, ordered)
    if carried is None or not carried.eligible:
        return StepDecision(carried_key, best.key, True, math.inf, 0.0, 0.0,
                            rule + "; the carried configuration did not complete, so the best one is adopted",
                            ordered)
    margin = sign * (best.mean - carried.mean)
    noise = math.sqrt(best.std ** 2 / best.n + carried.std ** 2 / carried.n)
    threshold = max(selection.noise_sigmas * noise, selection.min_margin)
    adopted = margin > threshold
    return StepDecision(carried_key, best.key if adopted else carried_key, adopted,
                        margin, noise, threshold, rule, ordered)


__all__ = ["ConfigStats", "LeaderboardEntry", "RecordedDecision", "StepDecision", "collect_stats", "decide"]
