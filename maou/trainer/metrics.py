"""Validation metrics: held-out rows, eval mode, no gradients. The metric names are a contract
declared in the stage registry (:mod:`maou.stages`); each stage's task (:mod:`maou.trainer.tasks`)
computes them from the per-row primitives here.

Every evaluation reports ``train_loss`` (mean training loss since the previous evaluation), ``lr``,
``epoch`` (float) and ``val_loss``, plus per stage:

* 1: ``val_accuracy`` (element accuracy over the 81 squares; all-zeros scores about 0.902);
* 2: ``val_f1`` (per-sample F1 at threshold 0.5, averaged over samples; both empty = 1),
  ``val_precision``, ``val_recall`` (per sample, averaged; an empty denominator counts 1 when
  prediction and label are both empty, else 0), ``val_pred_pos_rate``, ``val_label_pos_rate``,
  ``val_f1_all_positive`` (the trivial predict-everything predictor), and two threshold-free
  measures: ``val_average_precision`` (per-sample average precision of the labels ranked by
  logit, averaged over samples with a legal move) and ``val_f1_best_threshold`` (the per-sample
  F1 at the probability threshold of ``F1_THRESHOLDS`` that maximises it, that threshold being
  ``val_best_threshold``): F1 at 0.5 mixes ranking with calibration on short budgets;
* 3: ``val_policy_top1`` (the argmax is a most played move), ``val_policy_ce``,
  ``val_policy_entropy`` (nats), ``val_policy_top1_baseline`` (always the training set's most
  frequent top move), ``val_value_bce``, ``val_value_brier``, ``val_value_accuracy``
  (prediction and target on the same side of 0.5), ``val_value_std`` (std of sigmoid
  predictions), ``val_value_label_std``, ``val_value_mean``, ``val_value_skill``
  (1 - BCE / BCE of the constant training-label mean).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


@dataclass(frozen=True)
class Reference:
    """Constants of the training split that the Stage 3 baselines predict."""

    value_mean: float = 0.5
    top_move: int = 0


# ---- per-row quantities (hand-made tensors in the tests) -----------------------------------------

def element_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row: share of elements where (logit > 0) equals (target > 0.5)."""
    return ((logits.float() > 0) == (targets.float() > 0.5)).float().mean(dim=1)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor, both_empty: torch.Tensor) -> torch.Tensor:
    value = numerator / denominator.clamp_min(1)
    return torch.where(denominator > 0, value, both_empty.float())


def f1_precision_recall(predicted: torch.Tensor, actual: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per row F1, precision and recall of boolean sets; an empty denominator scores 1 only when
    both sets are empty."""
    predicted, actual = predicted.bool(), actual.bool()
    tp = (predicted & actual).sum(dim=1).float()
    n_pred, n_true = predicted.sum(dim=1).float(), actual.sum(dim=1).float()
    both_empty = (n_pred == 0) & (n_true == 0)
    return (_ratio(2 * tp, n_pred + n_true, both_empty), _ratio(tp, n_pred, both_empty),
            _ratio(tp, n_true, both_empty))


def sample_f1(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row F1 at probability threshold 0.5 (logit > 0)."""
    return f1_precision_recall(logits.float() > 0, targets.float() > 0.5)[0]


#: Probability thresholds the best-threshold F1 is taken over.
F1_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))


def f1_at_thresholds(logits: torch.Tensor, actual: torch.Tensor,
                     thresholds: tuple[float, ...] = F1_THRESHOLDS) -> torch.Tensor:
    """(B, T) per-row F1 with positives predicted where ``sigmoid(logit) > threshold``."""
    return ranking_metrics(logits, actual, thresholds)[1]


def average_precision(logits: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    """Per row: average precision of the labels ranked by logit (threshold-free); NaN for a row
    without positives."""
    return ranking_metrics(logits, actual, ())[0]


def ranking_metrics(logits: torch.Tensor, actual: torch.Tensor,
                    thresholds: tuple[float, ...] = F1_THRESHOLDS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, from one sort of the row's logits: the average precision (B,) of the labels ranked
    by logit (NaN for a row without positives) and the F1 (B, T) with positives predicted where
    ``sigmoid(logit) > threshold`` for each of ``thresholds``.

    The labels are ranked once (:func:`_ranked`). Average precision is the precision at each
    positive's rank, summed over the same (B, N) layout of ranks as a full ``argsort`` gives. The
    labels above a threshold are a prefix of the ranking, so each row's predicted positives at
    every threshold are one binary search of the sorted probabilities (each threshold taken as the
    float32 that ``probs > t`` compares with), and its true positives the hits counted up to there:
    the same integers as one comparison per threshold, so the same F1 bit for bit."""
    logits, actual = logits.float(), actual.bool()
    order, hits = _ranked(logits, actual)
    ranks = torch.arange(1, hits.shape[1] + 1, device=hits.device, dtype=torch.float32)
    found = hits.float()
    precision_at_hit = found.cumsum(dim=1) / ranks * found
    positives = found.sum(dim=1)
    ap = torch.where(positives > 0, precision_at_hit.sum(dim=1) / positives.clamp_min(1), torch.nan)
    if not thresholds:
        return ap, torch.zeros((logits.shape[0], 0), device=logits.device)
    rows = logits.shape[0]
    probs = torch.sigmoid(logits.gather(1, order))  # non-increasing along a row, NaN first
    nan = probs.isnan()
    unordered = nan.sum(dim=1, keepdim=True)
    falling = probs.masked_fill(nan, math.inf).neg_()  # non-decreasing
    edges = torch.tensor(thresholds, dtype=torch.float32, device=logits.device).neg_().expand(rows, -1)
    above = torch.searchsorted(falling, edges.contiguous())  # elements with -p < -t, NaN counted
    counted = torch.nn.functional.pad(hits.long().cumsum(dim=1), (1, 0))  # hits among the first k
    n_pred = (above - unordered).float()
    tp = (counted.gather(1, above) - counted.gather(1, unordered)).float()
    n_true = positives.unsqueeze(1)
    both_empty = (n_pred == 0) & (n_true == 0)
    return ap, _ratio(2 * tp, n_pred + n_true, both_empty)


def _ranked(logits: torch.Tensor, actual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) the label index ranked k-th by descending logit, and whether it is positive, as
    ``argsort(descending=True)`` ranks them.

    Sorts unique integer keys (:func:`_descending_keys`: no ties to break). The order of tied
    logits changes nothing unless a positive and a negative of a row tie; those rows are ranked
    again by ``argsort(descending=True)`` itself, so their hits are its hits."""
    keys, shift = _sorted_keys(logits)
    order = keys & ((1 << shift) - 1)
    hits = actual.gather(1, order)
    value = keys >> shift
    mixed_ties = ((value[:, 1:] == value[:, :-1]) & (hits[:, 1:] != hits[:, :-1])).any(dim=1)
    if bool(mixed_ties.any()):
        rows = mixed_ties.nonzero().squeeze(1)
        order[rows] = logits[rows].argsort(dim=1, descending=True)
        hits[rows] = actual[rows].gather(1, order[rows])
    return order, hits


#: Float32 bits -> signed integers of the same order: flip the magnitude bits of negative floats.
_MAGNITUDE = 0x7FFFFFFF


def _sorted_keys(logits: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Each row's keys (:func:`_descending_keys`) sorted ascending, and the index bits; numpy's
    vectorised sort on the host (several times torch's), torch's on other devices."""
    if logits.device.type != "cpu":
        keys, shift = _descending_keys(logits)
        return keys.sort(dim=1).values, shift
    values = logits.detach().numpy() + np.float32(0.0)  # -0.0 + 0.0 is 0.0: the two zeros tie
    values[np.isnan(values)] = np.nan  # one NaN, whatever its sign and payload
    bits = values.view(np.int32)
    shift = _index_bits(values.shape[1])
    host = np.int64(_MAGNITUDE) - (bits ^ ((bits >> 31) & _MAGNITUDE))
    host <<= shift
    host |= np.arange(values.shape[1], dtype=np.int64)
    host.sort(axis=1)
    return torch.from_numpy(host), shift


def _descending_keys(logits: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per element an int64 key whose ascending order is the logits' descending order, ties in
    index order (the index in the low ``shift`` bits), so every key of a row differs. NaN (any
    sign) ranks first, as in ``argsort(descending=True)``; -0.0 ties with 0.0."""
    values = torch.where(logits.isnan(), torch.nan, logits + 0.0)
    bits = values.view(torch.int32)
    shift = _index_bits(values.shape[1])
    keys = _MAGNITUDE - (bits ^ ((bits >> 31) & _MAGNITUDE)).long()  # in [0, 2**32)
    return (keys << shift) | torch.arange(values.shape[1], device=logits.device), shift


def _index_bits(width: int) -> int:
    return max(1, (width - 1).bit_length())


def all_positive_f1(targets: torch.Tensor) -> torch.Tensor:
    """Per row F1 of predicting every label positive."""
    actual = targets.float() > 0.5
    return f1_precision_recall(torch.ones_like(actual), actual)[0]


def top1_hits(policy_logits: torch.Tensor, policy_target: torch.Tensor) -> torch.Tensor:
    """Per row: 1 when the predicted move is a most played one (ties count), else 0."""
    return _hits(policy_logits.float().argmax(dim=1), policy_target)


def top_move_hits(move: int, policy_target: torch.Tensor) -> torch.Tensor:
    """Per row: 1 when always predicting ``move`` hits a most played move (the top-1 baseline)."""
    return _hits(torch.full((policy_target.shape[0],), move, dtype=torch.long, device=policy_target.device),
                 policy_target)


def _hits(predicted: torch.Tensor, policy_target: torch.Tensor) -> torch.Tensor:
    target = policy_target.float()
    best = target.max(dim=1).values
    return ((target.gather(1, predicted.unsqueeze(1)).squeeze(1) >= best) & (best > 0)).float()


def constant_bce(targets: torch.Tensor, constant: float) -> torch.Tensor:
    """Per row BCE of always predicting ``constant`` (clamped away from 0 and 1)."""
    c = min(max(constant, 1e-6), 1 - 1e-6) if math.isfinite(constant) else float("nan")
    t = targets.float()
    return -(t * math.log(c) + (1 - t) * math.log1p(-c)) if math.isfinite(c) else torch.full_like(t, c)


def skill(bce: float, reference_bce: float) -> float:
    """1 - mean BCE / mean BCE of a reference predictor (0 when the reference is already perfect)."""
    return 1.0 - bce / reference_bce if reference_bce > 1e-12 else 0.0


class RowMeans:
    """Running means over rows of per-row quantities (each ``(B,)`` or ``(B, k)``), in float64.

    An evaluation adds each batch's :meth:`Task.row_stats` and keeps nothing per row: its memory
    does not grow with the validation split, and no per-batch tensor outlives its batch (kept
    per-row tensors between the batches' large temporaries fragmented the host heap by gigabytes).
    A NaN row makes its key's mean NaN, as a plain mean would."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.rows = 0

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        rows = None
        for key, value in stats.items():
            total = value.detach().sum(dim=0, dtype=torch.float64)
            if key in self.sums:
                self.sums[key] += total
            else:
                self.sums[key] = total
            rows = value.shape[0]
        self.rows += rows or 0

    def means(self) -> dict[str, torch.Tensor]:
        """Each key's mean over the rows added (on the host; NaN for no rows)."""
        return {key: (total / self.rows if self.rows else total * math.nan).cpu() for key, total in self.sums.items()}


class Task(Protocol):
    """What evaluation needs of a stage's task (:mod:`maou.trainer.tasks`): per-row statistics of a
    batch, and the stage's metrics from their means over the whole set."""

    def row_stats(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                  reference: Reference) -> dict[str, torch.Tensor]: ...

    def summarize(self, means: dict[str, torch.Tensor]) -> dict[str, float]: ...


# ---- batches -> metrics -------------------------------------------------------------------------

def compute_metrics(task: Task, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                    reference: Reference = Reference()) -> dict[str, float]:
    """All ``val_*`` metrics (but ``val_loss``) of whole-set outputs and targets."""
    means = RowMeans()
    means.add(task.row_stats(outputs, targets, reference))
    return task.summarize(means.means())


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: Task, loss_fn: torch.nn.Module, split, reference: Reference,
             batch_size: int, amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """``val_loss`` and the stage's ``val_*`` metrics of ``model`` on ``split``, in eval mode
    (autocast to ``amp_dtype`` when given); every module's train/eval mode is restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        n = len(split)
        loss_sum = torch.zeros((), device=split.device)
        means = RowMeans()
        for board, hand, targets in split.iter_batches(batch_size):
            with torch.autocast(split.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = model(board, hand)
            loss_sum += loss_fn(outputs, targets).float() * board.shape[0]
            means.add(task.row_stats(outputs, targets, reference))
        metrics = {"val_loss": float(loss_sum) / max(n, 1)}
        metrics.update(task.summarize(means.means()))
        return metrics
    finally:
        for module, training in modes:
            module.training = training
