"""The stage registry: each training stage declared once, in plain data (no torch, no Optuna).

A stage is its targets (names, widths, how they are stored), the metrics its evaluation reports,
the metric a sweep selects on by default, the collapse rules that apply to it, where its data
comes from, the prefix of upstream ``maou learn-model`` flags, and the trainer task that builds
its heads, loss and per-row statistics (imported lazily by the trainer: ``module:Class``).

Adding a stage is one entry here, its task class in :mod:`maou.trainer.tasks`, its rows in
:mod:`maou.data.partitions` with their schema in :mod:`maou.data.writers` (a games-built stage),
and its loss and head flags in :mod:`maou.sweep.results.upstream`, each named by the entry. Every
other module looks stages up with :func:`stage` (an unknown stage number raises).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

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


def direction_sign(direction: str | None) -> float:
    """+1 where larger is better (``maximize``, the default), -1 where smaller is: ``sign * value``
    is a gain either way."""
    return -1.0 if direction == "minimize" else 1.0


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
    ``compact_column``). The byte layouts are in :mod:`maou.layout`. The loader reads the
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
class Dataset:
    """How ``sweep data build`` writes a games-built stage: ``module:function`` names, imported when a
    build runs (this module stays free of pyarrow and numpy)."""

    #: ``() -> pyarrow.Schema`` of the stage's files.
    schema: str
    #: ``(PartitionSplit) -> pyarrow.Table``: the stage's rows of one split of one partition, sorted
    #: by id (:mod:`maou.data.partitions`).
    rows: str


@dataclass(frozen=True)
class UpstreamFlags:
    """The stage's flags of upstream ``maou learn-model`` (:mod:`maou.sweep.results.upstream`)."""

    batch: str
    learning_rate: str
    epochs: str
    data_path: str
    #: Upstream multiplies this stage's learning rate by ``sqrt(B / n)`` above batch ``n`` (None: never).
    lr_scaled_above_batch: int | None
    #: The schedule flag, and whether it can say "constant" (``none``).
    scheduler: str
    scheduler_can_be_constant: bool
    #: ``module:function`` ``(TrainConfig, UpstreamArgs) -> None`` adding the stage's loss and head flags.
    loss_and_head: str


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
    #: Upstream ``maou learn-model``'s flags of this stage.
    upstream: UpstreamFlags
    #: ``module:Class`` of the trainer task (heads, loss, per-row statistics).
    task: str
    #: How its files are built from games (None: a ``synthetic`` stage, nothing to build).
    dataset: Dataset | None = None
    #: Guards every step of the stage gets unless the spec sets its own.
    default_guards: tuple[GuardDefault, ...] = ()

    def __post_init__(self) -> None:
        if (self.data_source == "games") != (self.dataset is not None):
            raise ValueError(f"stage {self.number}: a games-built stage declares its dataset, a synthetic one none")

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
          rules=_ALWAYS, data_source="synthetic",
          upstream=UpstreamFlags("--stage1-batch-size", "--stage1-learning-rate", "--stage1-max-epochs",
                                 "--stage1-data-path", 256, "--stage12-lr-scheduler", True,
                                 "maou.sweep.results.upstream:stage1_flags"),
          task="maou.trainer.tasks:ReachableSquares"),
    Stage(2, "legal moves",
          targets=(Target("legal_moves", "legalMovesLabel", MOVE_LABELS_NUM, "uint8",
                          storage="bitpacked", compact_column="legalMovesBits"),),
          metrics=("val_loss", "val_f1", "val_precision", "val_recall", "val_pred_pos_rate",
                   "val_label_pos_rate", "val_f1_all_positive", "val_average_precision",
                   "val_f1_best_threshold", "val_best_threshold"),
          selection_metric="val_f1", selection_direction="maximize",
          rules=(*_ALWAYS, "legal_moves"), data_source="games",
          upstream=UpstreamFlags("--stage2-batch-size", "--stage2-learning-rate", "--stage2-max-epochs",
                                 "--stage2-data-path", 256, "--stage12-lr-scheduler", True,
                                 "maou.sweep.results.upstream:stage2_flags"),
          task="maou.trainer.tasks:LegalMoves",
          dataset=Dataset("maou.data.writers:stage2_schema", "maou.data.partitions:stage2_rows")),
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
          rules=(*_ALWAYS, "value", "uniform_policy"), data_source="games",
          upstream=UpstreamFlags("--batch-size", "--learning-ratio", "--epoch", "--stage3-data-path", None,
                                 "--lr-scheduler", False, "maou.sweep.results.upstream:stage3_flags"),
          task="maou.trainer.tasks:PolicyValue",
          dataset=Dataset("maou.data.writers:stage3_schema", "maou.data.partitions:stage3_rows"),
          default_guards=(GuardDefault("val_policy_top1", 0.005),)),
)}


def stage(number: int) -> Stage:
    """The registered stage ``number``; ValueError naming the bad value otherwise."""
    if isinstance(number, bool) or number not in STAGES:
        *first, last = STAGES
        raise ValueError(f"stage must be {', '.join(map(str, first))} or {last}, got {number!r}")
    return STAGES[number]


def games_stages() -> tuple[Stage, ...]:
    """The stages whose files ``sweep data build`` writes from game records, in order."""
    return tuple(s for s in STAGES.values() if s.dataset is not None)


def resolve_reference(reference: str) -> Any:
    """The function a ``module:function`` reference of the registry names (imported now)."""
    import importlib

    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


__all__ = ["METRIC_DIRECTIONS", "STAGES", "Dataset", "GuardDefault", "Stage", "Storage", "TRAIN_METRICS", "Target",
           "UpstreamFlags", "direction_sign", "games_stages", "resolve_reference", "stage"]
