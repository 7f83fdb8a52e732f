"""Metric functions on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch
from sweep_helpers import bench_module
from torch import nn

from maou.stages import STAGES, stage
from maou.trainer.config import LossConfig, ModelConfig
from maou.trainer.metrics import (
    F1_THRESHOLDS,
    Reference,
    element_accuracy,
    evaluate,
    f1_precision_recall,
    sample_f1,
    skill,
)
from maou.trainer.metrics import (
    compute_metrics as _compute_metrics,
)
from maou.trainer.split import Split
from maou.trainer.tasks import task_class

torch.set_num_threads(1)
BIG = 20.0


def task(stage_number: int):
    return task_class(stage_number)(ModelConfig(), LossConfig())


def compute_metrics(stage_number, outputs, targets, reference=Reference()):
    return _compute_metrics(task(stage_number), outputs, targets, reference)


def test_selection_metrics_contract():
    assert {n: (s.selection_metric, s.selection_direction) for n, s in STAGES.items()} == {
        1: ("val_accuracy", "maximize"), 2: ("val_f1", "maximize"), 3: ("val_value_bce", "minimize")}
    for info in STAGES.values():
        assert info.selection_metric in info.metrics


@pytest.mark.parametrize("stage_number", sorted(STAGES))
def test_every_task_reports_exactly_its_registered_metrics(stage_number):
    """The registry's metric names are the contract collapse rules and objectives rely on: a
    metric renamed in a task (or in the registry alone) fails here."""
    n, info = 6, stage(stage_number)
    g = torch.Generator().manual_seed(0)
    outputs, targets = {}, {}
    for target in info.targets:
        shape = (n, target.width) if target.width else (n,)
        outputs[target.name] = torch.randn(shape, generator=g)
        targets[target.name] = (torch.rand(shape, generator=g) < 0.3).to(torch.uint8 if target.dtype == "uint8"
                                                                          else torch.float32)
    reference = task(stage_number).reference([targets])
    assert {"val_loss", *compute_metrics(stage_number, outputs, targets, reference)} == set(info.metrics)


def test_element_accuracy():
    logits = torch.tensor([[BIG, -BIG, -BIG, -BIG], [-BIG, -BIG, -BIG, -BIG]])
    targets = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0]], dtype=torch.uint8)
    assert element_accuracy(logits, targets).tolist() == [0.75, 1.0]
    assert compute_metrics(1, {"reachable": logits}, {"reachable": targets}) == {"val_accuracy": 0.875}


def test_f1_precision_recall_per_sample():
    predicted = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    actual = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    f1, precision, recall = f1_precision_recall(predicted, actual)
    assert f1.tolist() == [0.5, 1.0, 0.0, 0.0]          # both empty = 1
    assert precision.tolist() == [0.5, 1.0, 0.0, 0.0]
    assert recall.tolist() == [0.5, 1.0, 0.0, 0.0]


def test_stage2_metrics_and_trivial_predictors():
    actual = torch.tensor([[1, 1, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.uint8)
    all_negative = torch.full((2, 8), -BIG)
    m = compute_metrics(2, {"legal_moves": all_negative}, {"legal_moves": actual})
    assert m["val_f1"] == 0.0 and m["val_pred_pos_rate"] == 0.0 and m["val_recall"] == 0.0
    assert m["val_label_pos_rate"] == pytest.approx(3 / 16)
    # all-positive F1 per row: 2*2/(8+2) and 2*1/(8+1)
    assert m["val_f1_all_positive"] == pytest.approx((0.4 + 2 / 9) / 2)
    perfect = compute_metrics(2, {"legal_moves": (actual.float() * 2 - 1) * BIG}, {"legal_moves": actual})
    assert perfect["val_f1"] == perfect["val_precision"] == perfect["val_recall"] == 1.0
    assert sample_f1(torch.full((1, 8), -BIG), torch.zeros(1, 8)).tolist() == [1.0]


def test_stage3_metrics_by_hand():
    policy_target = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 2.0], [0.0, 0.0, 5.0]])   # raw counts; row 2 ties
    policy_logits = torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [5.0, 0.0, 0.0]])
    value_target = torch.tensor([1.0, 0.0, 0.75])
    value_logits = torch.tensor([2.0, -1.0, -0.5])
    m = compute_metrics(3, {"policy": policy_logits, "value": value_logits},
                        {"policy": policy_target, "value": value_target}, Reference(value_mean=0.5, top_move=2))
    assert m["val_policy_top1"] == pytest.approx(2 / 3)          # a tie with the most played move counts
    assert m["val_policy_top1_baseline"] == pytest.approx(2 / 3)  # label 2 is top in rows 2 and 3
    p = torch.sigmoid(value_logits)
    assert m["val_value_brier"] == pytest.approx(float(((p - value_target) ** 2).mean()))
    assert m["val_value_accuracy"] == pytest.approx(2 / 3)        # row 3: 0.38 vs 0.75
    assert m["val_value_mean"] == pytest.approx(float(p.mean()))
    assert m["val_value_std"] == pytest.approx(float(p.std(unbiased=False)))
    assert m["val_value_label_std"] == pytest.approx(float(value_target.std(unbiased=False)))
    t = policy_target / policy_target.sum(1, keepdim=True)
    log_q = torch.log_softmax(policy_logits, 1)
    assert m["val_policy_ce"] == pytest.approx(float(-(t * log_q).sum(1).mean()), rel=1e-5)
    assert m["val_policy_entropy"] == pytest.approx(float(-(log_q.exp() * log_q).sum(1).mean()), rel=1e-5)
    uniform = compute_metrics(3, {"policy": torch.zeros(3, 3), "value": value_logits},
                              {"policy": policy_target, "value": value_target})
    assert uniform["val_policy_entropy"] == pytest.approx(math.log(3))


def test_value_skill_of_the_constant_mean_predictor_is_zero():
    g = torch.Generator().manual_seed(0)
    value_target = (torch.rand(200, generator=g) < 0.5).float()
    train_mean = 0.54
    constant = torch.full((200,), math.log(train_mean / (1 - train_mean)))   # logit of the train mean
    outputs = {"policy": torch.zeros(200, 4), "value": constant}
    targets = {"policy": torch.ones(200, 4), "value": value_target}
    m = compute_metrics(3, outputs, targets, Reference(value_mean=train_mean))
    assert m["val_value_skill"] == pytest.approx(0.0, abs=1e-5)
    assert m["val_value_std"] == pytest.approx(0.0, abs=1e-6)                  # the report's collapse signature
    good = compute_metrics(3, {**outputs, "value": (value_target * 2 - 1) * 3}, targets,
                           Reference(value_mean=train_mean))
    assert good["val_value_skill"] > 0.5 and good["val_value_accuracy"] == 1.0
    assert skill(1.0, 0.0) == 0.0


def test_reference_of_training_split():
    policy = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.6, 0.4], [1.0, 0.0, 0.0]])
    value = torch.tensor([1.0, 0.0, 0.5])
    ref = task(3).reference([{"policy": policy, "value": value}])
    assert ref == Reference(value_mean=0.5, top_move=1)
    # the training split comes in chunks of rows: the same reference, however it is cut
    chunks = [{"policy": policy[:1], "value": value[:1]}, {"policy": policy[1:], "value": value[1:]}]
    assert task(3).reference(chunks) == ref
    assert task(3).reference([{"policy": policy[2:], "value": value[2:]}]) == Reference(value_mean=0.5, top_move=0)
    assert task(1).reference([{"reachable": torch.zeros(2, 3)}]) == Reference()


class _Fixed(nn.Module):
    """Stage 1 'model' with one dropout layer: outputs depend on train/eval mode."""

    stage = 1

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.bias = nn.Parameter(torch.full((4,), -BIG))

    def forward(self, board, hand):
        return {"reachable": self.drop(self.bias.expand(board.shape[0], 4))}


def test_evaluate_uses_eval_mode_and_restores_modes():
    model = _Fixed()
    model.train()
    model.drop.eval()   # a deliberately mixed state (a frozen part) must come back as it was
    targets = torch.zeros(10, 4, dtype=torch.uint8)
    targets[:, 0] = 1
    split = Split(torch.zeros(10, 9, 9, dtype=torch.uint8), torch.zeros(10, 14, dtype=torch.uint8),
                  {"reachable": targets})
    stage1 = task(1)
    m = evaluate(model, stage1, stage1.loss(), split, Reference(), batch_size=3)
    assert set(m) == set(stage(1).metrics)
    assert m["val_accuracy"] == 0.75
    assert m["val_loss"] == pytest.approx(BIG / 4, rel=1e-3)
    assert model.training and not model.drop.training


def test_stage2_threshold_free_metrics_by_hand():
    probabilities = torch.tensor([[0.92, 0.63, 0.17, 0.08], [0.72, 0.83, 0.38, 0.47]])  # off the threshold grid
    logits = torch.log(probabilities / (1 - probabilities))
    actual = [[1, 1, 0, 0], [1, 0, 1, 0]]
    m = compute_metrics(2, {"legal_moves": logits}, {"legal_moves": torch.tensor(actual, dtype=torch.uint8)})
    # row 1 ranks its positives 1st and 2nd: AP 1; row 2 ranks them 2nd and 4th: (1/2 + 2/4) / 2
    assert m["val_average_precision"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["val_f1"] == pytest.approx((1.0 + 0.5) / 2)  # at 0.5 row 2 predicts {0.72, 0.83}: one right

    def mean_f1(threshold):  # written out plainly, one row at a time
        scores = []
        for probs, labels in zip(probabilities.tolist(), actual):
            predicted = [p > threshold for p in probs]
            tp = sum(p and y for p, y in zip(predicted, labels))
            scores.append(2 * tp / (sum(predicted) + sum(labels)))
        return sum(scores) / len(scores)

    best = max(F1_THRESHOLDS, key=mean_f1)
    assert m["val_f1_best_threshold"] == pytest.approx(mean_f1(best)) and m["val_f1_best_threshold"] > m["val_f1"]
    assert m["val_best_threshold"] == best
    empty = compute_metrics(2, {"legal_moves": logits[:1]}, {"legal_moves": torch.zeros(1, 4, dtype=torch.uint8)})
    assert empty["val_average_precision"] == 0.0  # no positives anywhere: nothing to rank


class _Lookup(nn.Module):
    """Fixed outputs per row: the row's number is stored in its board's first square."""

    def __init__(self, outputs: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.outputs = outputs

    def forward(self, board, hand):
        rows = board[:, 0, 0].long()
        return {key: value[rows] for key, value in self.outputs.items()}


@pytest.mark.parametrize("stage_number", [2, 3])
def test_batched_evaluation_equals_the_whole_set_at_once(stage_number):
    """The running means over batches give the whole set's metrics, spreads included."""
    generator = torch.Generator().manual_seed(stage_number)
    rows, widths = 50, {t.name: t.width for t in stage(stage_number).targets}
    outputs = {name: torch.randn(rows, *([width] if width else []), generator=generator) * 2
               for name, width in widths.items()}
    if stage_number == 2:
        targets = {"legal_moves": (torch.rand(rows, widths["legal_moves"], generator=generator) < 0.05).to(torch.uint8)}
        targets["legal_moves"][0] = 0  # a row without a legal move: left out of the average precision
    else:
        policy = torch.rand(rows, widths["policy"], generator=generator) * (torch.rand(rows, widths["policy"],
                                                                                       generator=generator) < 0.01)
        policy[:, 7] += 0.5
        targets = {"policy": policy, "value": torch.rand(rows, generator=generator)}
    board = torch.zeros(rows, 9, 9, dtype=torch.uint8)
    board[:, 0, 0] = torch.arange(rows, dtype=torch.uint8)
    split = Split(board, torch.zeros(rows, 14, dtype=torch.uint8), targets)
    reference = Reference(value_mean=0.4, top_move=7)
    t = task(stage_number)
    whole = compute_metrics(stage_number, outputs, targets, reference)
    batched = evaluate(_Lookup(outputs), t, t.loss(), split, reference, batch_size=7)
    assert set(batched) == {"val_loss", *whole}
    for key, value in whole.items():
        assert batched[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    if stage_number == 3:
        assert batched["val_value_std"] == pytest.approx(float(torch.sigmoid(outputs["value"]).std(unbiased=False)))
        assert batched["val_value_label_std"] == pytest.approx(float(targets["value"].std(unbiased=False)))


# ---- the ranking metrics against the implementations they replaced, exactly ---------------------

#: The implementations the ranking metrics replaced, kept in the benchmark that times them.
_previous = bench_module("metrics_speed")
_reference_f1_at_thresholds = _previous.previous_f1_at_thresholds
_reference_average_precision = _previous.previous_average_precision


def _assert_bits_equal(new: torch.Tensor, old: torch.Tensor) -> None:
    """Equal values, NaN where NaN, the same float32 bits (0.0 and -0.0 differ)."""
    assert new.dtype == old.dtype == torch.float32 and new.shape == old.shape
    assert torch.equal(new.view(torch.int32), old.view(torch.int32)) or torch.equal(
        torch.where(new.isnan(), 0, new.view(torch.int32)), torch.where(old.isnan(), 0, old.view(torch.int32)))


def _ranking_cases():
    g = torch.Generator().manual_seed(11)
    nan, inf = math.nan, math.inf
    logit_at = torch.logit(torch.tensor(F1_THRESHOLDS, dtype=torch.float64)).float()  # probabilities on the grid
    cases = {}
    for rows, width, density in ((64, 1496, 0.075), (300, 97, 0.3), (5, 17, 0.5), (1, 1, 0.5), (40, 3, 0.9)):
        logits = torch.randn(rows, width, generator=g) * 3 - 1
        cases[f"random {rows}x{width}"] = (logits, torch.rand(rows, width, generator=g) < density)
    # ties: few distinct logits, positives and negatives sharing them (the argsort rows), and ties of
    # one kind only
    coarse = torch.randint(-3, 4, (50, 200), generator=g).float()
    cases["ties"] = (coarse, torch.rand(50, 200, generator=g) < 0.3)
    cases["ties among positives only"] = (torch.where(coarse > 0, 2.0, torch.randn(50, 200, generator=g)), coarse > 0)
    cases["all tied"] = (torch.zeros(4, 30), torch.rand(4, 30, generator=g) < 0.5)
    # probabilities exactly on and next to the thresholds, saturated sigmoids
    on_grid = logit_at.repeat(6, 2)
    on_grid[1] = torch.nextafter(on_grid[1], torch.tensor(inf))
    on_grid[2] = torch.nextafter(on_grid[2], torch.tensor(-inf))
    on_grid[3] = torch.linspace(-40, 40, on_grid.shape[1])
    on_grid[4, ::2] = 1e-9
    cases["on the thresholds"] = (on_grid, torch.rand(*on_grid.shape, generator=g) < 0.5)
    # rows without positives, all positive, empty predictions, non-finite logits, signed zeros
    special = torch.randn(8, 40, generator=g)
    special[0, 3], special[0, 9], special[1, :5] = nan, -nan, nan
    special[2, 0], special[2, 1], special[3, :] = inf, -inf, -BIG
    special[4, ::2], special[4, 1::2] = 0.0, -0.0
    special[5, :] = nan
    actual = torch.rand(8, 40, generator=g) < 0.4
    actual[6] = False  # all negative
    actual[7] = True   # all positive
    actual[0, 3] = actual[1, 0] = actual[4, 0] = True
    actual[0, 9] = actual[1, 1] = actual[4, 1] = False
    cases["special values"] = (special, actual)
    cases["no rows"] = (torch.zeros(0, 1496), torch.zeros(0, 1496, dtype=torch.bool))
    cases["no labels"] = (torch.zeros(3, 0), torch.zeros(3, 0, dtype=torch.bool))
    cases["bfloat16 logits"] = (torch.randn(30, 200, generator=g).bfloat16(), torch.rand(30, 200, generator=g) < 0.2)
    return cases


@pytest.mark.parametrize("case", sorted(_ranking_cases()))
def test_ranking_metrics_equal_the_previous_implementations_bit_for_bit(case):
    from maou.trainer.metrics import average_precision, f1_at_thresholds, ranking_metrics

    logits, actual = _ranking_cases()[case]
    ap, by_threshold = ranking_metrics(logits, actual)
    _assert_bits_equal(ap, _reference_average_precision(logits, actual))
    _assert_bits_equal(by_threshold, _reference_f1_at_thresholds(logits, actual))
    _assert_bits_equal(average_precision(logits, actual), ap)
    _assert_bits_equal(f1_at_thresholds(logits, actual), by_threshold)
    uneven = (0.9, 0.1, 0.5, 0.5, 0.0, 1.0, 0.33)  # any thresholds, in any order, repeated
    _assert_bits_equal(f1_at_thresholds(logits, actual, uneven), _reference_f1_at_thresholds(logits, actual, uneven))


def test_the_device_keys_sort_as_the_host_keys():
    """Off the host the ranking sorts with torch (:func:`_descending_keys`): the same keys, run here."""
    from maou.trainer.metrics import _descending_keys, _sorted_keys

    for logits, _ in _ranking_cases().values():
        if logits.dtype != torch.float32:
            continue
        keys, shift = _descending_keys(logits)
        host, host_shift = _sorted_keys(logits)
        assert shift == host_shift and torch.equal(keys.sort(dim=1).values, host)


def test_stage2_row_stats_equal_the_previous_metrics():
    """The task's per-row statistics, from one ranking, equal those of the separate functions."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(200, 1496, generator=g) * 2 - 2
    logits[:20] = logits[:20].round()  # ties
    targets = (torch.rand(200, 1496, generator=g) < 0.075).to(torch.uint8)
    targets[3] = 0
    stats = task(2).row_stats({"legal_moves": logits}, {"legal_moves": targets}, Reference())
    actual = targets > 0
    old_ap = _reference_average_precision(logits, actual)
    _assert_bits_equal(stats["average_precision"], torch.where(old_ap.isnan(), 0.0, old_ap))
    _assert_bits_equal(stats["rows_with_moves"], (~old_ap.isnan()).float())
    _assert_bits_equal(stats["f1_at_thresholds"], _reference_f1_at_thresholds(logits, actual))
