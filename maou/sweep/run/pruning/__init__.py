"""Collapse pruning: detectors (:mod:`.detectors`), the rules and monitor a spec configures
(:mod:`.rules`), and Optuna's own pruners on top (:mod:`.optuna_pruners`). Neither torch nor
Optuna is imported here; a pruned trial records ``prune_reason``, ``prune_detail`` and
``prune_step`` (the :class:`~maou.trainer.result.Stop` that ended it)."""

from maou.sweep.run.pruning.detectors import (
    Detector,
    DivergenceDetector,
    History,
    LegalMovesCollapseDetector,
    NonFiniteDetector,
    UniformPolicyDetector,
    ValueCollapseDetector,
)
from maou.sweep.run.pruning.optuna_pruners import OptunaPrunerConfig, build_optuna_pruner
from maou.sweep.run.pruning.rules import (
    Armed,
    CollapseMonitor,
    PruningConfig,
    Rule,
    build_monitor,
    grace_steps,
    pruning_config_from_dict,
)

__all__ = [
    "Armed", "CollapseMonitor", "Detector", "DivergenceDetector", "History", "LegalMovesCollapseDetector",
    "NonFiniteDetector", "OptunaPrunerConfig", "PruningConfig", "Rule", "UniformPolicyDetector",
    "ValueCollapseDetector", "build_monitor", "build_optuna_pruner", "grace_steps", "pruning_config_from_dict",
]
