"""What each stage trains: its heads, its loss and its validation metrics, one class per stage.

The stage registry (:mod:`maou.stages`) names each stage's task (``module:Class``);
:func:`task_for` builds it from a training config. A task's output keys equal its stage's target
keys, and the metrics it reports are exactly the registry's ``metrics`` (the tests hold every task
to that contract, so a renamed metric cannot silently switch a collapse rule off).

Per batch, :meth:`Task.row_stats` gives per-row quantities, averaged over the whole validation set
as the batches go (:class:`~maou.trainer.metrics.RowMeans`); :meth:`Task.summarize` turns those
means into the stage's metrics, so a large set never holds its logits, or any per-row value, at once.
"""

from __future__ import annotations

import abc
import importlib
import math
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from maou.shogi.shapes import MOVE_LABELS_NUM, REACHABLE_SQUARES_NUM
from maou.stages import stage
from maou.trainer.config import LossConfig, ModelConfig
from maou.trainer.losses import LegalMovesLoss, PolicyValueLoss, ReachableSquaresLoss
from maou.trainer.metrics import (
    F1_THRESHOLDS,
    Reference,
    all_positive_f1,
    constant_bce,
    element_accuracy,
    f1_precision_recall,
    ranking_metrics,
    skill,
    top1_hits,
    top_move_hits,
)

Tensors = dict[str, torch.Tensor]


class Task(abc.ABC):
    """One stage's heads, loss and metrics (outputs and targets are dicts keyed by target name)."""

    stage: ClassVar[int]

    def __init__(self, model: ModelConfig, loss: LossConfig) -> None:
        self.model_config, self.loss_config = model, loss

    @abc.abstractmethod
    def heads(self, features: int) -> nn.ModuleDict:
        """Fresh heads on a backbone feature vector of size ``features``."""

    @abc.abstractmethod
    def loss(self) -> nn.Module:
        """``loss(outputs, targets) -> scalar`` (float32, even under autocast)."""

    @abc.abstractmethod
    def row_stats(self, outputs: Tensors, targets: Tensors, reference: Reference) -> Tensors:
        """Per-row quantities of one batch, each a float tensor of shape (B,) or (B, k)."""

    def summarize(self, means: Tensors) -> dict[str, float]:
        """``val_*`` metrics (but ``val_loss``) from the whole set's mean of each per-row quantity."""
        return {f"val_{k}": float(v) for k, v in means.items()}

    def reference(self, train_targets: Iterable[Tensors]) -> Reference:
        """Constants of the training split (its targets, in chunks of rows) that the stage's baselines predict."""
        return Reference()


class _ApplyLoss(nn.Module):
    """A loss over single tensors applied to the one target of a stage's dicts."""

    def __init__(self, key: str, loss: nn.Module) -> None:
        super().__init__()
        self.key, self.loss = key, loss

    def forward(self, outputs: Tensors, targets: Tensors) -> torch.Tensor:
        return self.loss(outputs[self.key], targets[self.key])


class ReachableSquares(Task):
    stage = 1

    def heads(self, features: int) -> nn.ModuleDict:
        return nn.ModuleDict({"reachable": nn.Linear(features, REACHABLE_SQUARES_NUM)})

    def loss(self) -> nn.Module:
        return _ApplyLoss("reachable", ReachableSquaresLoss(self.loss_config.pos_weight))

    def row_stats(self, outputs: Tensors, targets: Tensors, reference: Reference) -> Tensors:
        return {"accuracy": element_accuracy(outputs["reachable"], targets["reachable"])}


def legal_moves_head(features: int, hidden_dim: int | None, dropout: float) -> nn.Module:
    """Linear(D, 1496), or Linear(D, H) -> GELU -> Dropout(p) -> Linear(H, 1496) when ``hidden_dim``."""
    if hidden_dim is None:
        return nn.Linear(features, MOVE_LABELS_NUM)
    return nn.Sequential(nn.Linear(features, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden_dim, MOVE_LABELS_NUM))


class LegalMoves(Task):
    stage = 2
    #: Per-row quantities that feed other metrics, not reported as means of their own.
    _NOT_REPORTED = ("f1_at_thresholds", "average_precision", "rows_with_moves")

    def heads(self, features: int) -> nn.ModuleDict:
        m = self.model_config
        return nn.ModuleDict({"legal_moves": legal_moves_head(features, m.hidden_dim, m.dropout)})

    def loss(self) -> nn.Module:
        c = self.loss_config
        return _ApplyLoss("legal_moves", LegalMovesLoss(c.pos_weight, c.gamma_pos, c.gamma_neg, c.asl_clip))

    def row_stats(self, outputs: Tensors, targets: Tensors, reference: Reference) -> Tensors:
        logits, actual = outputs["legal_moves"].float(), targets["legal_moves"].float() > 0.5
        predicted = logits > 0
        f1, precision, recall = f1_precision_recall(predicted, actual)
        ap, by_threshold = ranking_metrics(logits, actual, F1_THRESHOLDS)  # one sort; AP NaN without a legal move
        counted = ~ap.isnan()
        return {"f1": f1, "precision": precision, "recall": recall,
                "pred_pos_rate": predicted.float().mean(dim=1), "label_pos_rate": actual.float().mean(dim=1),
                "f1_all_positive": all_positive_f1(actual), "average_precision": torch.where(counted, ap, 0.0),
                "rows_with_moves": counted.float(), "f1_at_thresholds": by_threshold}

    def summarize(self, means: Tensors) -> dict[str, float]:
        by_threshold = means["f1_at_thresholds"]
        best = int(by_threshold.argmax())
        out = {f"val_{k}": float(v) for k, v in means.items() if k not in self._NOT_REPORTED}
        counted = float(means["rows_with_moves"])  # average precision: over rows with a legal move
        out.update(val_average_precision=float(means["average_precision"]) / counted if counted > 0 else 0.0,
                   val_f1_best_threshold=float(by_threshold[best]), val_best_threshold=F1_THRESHOLDS[best])
        return out


class _PolicyValueLoss(nn.Module):
    def __init__(self, loss: PolicyValueLoss) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, outputs: Tensors, targets: Tensors) -> torch.Tensor:
        return self.loss(outputs["policy"], outputs["value"], targets["policy"], targets["value"])


class PolicyValue(Task):
    stage = 3
    #: Per-row quantities that feed the whole-set value statistics, not reported as means.
    _WHOLE_SET = ("value_p", "value_t", "value_p2", "value_t2", "value_constant_bce")

    def heads(self, features: int) -> nn.ModuleDict:
        return nn.ModuleDict({"policy": nn.Linear(features, MOVE_LABELS_NUM), "value": nn.Linear(features, 1)})

    def loss(self) -> nn.Module:
        c = self.loss_config
        return _PolicyValueLoss(PolicyValueLoss(c.policy_loss_ratio, c.value_loss_ratio, c.value_loss))

    def reference(self, train_targets: Iterable[Tensors]) -> Reference:
        """The training-label value mean and the most frequent most-played move."""
        top = torch.zeros(MOVE_LABELS_NUM, dtype=torch.long)
        value_sum, rows = 0.0, 0
        for chunk in train_targets:
            top += torch.bincount(chunk["policy"].float().argmax(dim=1), minlength=MOVE_LABELS_NUM).cpu()
            value_sum += float(chunk["value"].double().sum())
            rows += chunk["value"].shape[0]
        return Reference(value_mean=value_sum / rows if rows else math.nan, top_move=int(top.argmax()))

    def row_stats(self, outputs: Tensors, targets: Tensors, reference: Reference) -> Tensors:
        policy, value = outputs["policy"].float(), outputs["value"].float()
        target = targets["policy"].float()
        target = target / target.sum(dim=1, keepdim=True).clamp_min(1e-12)
        log_probs = F.log_softmax(policy, dim=1)
        t = targets["value"].float()
        p = torch.sigmoid(value)
        return {"policy_top1": top1_hits(policy, target),
                "policy_ce": -(target * log_probs).sum(dim=1),
                "policy_entropy": -(log_probs.exp() * log_probs).sum(dim=1),
                "policy_top1_baseline": top_move_hits(reference.top_move, target),
                "value_bce": F.binary_cross_entropy_with_logits(value, t, reduction="none"),
                "value_brier": (p - t) ** 2,
                "value_accuracy": ((p > 0.5) == (t > 0.5)).float(),
                "value_constant_bce": constant_bce(t, reference.value_mean),
                "value_p": p, "value_t": t, "value_p2": p * p, "value_t2": t * t}

    def summarize(self, means: Tensors) -> dict[str, float]:
        p, t = float(means["value_p"]), float(means["value_t"])
        out = {f"val_{k}": float(v) for k, v in means.items() if k not in self._WHOLE_SET}
        out.update(val_value_std=_std(p, float(means["value_p2"])),
                   val_value_label_std=_std(t, float(means["value_t2"])), val_value_mean=p,
                   val_value_skill=skill(float(means["value_bce"]), float(means["value_constant_bce"])))
        return out


def _std(mean: float, mean_of_squares: float) -> float:
    """The population standard deviation from a mean and a mean of squares (float64 sums)."""
    return math.sqrt(max(mean_of_squares - mean * mean, 0.0)) if math.isfinite(mean_of_squares) else math.nan


def task_class(stage_number: int) -> type[Task]:
    """The task class the registry names for ``stage_number``."""
    module, _, name = stage(stage_number).task.partition(":")
    cls: Any = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, Task) and cls.stage == stage_number):
        raise TypeError(f"stage {stage_number}'s task {stage(stage_number).task} is not its Task subclass")
    return cls


def task_for(config: Any) -> Task:
    """The task of a :class:`maou.trainer.config.TrainConfig` (its stage, model and loss)."""
    return task_class(config.stage)(config.model, config.loss)


__all__ = ["LegalMoves", "PolicyValue", "ReachableSquares", "Task", "legal_moves_head", "task_class", "task_for"]
