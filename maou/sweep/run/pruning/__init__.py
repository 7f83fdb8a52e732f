"""Collapse pruning: detectors (:mod:`.detectors`), the rules and monitor a spec configures
(:mod:`.rules`), and Optuna's own pruners on top (:mod:`.optuna_pruners`). Neither torch nor
Optuna is imported here; the monitor and :class:`OptunaPruning` are
:class:`~maou.sweep.run.stopping.Stopper` s; a pruned trial records ``prune_reason``, ``prune_detail`` and
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
from maou.sweep.run.pruning.optuna_pruners import (
    OPTUNA_PRUNER,
    OptunaPrunerConfig,
    OptunaPruning,
    build_optuna_pruner,
    optuna_pruning,
)
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
    "OPTUNA_PRUNER", "Armed", "CollapseMonitor", "Detector", "DivergenceDetector", "History",
    "LegalMovesCollapseDetector", "NonFiniteDetector", "OptunaPrunerConfig", "OptunaPruning", "PruningConfig", "Rule",
    "UniformPolicyDetector", "ValueCollapseDetector", "build_monitor", "build_optuna_pruner", "grace_steps",
    "optuna_pruning", "pruning_config_from_dict",
]
