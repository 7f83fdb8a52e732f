"""Collapse detectors: each one rule, and each dataclass its own configuration.

The trainer evaluates every ``eval_every`` steps and builds a *history*: a list of
``(step, metrics)`` pairs (metric names are a contract, see :mod:`maou.stages`). A detector looks
at that history and answers a :class:`~maou.trainer.result.Stop` or ``None``. ``patience`` (how
many consecutive evaluations a condition must hold) comes from the rule that arms the detector
(:mod:`maou.sweep.run.pruning.rules`), as does the grace period.

Window detectors (value, legal moves, uniform policy) fire only when their condition has held on
``patience`` consecutive evaluations *and* the window shows no meaningful progress, so a healthy
but slow trial is never pruned by a collapse rule. Missing metrics are tolerated: a detector
whose metrics are absent does nothing. This module imports neither torch nor Optuna.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from maou.shogi.shapes import MOVE_LABELS_NUM
from maou.strict import require
from maou.trainer.result import Stop

History = Sequence[tuple[int, Mapping[str, float]]]


def _num(metrics: Mapping[str, Any], key: str) -> float | None:
    """``metrics[key]`` as a finite float, or ``None`` when missing, non-numeric or not finite."""
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _window(history: History, keys: Sequence[str], size: int) -> list[tuple[int, dict[str, float]]] | None:
    """The last ``size`` evaluations with every key in ``keys``; ``None`` unless all have them."""
    if len(history) < size:
        return None
    out = []
    for step, metrics in list(history)[-size:]:
        values = {k: _num(metrics, k) for k in keys}
        if any(v is None for v in values.values()):
            return None
        out.append((int(step), {k: float(v) for k, v in values.items() if v is not None}))
    return out


def _gain(values: Sequence[float]) -> float:
    """How far the best later value rose above the first one (0 for a single value)."""
    return max(values[1:]) - values[0] if len(values) > 1 else 0.0


def _drop(values: Sequence[float]) -> float:
    """How far the lowest later value fell below the first one (0 for a single value)."""
    return values[0] - min(values[1:]) if len(values) > 1 else 0.0


def _steps(window: Sequence[tuple[int, Any]]) -> str:
    first, last = window[0][0], window[-1][0]
    return f"step {last}" if first == last else f"steps {first}-{last}"


class Detector(abc.ABC):
    """One collapse rule: ``check(history, patience)`` answers a :class:`Stop` or ``None``."""

    #: The ``prune_reason`` this detector records.
    reason: ClassVar[str]
    #: Patience when the rule sets none: ``None`` inherits ``pruning.patience``.
    default_patience: ClassVar[int | None] = None
    #: Fires at once, whatever the grace period and patience (non-finite numbers).
    immediate: ClassVar[bool] = False
    #: Sees the evaluations from before the grace period too (divergence: the best loss so far).
    whole_history: ClassVar[bool] = False

    @property
    @abc.abstractmethod
    def requires(self) -> tuple[str, ...]:
        """Metrics this detector reads; a stage that does not report them cannot use it."""

    @abc.abstractmethod
    def check(self, history: History, patience: int) -> Stop | None:
        raise NotImplementedError


@dataclass(frozen=True)
class NonFiniteDetector(Detector):
    """Any NaN or inf among the latest evaluation's numbers (losses or metrics), at once."""

    reason: ClassVar[str] = "non_finite"
    immediate: ClassVar[bool] = True
    #: Metric names not checked (for a metric that is legitimately undefined on some data).
    ignore: tuple[str, ...] = ()

    @property
    def requires(self) -> tuple[str, ...]:
        return ()

    def check(self, history: History, patience: int) -> Stop | None:
        if not history:
            return None
        step, metrics = history[-1]
        bad = [f"{k}={v}" for k, v in metrics.items()
               if k not in self.ignore and isinstance(v, (int, float)) and not isinstance(v, bool)
               and not math.isfinite(v)]
        if not bad:
            return None
        return Stop(self.reason, f"non-finite metrics at step {step}: {', '.join(sorted(bad))}", int(step))


@dataclass(frozen=True)
class DivergenceDetector(Detector):
    """``metric`` above ``factor`` x its best so far (and by at least ``min_increase``) on
    ``patience`` consecutive evaluations."""

    reason: ClassVar[str] = "divergence"
    default_patience: ClassVar[int | None] = 1
    whole_history: ClassVar[bool] = True
    metric: Literal["val_loss", "train_loss"] = "val_loss"
    factor: float = 3.0
    min_increase: float = 0.05

    def __post_init__(self) -> None:
        require(self, "factor", self.factor > 1.0, "must be > 1")
        require(self, "min_increase", self.min_increase >= 0.0, "must be >= 0")

    @property
    def requires(self) -> tuple[str, ...]:
        return (self.metric,)

    def check(self, history: History, patience: int) -> Stop | None:
        values = [(int(s), _num(m, self.metric)) for s, m in history]
        known = [(s, v) for s, v in values if v is not None]
        if len(known) <= patience or known[-1][0] != int(history[-1][0]):
            return None
        best = min(v for _, v in known[:-patience])
        window = known[-patience:]
        limit = max(self.factor * best, best + self.min_increase)
        if all(v > limit for _, v in window):
            return Stop(self.reason, f"{self.metric} {window[-1][1]:.4g} > {self.factor:g} x best {best:.4g} "
                        f"at {_steps(window)}", window[-1][0])
        return None


@dataclass(frozen=True)
class ValueCollapseDetector(Detector):
    """Stage 3 value head stuck at a constant (the label mean), the investigation report's failure.

    Over the last ``patience`` evaluations W (all of them carrying ``val_value_skill``) it fires when

    1. no skill: ``val_value_skill <= max_skill`` on every evaluation of W;
    2. constant output: ``val_value_std < std_ratio * val_value_label_std`` on every evaluation
       of W, or ``val_value_accuracy`` identical (within ``accuracy_tolerance``) across W
       (needs two or more evaluations);
    3. no progress: skill rose by less than ``min_skill_gain`` and the spread ratio
       (std / label std) by less than ``min_std_ratio_gain`` over W (best later value minus the
       first), and the spread did not grow steadily (rising at every evaluation of W and by at
       least ``min_std_growth`` of its first value: a slow start, common while the backbone is
       still near its initialisation, is not a collapse). Skills below ``skill_floor`` count as
       the floor when measuring progress: a saturated head whose loss shrinks from 1e5 to 1e2
       times the constant predictor's is still a constant, not learning.
    """

    reason: ClassVar[str] = "value_collapse"
    std_ratio: float = 0.1
    max_skill: float = 0.01
    min_skill_gain: float = 0.005
    min_std_ratio_gain: float = 0.025
    min_std_growth: float = 0.25
    skill_floor: float = -1.0
    accuracy_tolerance: float = 1e-6

    def __post_init__(self) -> None:
        require(self, "std_ratio", 0.0 < self.std_ratio <= 1.0, "must be in (0, 1]")
        require(self, "max_skill", self.max_skill < 1.0, "must be < 1")
        require(self, "min_skill_gain", self.min_skill_gain > 0.0, "must be > 0")
        require(self, "min_std_ratio_gain", self.min_std_ratio_gain > 0.0, "must be > 0")
        require(self, "min_std_growth", self.min_std_growth > 0.0, "must be > 0")
        require(self, "skill_floor", self.skill_floor < self.max_skill, f"must be < max_skill ({self.max_skill!r})")
        require(self, "accuracy_tolerance", self.accuracy_tolerance >= 0.0, "must be >= 0")

    @property
    def requires(self) -> tuple[str, ...]:
        return ("val_value_skill", "val_value_std", "val_value_label_std", "val_value_accuracy", "val_value_mean")

    def check(self, history: History, patience: int) -> Stop | None:
        window = _window(history, ["val_value_skill"], patience)
        if window is None:
            return None
        skills = [m["val_value_skill"] for _, m in window]
        if any(s > self.max_skill for s in skills):
            return None
        evals = [m for _, m in list(history)[-patience:]]
        ratios = [_ratio(m) for m in evals]
        known = [r for r in ratios if r is not None]
        ratios_known = len(known) == len(ratios)
        accs = [a for a in (_num(m, "val_value_accuracy") for m in evals) if a is not None]
        spread_collapsed = ratios_known and all(r < self.std_ratio for r in known)
        acc_frozen = len(accs) == len(evals) >= 2 and max(accs) - min(accs) <= self.accuracy_tolerance
        if not (spread_collapsed or acc_frozen):
            return None
        if _gain([max(k, self.skill_floor) for k in skills]) >= self.min_skill_gain:
            return None
        if ratios_known and (_gain(known) >= self.min_std_ratio_gain or _grows_steadily(known, self.min_std_growth)):
            return None
        parts = [f"skill {skills[-1]:.4f} <= {self.max_skill:g}"]
        if ratios_known:
            std, label_std = _num(evals[-1], "val_value_std"), _num(evals[-1], "val_value_label_std")
            parts.append(f"pred std {std:.4f} vs label std {label_std:.4f} (ratio {known[-1]:.3f}, "
                         f"limit {self.std_ratio:g})")
        if acc_frozen:
            parts.append(f"accuracy {accs[-1]:.4f} unchanged")
        mean = _num(evals[-1], "val_value_mean")
        if mean is not None:
            parts.append(f"mean prediction {mean:.4f}")
        return Stop(self.reason, f"value head constant over {len(window)} evaluations "
                    f"({_steps(window)}): {'; '.join(parts)}; no progress", window[-1][0])


def _grows_steadily(values: Sequence[float], min_growth: float) -> bool:
    """Rising at every step of ``values`` and by at least ``min_growth`` x the first value overall."""
    return (len(values) > 1 and all(b > a for a, b in zip(values, values[1:]))
            and values[-1] - values[0] >= min_growth * values[0])


def _ratio(metrics: Mapping[str, Any]) -> float | None:
    std, label_std = _num(metrics, "val_value_std"), _num(metrics, "val_value_label_std")
    if std is None or label_std is None or label_std <= 1e-12:
        return None
    return std / label_std


@dataclass(frozen=True)
class LegalMovesCollapseDetector(Detector):
    """Stage 2 head predicting (almost) nothing, or doing no better than a trivial predictor.

    An evaluation is *flat* when ``val_pred_pos_rate < min_pred_pos_rate`` or ``val_f1`` is not
    above ``max(all-negative F1, val_f1_all_positive) + f1_margin`` (the all-negative predictor
    scores 1 only when there are no positives at all, else 0). Fires when the last ``patience``
    evaluations are flat and over them F1 rose by less than ``min_f1_gain`` and ``val_loss`` fell
    by less than ``min_loss_drop`` (relative to its first value in the window).
    """

    reason: ClassVar[str] = "legal_moves_collapse"
    min_pred_pos_rate: float = 1e-3
    f1_margin: float = 0.01
    min_f1_gain: float = 0.005
    min_loss_drop: float = 0.01

    def __post_init__(self) -> None:
        require(self, "min_pred_pos_rate", 0.0 <= self.min_pred_pos_rate < 1.0, "must be in [0, 1)")
        require(self, "f1_margin", self.f1_margin >= 0.0, "must be >= 0")
        require(self, "min_f1_gain", self.min_f1_gain > 0.0, "must be > 0")
        require(self, "min_loss_drop", self.min_loss_drop >= 0.0, "must be >= 0")

    @property
    def requires(self) -> tuple[str, ...]:
        return ("val_f1", "val_pred_pos_rate", "val_label_pos_rate", "val_f1_all_positive", "val_loss")

    def check(self, history: History, patience: int) -> Stop | None:
        window = _window(history, ["val_f1"], patience)
        if window is None:
            return None
        evals = [m for _, m in list(history)[-patience:]]
        f1s = [m["val_f1"] for _, m in window]
        for f1, m in zip(f1s, evals):
            rate = _num(m, "val_pred_pos_rate")
            if not ((rate is not None and rate < self.min_pred_pos_rate) or f1 <= _baseline(m) + self.f1_margin):
                return None
        if _gain(f1s) >= self.min_f1_gain:
            return None
        losses = [v for v in (_num(m, "val_loss") for m in evals) if v is not None]
        if len(losses) == len(evals) and losses[0] > 0 and _drop(losses) / losses[0] >= self.min_loss_drop:
            return None
        last = evals[-1]
        rate, label_rate = _num(last, "val_pred_pos_rate"), _num(last, "val_label_pos_rate")
        rates = "" if rate is None else f"predicted-positive rate {rate:.4g}" + (
            "" if label_rate is None else f" vs label rate {label_rate:.4g}") + "; "
        return Stop(self.reason, f"legal-move head trivial over {len(window)} evaluations "
                    f"({_steps(window)}): {rates}F1 {f1s[-1]:.4f} vs trivial baseline "
                    f"{_baseline(last):.4f}; no progress", window[-1][0])


def _baseline(metrics: Mapping[str, Any]) -> float:
    """Best trivial F1: predict-everything, or predict-nothing (1 only when no positives)."""
    label_rate = _num(metrics, "val_label_pos_rate")
    all_negative = 1.0 if label_rate == 0.0 else 0.0
    all_positive = _num(metrics, "val_f1_all_positive")
    return max(all_negative, all_positive if all_positive is not None else 0.0)


@dataclass(frozen=True)
class UniformPolicyDetector(Detector):
    """Stage 3 policy that stays uniform: ``val_policy_entropy`` within ``tolerance`` nats of
    ``log(1496)`` on the last ``patience`` evaluations, while neither the entropy nor
    ``val_policy_ce`` fell by ``min_drop`` nats over them."""

    reason: ClassVar[str] = "uniform_policy"
    num_classes: ClassVar[int] = MOVE_LABELS_NUM
    tolerance: float = 0.05
    min_drop: float = 0.01

    def __post_init__(self) -> None:
        require(self, "tolerance", self.tolerance > 0.0, "must be > 0")
        require(self, "min_drop", self.min_drop > 0.0, "must be > 0")

    @property
    def requires(self) -> tuple[str, ...]:
        return ("val_policy_entropy", "val_policy_ce")

    def check(self, history: History, patience: int) -> Stop | None:
        window = _window(history, ["val_policy_entropy"], patience)
        if window is None:
            return None
        uniform = math.log(self.num_classes)
        entropies = [m["val_policy_entropy"] for _, m in window]
        if any(uniform - e > self.tolerance for e in entropies) or _drop(entropies) >= self.min_drop:
            return None
        ces = [c for c in (_num(m, "val_policy_ce") for _, m in list(history)[-patience:]) if c is not None]
        if len(ces) == patience and _drop(ces) >= self.min_drop:
            return None
        return Stop(self.reason, f"policy entropy {entropies[-1]:.4f} within {self.tolerance:g} nats "
                    f"of uniform log({self.num_classes}) = {uniform:.4f} over {len(window)} "
                    f"evaluations ({_steps(window)}); no progress", window[-1][0])


__all__ = ["Detector", "DivergenceDetector", "History", "LegalMovesCollapseDetector", "NonFiniteDetector",
           "UniformPolicyDetector", "ValueCollapseDetector"]
