"""Collapse detection: prune trials whose training has collapsed, early, with the reason recorded.

The trainer evaluates every ``eval_every`` steps and builds a *history*: a list of
``(step, metrics)`` pairs (metric names are a fixed contract, see DESIGN.md section 6). A detector
looks at that history and answers a :class:`Collapse` or ``None``; detectors compose by wrapping,
like Optuna's pruners (:class:`Grace` delays one, :class:`AnyOf` joins several).

Window detectors (value, legal moves, uniform policy) fire only when their condition has held on
``patience`` consecutive evaluations after the grace period *and* the window shows no meaningful
progress, so a healthy but slow trial is never pruned by a collapse rule. Missing metrics are
tolerated: a detector whose metrics are absent does nothing.

This module must not import torch; Optuna is imported only where a pruner is built.
"""

from __future__ import annotations

import abc
import math
import warnings
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

from maou.shogi.shapes import MOVE_LABELS_NUM
from maou.strict import from_dict, require

if TYPE_CHECKING:
    import optuna

History = Sequence[tuple[int, Mapping[str, float]]]

#: Size of the move label space; a uniform policy has entropy log(1496) = 7.3106 nats.
NUM_MOVE_LABELS = MOVE_LABELS_NUM


@dataclass(frozen=True)
class Collapse:
    """Why a trial should stop: ``reason`` a short code, ``detail`` the numbers, at ``step``."""

    reason: str
    detail: str
    step: int


# --------------------------------------------------------------------------------------------
# helpers


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
        out.append((int(step), values))  # type: ignore[arg-type]
    return out


def _gain(values: Sequence[float]) -> float:
    """How far the best later value rose above the first one (0 for a single value)."""
    return max(values[1:]) - values[0] if len(values) > 1 else 0.0


def _drop(values: Sequence[float]) -> float:
    """How far the lowest later value fell below the first one (0 for a single value)."""
    return values[0] - min(values[1:]) if len(values) > 1 else 0.0


def _check_patience(patience: int) -> None:
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ValueError(f"patience must be an integer >= 1, got {patience!r}")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _steps(window: Sequence[tuple[int, Any]]) -> str:
    first, last = window[0][0], window[-1][0]
    return f"step {last}" if first == last else f"steps {first}-{last}"


# --------------------------------------------------------------------------------------------
# the interface and its combinators


class Detector(abc.ABC):
    """One collapse rule: ``check(history)`` answers a :class:`Collapse` or ``None``."""

    @abc.abstractmethod
    def check(self, history: History) -> Collapse | None:
        raise NotImplementedError


class AnyOf(Detector):
    """The first hit among ``detectors``, in order."""

    def __init__(self, *detectors: Detector) -> None:
        for d in detectors:
            _check(isinstance(d, Detector), f"AnyOf takes detectors, got {d!r}")
        self.detectors: tuple[Detector, ...] = tuple(detectors)

    def check(self, history: History) -> Collapse | None:
        for detector in self.detectors:
            hit = detector.check(history)
            if hit is not None:
                return hit
        return None

    def __repr__(self) -> str:
        return f"AnyOf({', '.join(map(repr, self.detectors))})"


class Grace(Detector):
    """``detector`` may fire only once the latest evaluation is at ``step >= min_step``.

    With ``trim_history`` (default) the wrapped detector sees only the evaluations at or after
    ``min_step``, so its ``patience`` window starts after the grace period. Without it the detector
    sees the whole run (divergence measures against the best loss since step 0).
    """

    def __init__(self, detector: Detector, min_step: int, trim_history: bool = True) -> None:
        _check(isinstance(detector, Detector), f"Grace wraps a detector, got {detector!r}")
        _check(isinstance(min_step, int) and min_step >= 0, f"min_step must be an integer >= 0, got {min_step!r}")
        self.detector = detector
        self.min_step = min_step
        self.trim_history = trim_history

    def check(self, history: History) -> Collapse | None:
        if not history or int(history[-1][0]) < self.min_step:
            return None
        if self.trim_history:
            history = [(s, m) for s, m in history if int(s) >= self.min_step]
        return self.detector.check(history)

    def __repr__(self) -> str:
        return f"Grace({self.detector!r}, min_step={self.min_step}, trim_history={self.trim_history})"


# --------------------------------------------------------------------------------------------
# detectors


@dataclass(frozen=True)
class NonFiniteDetector(Detector):
    """Any NaN or inf among the latest evaluation's numbers (losses or metrics), at once."""

    ignore: tuple[str, ...] = ()

    def check(self, history: History) -> Collapse | None:
        if not history:
            return None
        step, metrics = history[-1]
        bad = [f"{k}={v}" for k, v in metrics.items()
               if k not in self.ignore and isinstance(v, (int, float)) and not isinstance(v, bool)
               and not math.isfinite(v)]
        if not bad:
            return None
        return Collapse("non_finite", f"non-finite metrics at step {step}: {', '.join(sorted(bad))}", int(step))


@dataclass(frozen=True)
class DivergenceDetector(Detector):
    """``metric`` above ``factor`` x its best so far (and by at least ``min_increase``) on
    ``patience`` consecutive evaluations."""

    metric: str = "val_loss"
    factor: float = 3.0
    min_increase: float = 0.05
    patience: int = 1

    def __post_init__(self) -> None:
        _check(self.factor > 1.0, f"factor must be > 1, got {self.factor!r}")
        _check(self.min_increase >= 0.0, f"min_increase must be >= 0, got {self.min_increase!r}")
        _check_patience(self.patience)

    def check(self, history: History) -> Collapse | None:
        values = [(int(s), _num(m, self.metric)) for s, m in history]
        values = [(s, v) for s, v in values if v is not None]
        if len(values) <= self.patience or values[-1][0] != int(history[-1][0]):
            return None
        best = min(v for _, v in values[: -self.patience])
        window = values[-self.patience:]
        limit = max(self.factor * best, best + self.min_increase)
        if all(v > limit for _, v in window):
            last = window[-1][1]
            return Collapse("divergence", f"{self.metric} {last:.4g} > {self.factor:g} x best {best:.4g} "
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

    std_ratio: float = 0.1
    max_skill: float = 0.01
    min_skill_gain: float = 0.005
    min_std_ratio_gain: float = 0.025
    min_std_growth: float = 0.25
    skill_floor: float = -1.0
    accuracy_tolerance: float = 1e-6
    patience: int = 3

    def __post_init__(self) -> None:
        _check(0.0 < self.std_ratio <= 1.0, f"std_ratio must be in (0, 1], got {self.std_ratio!r}")
        _check(self.max_skill < 1.0, f"max_skill must be < 1, got {self.max_skill!r}")
        _check(self.min_skill_gain > 0.0, f"min_skill_gain must be > 0, got {self.min_skill_gain!r}")
        _check(self.min_std_ratio_gain > 0.0, f"min_std_ratio_gain must be > 0, got {self.min_std_ratio_gain!r}")
        _check(self.min_std_growth > 0.0, f"min_std_growth must be > 0, got {self.min_std_growth!r}")
        _check(self.skill_floor < self.max_skill,
               f"skill_floor must be < max_skill ({self.max_skill!r}), got {self.skill_floor!r}")
        _check(self.accuracy_tolerance >= 0.0, f"accuracy_tolerance must be >= 0, got {self.accuracy_tolerance!r}")
        _check_patience(self.patience)

    def check(self, history: History) -> Collapse | None:
        window = _window(history, ["val_value_skill"], self.patience)
        if window is None:
            return None
        skills = [m["val_value_skill"] for _, m in window]
        if any(s > self.max_skill for s in skills):
            return None
        evals = [m for _, m in list(history)[-self.patience:]]
        ratios = [_ratio(m) for m in evals]
        ratios_known = all(r is not None for r in ratios)
        accs = [_num(m, "val_value_accuracy") for m in evals]
        spread_collapsed = ratios_known and all(r < self.std_ratio for r in ratios)  # type: ignore[operator]
        acc_frozen = (len(accs) >= 2 and all(a is not None for a in accs)
                      and max(accs) - min(accs) <= self.accuracy_tolerance)  # type: ignore[type-var, operator]
        if not (spread_collapsed or acc_frozen):
            return None
        if _gain([max(k, self.skill_floor) for k in skills]) >= self.min_skill_gain:
            return None
        if ratios_known and _gain(ratios) >= self.min_std_ratio_gain:  # type: ignore[arg-type]
            return None
        if ratios_known and _grows_steadily(ratios, self.min_std_growth):  # type: ignore[arg-type]
            return None
        parts = [f"skill {skills[-1]:.4f} <= {self.max_skill:g}"]
        if ratios_known:
            std, label_std = _num(evals[-1], "val_value_std"), _num(evals[-1], "val_value_label_std")
            parts.append(f"pred std {std:.4f} vs label std {label_std:.4f} (ratio {ratios[-1]:.3f}, "
                         f"limit {self.std_ratio:g})")
        if acc_frozen:
            parts.append(f"accuracy {accs[-1]:.4f} unchanged")
        mean = _num(evals[-1], "val_value_mean")
        if mean is not None:
            parts.append(f"mean prediction {mean:.4f}")
        return Collapse("value_collapse", f"value head constant over {len(window)} evaluations "
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

    min_pred_pos_rate: float = 1e-3
    f1_margin: float = 0.01
    min_f1_gain: float = 0.005
    min_loss_drop: float = 0.01
    patience: int = 3

    def __post_init__(self) -> None:
        _check(0.0 <= self.min_pred_pos_rate < 1.0,
               f"min_pred_pos_rate must be in [0, 1), got {self.min_pred_pos_rate!r}")
        _check(self.f1_margin >= 0.0, f"f1_margin must be >= 0, got {self.f1_margin!r}")
        _check(self.min_f1_gain > 0.0, f"min_f1_gain must be > 0, got {self.min_f1_gain!r}")
        _check(self.min_loss_drop >= 0.0, f"min_loss_drop must be >= 0, got {self.min_loss_drop!r}")
        _check_patience(self.patience)

    def check(self, history: History) -> Collapse | None:
        window = _window(history, ["val_f1"], self.patience)
        if window is None:
            return None
        evals = [m for _, m in list(history)[-self.patience:]]
        f1s = [m["val_f1"] for _, m in window]
        for f1, m in zip(f1s, evals):
            rate = _num(m, "val_pred_pos_rate")
            if not ((rate is not None and rate < self.min_pred_pos_rate) or f1 <= _baseline(m) + self.f1_margin):
                return None
        if _gain(f1s) >= self.min_f1_gain:
            return None
        losses = [_num(m, "val_loss") for m in evals]
        if all(v is not None for v in losses) and losses[0] > 0 \
                and _drop(losses) / losses[0] >= self.min_loss_drop:  # type: ignore[arg-type, operator]
            return None
        last = evals[-1]
        rate = _num(last, "val_pred_pos_rate")
        label_rate = _num(last, "val_label_pos_rate")
        rates = "" if rate is None else f"predicted-positive rate {rate:.4g}" + (
            "" if label_rate is None else f" vs label rate {label_rate:.4g}") + "; "
        return Collapse("legal_moves_collapse", f"legal-move head trivial over {len(window)} evaluations "
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
    ``log(num_classes)`` on the last ``patience`` evaluations, while neither the entropy nor
    ``val_policy_ce`` fell by ``min_drop`` nats over them."""

    tolerance: float = 0.05
    min_drop: float = 0.01
    num_classes: int = NUM_MOVE_LABELS
    patience: int = 3

    def __post_init__(self) -> None:
        _check(self.tolerance > 0.0, f"tolerance must be > 0, got {self.tolerance!r}")
        _check(self.min_drop > 0.0, f"min_drop must be > 0, got {self.min_drop!r}")
        _check(self.num_classes >= 2, f"num_classes must be >= 2, got {self.num_classes!r}")
        _check_patience(self.patience)

    def check(self, history: History) -> Collapse | None:
        window = _window(history, ["val_policy_entropy"], self.patience)
        if window is None:
            return None
        uniform = math.log(self.num_classes)
        entropies = [m["val_policy_entropy"] for _, m in window]
        if any(uniform - e > self.tolerance for e in entropies):
            return None
        if _drop(entropies) >= self.min_drop:
            return None
        ces = [_num(m, "val_policy_ce") for _, m in list(history)[-self.patience:]]
        if all(c is not None for c in ces) and _drop(ces) >= self.min_drop:  # type: ignore[arg-type]
            return None
        return Collapse("uniform_policy", f"policy entropy {entropies[-1]:.4f} within {self.tolerance:g} nats "
                        f"of uniform log({self.num_classes}) = {uniform:.4f} over {len(window)} "
                        f"evaluations ({_steps(window)}); no progress", window[-1][0])


# --------------------------------------------------------------------------------------------
# configuration (strict, from the sweep spec's ``pruning`` section)


def _check_overrides(patience: int | None, grace_fraction: float | None) -> None:
    require(patience is None or patience >= 1, "patience", "must be >= 1 or null (inherit)")
    require(grace_fraction is None or 0.0 <= grace_fraction < 1.0, "grace_fraction",
            "must be in [0, 1) or null (inherit)")


@dataclass(frozen=True)
class NonFiniteConfig:
    enabled: bool = True
    #: Metric names not checked (for a metric that is legitimately undefined on some data).
    ignore: tuple[str, ...] = ()


@dataclass(frozen=True)
class DivergenceConfig:
    enabled: bool = True
    metric: Literal["val_loss", "train_loss"] = "val_loss"
    factor: float = 3.0
    min_increase: float = 0.05
    #: Consecutive evaluations above the limit; null inherits ``pruning.patience``.
    patience: int | None = 1
    #: Null inherits ``pruning.grace_fraction``.
    grace_fraction: float | None = None

    def __post_init__(self) -> None:
        require(self.factor > 1.0, "factor", "must be > 1")
        require(self.min_increase >= 0.0, "min_increase", "must be >= 0")
        _check_overrides(self.patience, self.grace_fraction)


@dataclass(frozen=True)
class ValueCollapseConfig:
    enabled: bool = True
    std_ratio: float = 0.1
    max_skill: float = 0.01
    min_skill_gain: float = 0.005
    min_std_ratio_gain: float = 0.025
    min_std_growth: float = 0.25
    skill_floor: float = -1.0
    accuracy_tolerance: float = 1e-6
    patience: int | None = None
    grace_fraction: float | None = None

    def __post_init__(self) -> None:
        require(0.0 < self.std_ratio <= 1.0, "std_ratio", "must be in (0, 1]")
        require(self.max_skill < 1.0, "max_skill", "must be < 1")
        require(self.min_skill_gain > 0.0, "min_skill_gain", "must be > 0")
        require(self.min_std_ratio_gain > 0.0, "min_std_ratio_gain", "must be > 0")
        require(self.min_std_growth > 0.0, "min_std_growth", "must be > 0")
        require(self.skill_floor < self.max_skill, "skill_floor", "must be < max_skill")
        require(self.accuracy_tolerance >= 0.0, "accuracy_tolerance", "must be >= 0")
        _check_overrides(self.patience, self.grace_fraction)


@dataclass(frozen=True)
class LegalMovesCollapseConfig:
    enabled: bool = True
    min_pred_pos_rate: float = 1e-3
    f1_margin: float = 0.01
    min_f1_gain: float = 0.005
    min_loss_drop: float = 0.01
    patience: int | None = None
    grace_fraction: float | None = None

    def __post_init__(self) -> None:
        require(0.0 <= self.min_pred_pos_rate < 1.0, "min_pred_pos_rate", "must be in [0, 1)")
        require(self.f1_margin >= 0.0, "f1_margin", "must be >= 0")
        require(self.min_f1_gain > 0.0, "min_f1_gain", "must be > 0")
        require(self.min_loss_drop >= 0.0, "min_loss_drop", "must be >= 0")
        _check_overrides(self.patience, self.grace_fraction)


@dataclass(frozen=True)
class UniformPolicyConfig:
    enabled: bool = True
    tolerance: float = 0.05
    min_drop: float = 0.01
    patience: int | None = None
    grace_fraction: float | None = None

    def __post_init__(self) -> None:
        require(self.tolerance > 0.0, "tolerance", "must be > 0")
        require(self.min_drop > 0.0, "min_drop", "must be > 0")
        _check_overrides(self.patience, self.grace_fraction)


@dataclass(frozen=True)
class OptunaPrunerConfig:
    """Optuna's own pruner, layered on top of the collapse detectors (on the reported metric)."""

    kind: Literal["none", "median", "percentile", "hyperband", "patient"] = "none"
    #: median, percentile, patient (its wrapped MedianPruner).
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1
    #: percentile.
    percentile: float = 25.0
    #: hyperband.
    min_resource: int = 1
    max_resource: int | Literal["auto"] = "auto"
    reduction_factor: int = 3
    #: patient.
    patience: int = 3
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        require(self.n_startup_trials >= 0, "n_startup_trials", "must be >= 0")
        require(self.n_warmup_steps >= 0, "n_warmup_steps", "must be >= 0")
        require(self.interval_steps >= 1, "interval_steps", "must be >= 1")
        require(self.n_min_trials >= 1, "n_min_trials", "must be >= 1")
        require(0.0 <= self.percentile <= 100.0, "percentile", "must be in [0, 100]")
        require(self.min_resource >= 1, "min_resource", "must be >= 1")
        require(self.max_resource == "auto" or self.max_resource >= self.min_resource,  # type: ignore[operator]
                "max_resource", "must be 'auto' or >= min_resource")
        require(self.reduction_factor >= 2, "reduction_factor", "must be >= 2")
        require(self.patience >= 0, "patience", "must be >= 0")
        require(self.min_delta >= 0.0, "min_delta", "must be >= 0")


@dataclass(frozen=True)
class PruningConfig:
    #: Master switch for the collapse detectors (Optuna's pruner is set by ``optuna.kind``).
    enabled: bool = True
    #: Share of the step budget before a non-immediate detector may fire.
    grace_fraction: float = 0.05
    #: Consecutive evaluations a window detector's condition must hold.
    patience: int = 3
    non_finite: NonFiniteConfig = field(default_factory=NonFiniteConfig)
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    value: ValueCollapseConfig = field(default_factory=ValueCollapseConfig)
    legal_moves: LegalMovesCollapseConfig = field(default_factory=LegalMovesCollapseConfig)
    uniform_policy: UniformPolicyConfig = field(default_factory=UniformPolicyConfig)
    optuna: OptunaPrunerConfig = field(default_factory=OptunaPrunerConfig)

    def __post_init__(self) -> None:
        require(0.0 <= self.grace_fraction < 1.0, "grace_fraction", "must be in [0, 1)")
        require(self.patience >= 1, "patience", "must be >= 1")


def pruning_config_from_dict(data: dict[str, Any] | None, path: str = "pruning") -> PruningConfig:
    return from_dict(PruningConfig, data, path)


# --------------------------------------------------------------------------------------------
# building


class CollapseMonitor(Detector):
    """The detectors that apply to one stage and budget; ``check`` answers the first hit."""

    def __init__(self, detectors: Sequence[Detector], stage: int | None = None,
                 max_steps: int | None = None) -> None:
        self._any = AnyOf(*detectors)
        self.stage = stage
        self.max_steps = max_steps

    @property
    def detectors(self) -> tuple[Detector, ...]:
        return self._any.detectors

    def check(self, history: History) -> Collapse | None:
        return self._any.check(history)

    def __repr__(self) -> str:
        return f"CollapseMonitor(stage={self.stage}, max_steps={self.max_steps}, {self._any.detectors!r})"


def grace_steps(fraction: float, max_steps: int) -> int:
    """Grace period in steps: ``floor(fraction * max_steps)`` (so an evaluation at exactly that
    share of the budget already counts)."""
    return max(0, math.floor(fraction * max_steps + 1e-9))


def build_monitor(stage: int, config: PruningConfig, max_steps: int) -> CollapseMonitor:
    """Detectors for ``stage`` (non-finite and divergence always; legal moves for 2; value and
    uniform policy for 3), each behind its grace period converted to steps of ``max_steps``."""
    _check(stage in (1, 2, 3), f"stage must be 1, 2 or 3, got {stage!r}")
    _check(isinstance(max_steps, int) and max_steps >= 1, f"max_steps must be an integer >= 1, got {max_steps!r}")
    if not config.enabled:
        return CollapseMonitor([], stage, max_steps)

    def grace(section: Any) -> int:
        fraction = config.grace_fraction if section.grace_fraction is None else section.grace_fraction
        return grace_steps(fraction, max_steps)

    def patience(section: Any) -> int:
        return config.patience if section.patience is None else section.patience

    detectors: list[Detector] = []
    if config.non_finite.enabled:
        detectors.append(NonFiniteDetector(ignore=config.non_finite.ignore))
    def detector(cls: type, section: Any) -> Detector:
        """``cls`` with every threshold ``section`` shares with it by name, patience resolved."""
        shared = {f.name for f in fields(cls)} & {f.name for f in fields(section)}
        shared.discard("patience")
        return cls(**{name: getattr(section, name) for name in shared}, patience=patience(section))

    if config.divergence.enabled:
        detectors.append(Grace(detector(DivergenceDetector, config.divergence), grace(config.divergence),
                               trim_history=False))
    if stage == 3 and config.value.enabled:
        detectors.append(Grace(detector(ValueCollapseDetector, config.value), grace(config.value)))
    if stage == 3 and config.uniform_policy.enabled:
        detectors.append(Grace(detector(UniformPolicyDetector, config.uniform_policy), grace(config.uniform_policy)))
    if stage == 2 and config.legal_moves.enabled:
        detectors.append(Grace(detector(LegalMovesCollapseDetector, config.legal_moves), grace(config.legal_moves)))
    return CollapseMonitor(detectors, stage, max_steps)


def build_optuna_pruner(config: OptunaPrunerConfig) -> optuna.pruners.BasePruner:
    """Optuna's pruner for ``config.kind`` (``patient`` wraps a MedianPruner)."""
    import optuna

    p = optuna.pruners
    median = dict(n_startup_trials=config.n_startup_trials, n_warmup_steps=config.n_warmup_steps,
                  interval_steps=config.interval_steps, n_min_trials=config.n_min_trials)
    if config.kind == "none":
        return p.NopPruner()
    if config.kind == "median":
        return p.MedianPruner(**median)
    if config.kind == "percentile":
        return p.PercentilePruner(config.percentile, **median)
    if config.kind == "hyperband":
        return p.HyperbandPruner(min_resource=config.min_resource, max_resource=config.max_resource,
                                 reduction_factor=config.reduction_factor)
    if config.kind == "patient":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return p.PatientPruner(p.MedianPruner(**median), patience=config.patience, min_delta=config.min_delta)
    raise ValueError(f"unknown pruner kind {config.kind!r}")


def record_collapse(trial: optuna.Trial, collapse: Collapse) -> None:
    """Record why ``trial`` is pruned: user attrs ``prune_reason``, ``prune_detail``, ``prune_step``."""
    trial.set_user_attr("prune_reason", collapse.reason)
    trial.set_user_attr("prune_detail", collapse.detail)
    trial.set_user_attr("prune_step", int(collapse.step))


__all__ = [
    "AnyOf", "Collapse", "CollapseMonitor", "Detector", "DivergenceConfig", "DivergenceDetector", "Grace",
    "History", "LegalMovesCollapseConfig", "LegalMovesCollapseDetector", "NonFiniteConfig",
    "NonFiniteDetector", "OptunaPrunerConfig", "PruningConfig", "UniformPolicyConfig",
    "UniformPolicyDetector", "ValueCollapseConfig", "ValueCollapseDetector", "build_monitor",
    "build_optuna_pruner", "grace_steps", "pruning_config_from_dict", "record_collapse",
]
