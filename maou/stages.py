"""The stage registry: each training stage declared once, in plain data (no torch, no Optuna).

A stage is its targets (names, widths, how they are stored), the metrics its evaluation reports,
the metric a sweep selects on by default, the collapse rules that apply to it, where its data
comes from, the prefix of upstream ``maou learn-model`` flags, and the trainer task that builds
its heads, loss and per-row statistics (imported lazily by the trainer: ``module:Class``).

Adding a stage is one entry here, its task class in :mod:`maou.trainer.tasks`, and its dataset
writer in :mod:`maou.data.build`. Every other module looks stages up with :func:`stage`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from maou.shogi.shapes import MOVE_LABELS_NUM, REACHABLE_SQUARES_NUM

Direction = Literal["maximize", "minimize"]
#: How a target is stored in the dataset files (see :class:`Target`).
Storage = Literal["dense", "bitpacked", "sparse"]
#: Reported at every evaluation of every stage, next to the stage's own ``val_*`` metrics.
TRAIN_METRICS = ("train_loss", "lr", "epoch")
#: Which way is better, for every metric that can be an objective or a guard (the others, such
#: as rates, spreads and baselines, describe a run but have no better direction).
METRIC_DIRECTIONS: dict[str, Direction] = {
    "train_loss": "minimize", "val_loss": "minimize",
    "val_accuracy": "maximize",
    "val_f1": "maximize", "val_precision": "maximize", "val_recall": "maximize",
    "val_average_precision": "maximize", "val_f1_best_threshold": "maximize",
    "val_policy_top1": "maximize", "val_policy_ce": "minimize",
    "val_value_bce": "minimize", "val_value_brier": "minimize", "val_value_accuracy": "maximize",
    "val_value_skill": "maximize",
}


@dataclass(frozen=True)
class GuardDefault:
    """A guard a stage's steps get unless they set their own: ``metric`` may not get worse than
    the carried configuration's by more than ``tolerance``."""

    metric: str
    tolerance: float


@dataclass(frozen=True)
class Target:
    """One target tensor: its key (the model output of the same name), its dense Arrow column
    (upstream's name: one value per label), its width per row (0 for a scalar), the dtype of the
    tensor the trainer sees, and how ``sweep data build`` stores it.

    ``storage``: ``dense`` (in ``column``); ``bitpacked`` (multi-hot flags, eight a byte, in
    ``compact_column``); ``sparse`` (a row's non-zero labels and their weights, in
    ``compact_column``). The byte layouts are in :mod:`maou.data.layout`. The loader reads the
    compact column when a file has it, else the dense one (upstream's files, older builds).
    """

    name: str
    column: str
    width: int
    dtype: Literal["uint8", "float32"]
    storage: Storage = "dense"
    compact_column: str | None = None

    def __post_init__(self) -> None:
        if (self.storage == "dense") != (self.compact_column is None):
            raise ValueError(f"target {self.name}: a compact column goes with a bitpacked or sparse storage")


@dataclass(frozen=True)
class Stage:
    number: int
    title: str
    targets: tuple[Target, ...]
    #: ``val_*`` metrics every evaluation reports (``val_loss`` included).
    metrics: tuple[str, ...]
    selection_metric: str
    selection_direction: Direction
    #: Sections of ``pruning`` whose collapse rule applies (in the order they are checked).
    rules: tuple[str, ...]
    #: ``games``: datasets built from game records; ``synthetic``: the fixed Stage 1 rows.
    data_source: Literal["games", "synthetic"]
    #: Prefix of upstream's stage-specific ``maou learn-model`` flags (``--stage2-``), or ``--``.
    upstream_prefix: str
    #: ``module:Class`` of the trainer task (heads, loss, per-row statistics).
    task: str
    #: Guards every step of the stage gets unless the spec sets its own.
    default_guards: tuple[GuardDefault, ...] = ()

    @property
    def reported_metrics(self) -> tuple[str, ...]:
        return TRAIN_METRICS + self.metrics

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.targets)


_ALWAYS = ("non_finite", "divergence")

STAGES: dict[int, Stage] = {s.number: s for s in (
    Stage(1, "reachable squares",
          targets=(Target("reachable", "reachableSquares", REACHABLE_SQUARES_NUM, "uint8"),),
          metrics=("val_loss", "val_accuracy"),
          selection_metric="val_accuracy", selection_direction="maximize",
          rules=_ALWAYS, data_source="synthetic", upstream_prefix="--stage1-",
          task="maou.trainer.tasks:ReachableSquares"),
    Stage(2, "legal moves",
          targets=(Target("legal_moves", "legalMovesLabel", MOVE_LABELS_NUM, "uint8",
                          storage="bitpacked", compact_column="legalMovesBits"),),
          metrics=("val_loss", "val_f1", "val_precision", "val_recall", "val_pred_pos_rate",
                   "val_label_pos_rate", "val_f1_all_positive", "val_average_precision",
                   "val_f1_best_threshold", "val_best_threshold"),
          selection_metric="val_f1", selection_direction="maximize",
          rules=(*_ALWAYS, "legal_moves"), data_source="games", upstream_prefix="--stage2-",
          task="maou.trainer.tasks:LegalMoves"),
    Stage(3, "policy + value",
          targets=(Target("policy", "moveLabel", MOVE_LABELS_NUM, "float32",
                          storage="sparse", compact_column="moveLabelSparse"),
                   Target("value", "resultValue", 0, "float32")),
          metrics=("val_loss", "val_policy_top1", "val_policy_ce", "val_policy_entropy",
                   "val_policy_top1_baseline", "val_value_bce", "val_value_brier", "val_value_accuracy",
                   "val_value_std", "val_value_label_std", "val_value_mean", "val_value_skill"),
          # value-aware by default: the value head is what the investigation report found broken,
          # and a policy-only objective would judge value-loss settings by their side effect on the
          # policy; the policy may not lose more than half a point of top-1 meanwhile
          selection_metric="val_value_bce", selection_direction="minimize",
          rules=(*_ALWAYS, "value", "uniform_policy"), data_source="games", upstream_prefix="--",
          task="maou.trainer.tasks:PolicyValue",
          default_guards=(GuardDefault("val_policy_top1", 0.005),)),
)}


def stage(number: int) -> Stage:
    """The registered stage ``number``; ValueError naming the bad value otherwise."""
    if isinstance(number, bool) or number not in STAGES:
        *first, last = STAGES
        raise ValueError(f"stage must be {', '.join(map(str, first))} or {last}, got {number!r}")
    return STAGES[number]


__all__ = ["METRIC_DIRECTIONS", "STAGES", "GuardDefault", "Stage", "Storage", "TRAIN_METRICS", "Target",
           "stage"]
