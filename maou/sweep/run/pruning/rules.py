"""The ``pruning`` section of a sweep spec, and the collapse monitor built from it for one run.

Each collapse rule is a :class:`Rule`: a detector (its dataclass is its own configuration) inside
one generic wrapper that carries ``enabled``, ``grace_fraction`` and ``patience``; in YAML both
read as one section (``pruning.value: {patience: 2, std_ratio: 0.05}``). A rule's null
``grace_fraction`` or ``patience`` inherits the section-wide value (a detector may bring its own
default patience: divergence fires on one evaluation).

:func:`build_monitor` arms the rules that apply to a stage (the registry's ``rules``) for a budget
and fails loudly when a rule needs a metric the stage does not report. Nothing here imports torch
or Optuna.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from maou.stages import Stage, stage
from maou.strict import INLINE, from_dict, require
from maou.sweep.run.pruning.detectors import (
    Detector,
    DivergenceDetector,
    History,
    LegalMovesCollapseDetector,
    NonFiniteDetector,
    UniformPolicyDetector,
    ValueCollapseDetector,
)
from maou.sweep.run.pruning.optuna_pruners import OptunaPrunerConfig
from maou.sweep.run.stopping import Running, Stopper
from maou.trainer.result import Stop

D = TypeVar("D", bound=Detector)


@dataclass(frozen=True)
class Rule(Generic[D]):
    """One detector as a sweep configures it."""

    detector: D = field(metadata=INLINE)
    enabled: bool = True
    #: Share of the step budget before the rule may fire; null inherits ``pruning.grace_fraction``.
    grace_fraction: float | None = None
    #: Consecutive evaluations the condition must hold; null: the detector's default, else
    #: ``pruning.patience``.
    patience: int | None = None

    def __post_init__(self) -> None:
        require(self, "patience", self.patience is None or self.patience >= 1, "must be >= 1 or null (inherit)")
        require(self, "grace_fraction", self.grace_fraction is None or 0.0 <= self.grace_fraction < 1.0,
                "must be in [0, 1) or null (inherit)")
        for key in ("grace_fraction", "patience"):
            require(self, key, not self.detector.immediate or getattr(self, key) is None,
                    f"{type(self.detector).__name__} fires at once: it takes no {key}")


def _rule(detector: Detector) -> Any:
    return field(default_factory=lambda: Rule(detector))


@dataclass(frozen=True)
class PruningConfig:
    #: Master switch for the collapse rules (Optuna's pruner is set by ``optuna.kind``).
    enabled: bool = True
    #: Share of the step budget before a non-immediate rule may fire.
    grace_fraction: float = 0.05
    #: Consecutive evaluations a window rule's condition must hold.
    patience: int = 3
    non_finite: Rule[NonFiniteDetector] = _rule(NonFiniteDetector())
    divergence: Rule[DivergenceDetector] = _rule(DivergenceDetector())
    value: Rule[ValueCollapseDetector] = _rule(ValueCollapseDetector())
    legal_moves: Rule[LegalMovesCollapseDetector] = _rule(LegalMovesCollapseDetector())
    uniform_policy: Rule[UniformPolicyDetector] = _rule(UniformPolicyDetector())
    optuna: OptunaPrunerConfig = field(default_factory=OptunaPrunerConfig)

    def __post_init__(self) -> None:
        require(self, "grace_fraction", 0.0 <= self.grace_fraction < 1.0, "must be in [0, 1)")
        require(self, "patience", self.patience >= 1, "must be >= 1")


def pruning_config_from_dict(data: dict[str, Any] | None, path: str = "pruning") -> PruningConfig:
    return from_dict(PruningConfig, data, path)


class Armed:
    """A detector that may fire once the latest evaluation is at ``step >= min_step``, with its
    patience. With ``trim_history`` (the default) it sees only the evaluations at or after
    ``min_step``, so its patience window starts after the grace period; without, it sees the
    whole run (divergence measures against the best loss since step 0)."""

    def __init__(self, detector: Detector, min_step: int = 0, patience: int = 1,
                 trim_history: bool = True) -> None:
        if not isinstance(detector, Detector):
            raise ValueError(f"Armed takes a detector, got {detector!r}")
        if isinstance(min_step, bool) or not isinstance(min_step, int) or min_step < 0:
            raise ValueError(f"min_step must be an integer >= 0, got {min_step!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        self.detector, self.min_step, self.patience, self.trim_history = detector, min_step, patience, trim_history

    def check(self, history: History) -> Stop | None:
        if not history or int(history[-1][0]) < self.min_step:
            return None
        if self.trim_history:
            history = [(s, m) for s, m in history if int(s) >= self.min_step]
        return self.detector.check(history, self.patience)

    def __repr__(self) -> str:
        return (f"Armed({self.detector!r}, min_step={self.min_step}, patience={self.patience}, "
                f"trim_history={self.trim_history})")


class CollapseMonitor(Stopper):
    """The armed rules of one run, checked in order: ``check`` answers the first hit. As a
    :class:`~maou.sweep.run.stopping.Stopper` it checks the trial's history at every evaluation."""

    def __init__(self, rules: Sequence[Armed], stage: int | None = None, max_steps: int | None = None) -> None:
        self.rules: tuple[Armed, ...] = tuple(rules)
        self.stage, self.max_steps = stage, max_steps

    def observe(self, trial: Running, step: int, metrics: dict[str, float]) -> Stop | None:
        return self.check(trial.history)

    def check(self, history: History) -> Stop | None:
        for rule in self.rules:
            hit = rule.check(history)
            if hit is not None:
                return hit
        return None

    def __repr__(self) -> str:
        return f"CollapseMonitor(stage={self.stage}, max_steps={self.max_steps}, {self.rules!r})"


def grace_steps(fraction: float, max_steps: int) -> int:
    """Grace period in steps: ``floor(fraction * max_steps)`` (so an evaluation at exactly that
    share of the budget already counts)."""
    return max(0, math.floor(fraction * max_steps + 1e-9))


def build_monitor(stage_of_run: int | Stage, config: PruningConfig, max_steps: int) -> CollapseMonitor:
    """The enabled rules of the stage's registry entry (a number, or the entry itself), armed
    for a run of ``max_steps``; a rule that needs a metric the stage does not report is an error."""
    info = stage_of_run if isinstance(stage_of_run, Stage) else stage(stage_of_run)
    stage_number = info.number
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}")
    if not config.enabled:
        return CollapseMonitor([], stage_number, max_steps)
    armed = []
    for name in info.rules:
        rule: Rule[Any] = getattr(config, name)
        if not rule.enabled:
            continue
        missing = [m for m in rule.detector.requires if m not in info.reported_metrics]
        if missing:
            raise ValueError(f"pruning.{name} needs {', '.join(missing)}, which stage {stage_number} "
                             f"({info.title}) does not report")
        detector = rule.detector
        if detector.immediate:
            armed.append(Armed(detector))
            continue
        fraction = config.grace_fraction if rule.grace_fraction is None else rule.grace_fraction
        patience = rule.patience or detector.default_patience or config.patience
        armed.append(Armed(detector, grace_steps(fraction, max_steps), patience,
                           trim_history=not detector.whole_history))
    return CollapseMonitor(armed, stage_number, max_steps)


__all__ = ["Armed", "CollapseMonitor", "PruningConfig", "Rule", "build_monitor", "grace_steps",
           "pruning_config_from_dict"]
