"""Optuna's own pruners, layered on top of the collapse rules (on the reported objective metric), and
:class:`OptunaPruning`: asking the study's pruner as a :class:`~maou.sweep.run.stopping.Stopper`."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from maou.strict import require
from maou.sweep.run.stopping import Running, Stopper
from maou.trainer.result import Stop

if TYPE_CHECKING:
    import optuna

#: ``prune_reason`` of a trial Optuna's pruner stopped.
OPTUNA_PRUNER = "optuna_pruner"


@dataclass(frozen=True)
class OptunaPrunerConfig:
    """Optuna's own pruner, layered on top of the collapse rules (on the reported metric)."""

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
        require(self, "n_startup_trials", self.n_startup_trials >= 0, "must be >= 0")
        require(self, "n_warmup_steps", self.n_warmup_steps >= 0, "must be >= 0")
        require(self, "interval_steps", self.interval_steps >= 1, "must be >= 1")
        require(self, "n_min_trials", self.n_min_trials >= 1, "must be >= 1")
        require(self, "percentile", 0.0 <= self.percentile <= 100.0, "must be in [0, 100]")
        require(self, "min_resource", self.min_resource >= 1, "must be >= 1")
        require(self, "max_resource", self.max_resource == "auto" or self.max_resource >= self.min_resource,
                "must be 'auto' or >= min_resource")
        require(self, "reduction_factor", self.reduction_factor >= 2, "must be >= 2")
        require(self, "patience", self.patience >= 0, "must be >= 0")
        require(self, "min_delta", self.min_delta >= 0.0, "must be >= 0")


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


class OptunaPruning(Stopper):
    """The study's pruner (``kind``), asked after every evaluation but the untrained model's (the
    intermediate values it compares are the objective ``metric``'s from step 1 on)."""

    def __init__(self, kind: str, metric: str) -> None:
        self.kind, self.metric = kind, metric

    def observe(self, trial: Running, step: int, metrics: dict[str, float]) -> Stop | None:
        if step <= 0 or trial.optuna_trial is None or not trial.optuna_trial.should_prune():
            return None
        return Stop(OPTUNA_PRUNER, f"{self.kind} pruner: {self.metric}={metrics.get(self.metric)} at step {step}", step)

    def __repr__(self) -> str:
        return f"OptunaPruning({self.kind!r}, {self.metric!r})"


def optuna_pruning(config: OptunaPrunerConfig, enabled: bool, metric: str) -> OptunaPruning | None:
    """The stopper that asks the study's pruner, when pruning is ``enabled`` and one is configured."""
    return OptunaPruning(config.kind, metric) if enabled and config.kind != "none" else None


__all__ = ["OPTUNA_PRUNER", "OptunaPrunerConfig", "OptunaPruning", "build_optuna_pruner", "optuna_pruning"]
