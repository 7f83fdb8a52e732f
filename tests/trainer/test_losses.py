"""Losses against their formulas, written out independently here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from maou.trainer.config import LossConfig, ModelConfig
from maou.trainer.losses import (
    AsymmetricLoss,
    LegalMovesLoss,
    PolicyValueLoss,
    ReachableSquaresLoss,
    policy_kl,
    value_loss,
)
from maou.trainer.tasks import task_class


def build_loss(stage: int, config: LossConfig) -> torch.nn.Module:
    """The stage's loss over output and target dicts, as its task builds it."""
    return task_class(stage)(ModelConfig(), config).loss()

torch.set_num_threads(1)


def asl_reference(z: torch.Tensor, y: torch.Tensor, gamma_pos: float, gamma_neg: float, clip: float) -> torch.Tensor:
    """Ridnik et al. written naively in float64 (fine away from extreme logits)."""
    z, y = z.double(), y.double()
    p = torch.sigmoid(z)
    q = torch.clamp(1 - p + clip, max=1.0) if clip > 0 else 1 - p
    positive = y * (1 - p) ** gamma_pos * torch.log(p)
    negative = (1 - y) * (1 - q) ** gamma_neg * torch.log(q)
    return -(positive + negative).mean()


@pytest.fixture
def logits_and_targets():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 40, generator=g) * 3
    y = (torch.rand(16, 40, generator=g) < 0.2).float()
    return z, y


@pytest.mark.parametrize("gamma_pos,gamma_neg,clip", [(0, 2, 0), (1, 4, 0.05), (0, 1, 0.02), (0.5, 0, 0.1),
                                                      (0, 0, 0.05), (2, 3, 0)])
def test_asl_matches_its_formula(logits_and_targets, gamma_pos, gamma_neg, clip):
    z, y = logits_and_targets
    got = AsymmetricLoss(gamma_pos, gamma_neg, clip)(z, y)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), asl_reference(z, y, gamma_pos, gamma_neg, clip), rtol=1e-5, atol=1e-6)


def test_asl_with_zero_parameters_is_bce_exactly(logits_and_targets):
    z, y = logits_and_targets
    assert torch.equal(AsymmetricLoss(0, 0, 0)(z, y), F.binary_cross_entropy_with_logits(z, y))
    # and the naive formula agrees numerically too
    assert torch.allclose(AsymmetricLoss(0, 0, 0)(z, y).double(), asl_reference(z, y, 0, 0, 0), rtol=1e-6)


def test_legal_moves_loss_switches_between_bce_and_asl(logits_and_targets):
    z, y = logits_and_targets
    plain = LegalMovesLoss(pos_weight=3.0)
    assert not plain.uses_asl
    assert torch.equal(plain(z, y), F.binary_cross_entropy_with_logits(z, y, pos_weight=torch.tensor(3.0)))
    for kwargs in ({"gamma_pos": 1.0}, {"gamma_neg": 2.0}, {"clip": 0.05}):
        assert LegalMovesLoss(**kwargs).uses_asl
    asl = LegalMovesLoss(pos_weight=3.0, gamma_neg=2.0, clip=0.05)
    assert torch.allclose(asl(z, y).double(), asl_reference(z, y, 0, 2.0, 0.05), rtol=1e-5)


@pytest.mark.parametrize("gamma_pos,gamma_neg,clip", [(0, 0, 0), (0, 4, 0), (1, 4, 0.05), (0.5, 0.5, 0.2)])
def test_asl_is_finite_at_extreme_logits(gamma_pos, gamma_neg, clip):
    z = torch.tensor([[100.0, -100.0, 100.0, -100.0, 0.0, 30.0]], requires_grad=True)
    y = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0, 0.0]])
    loss = AsymmetricLoss(gamma_pos, gamma_neg, clip)(z, y)
    loss.backward()
    assert math.isfinite(loss.item())
    assert torch.isfinite(z.grad).all()


def test_clip_zeroes_easy_negatives():
    clip = 0.05
    # negatives with p <= clip (logit <= logit(0.05) ~ -2.94) contribute exactly 0, value and gradient
    z = torch.tensor([[-3.0, -5.0, -50.0, -100.0]], requires_grad=True)
    y = torch.zeros_like(z)
    loss = AsymmetricLoss(0.0, 4.0, clip)(z, y)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(z.grad, torch.zeros_like(z))
    # a hard negative still counts
    assert AsymmetricLoss(0.0, 4.0, clip)(torch.tensor([[1.0]]), torch.tensor([[0.0]])).item() > 0


def test_losses_run_in_fp32_under_autocast(logits_and_targets):
    z, y = logits_and_targets
    z16 = z.to(torch.bfloat16)
    for loss in (AsymmetricLoss(0, 2, 0.05), AsymmetricLoss(0, 0, 0), ReachableSquaresLoss(2.0)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = loss(z16, y)
        assert inside.dtype == torch.float32
        assert torch.equal(inside, loss(z16.float(), y))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert policy_kl(z16, y + 0.01).dtype == torch.float32
        assert value_loss(z16[:, 0], y[:, 0]).dtype == torch.float32


def test_reachable_squares_loss_is_weighted_bce(logits_and_targets):
    z, y = logits_and_targets
    manual = -(2.5 * y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z)).mean()
    assert torch.allclose(ReachableSquaresLoss(2.5)(z, y), manual, rtol=1e-6)
    assert torch.equal(ReachableSquaresLoss(1.0)(z, y), F.binary_cross_entropy_with_logits(z, y))


def test_policy_value_loss():
    g = torch.Generator().manual_seed(1)
    policy = torch.randn(8, 30, generator=g)
    counts = torch.rand(8, 30, generator=g) * (torch.rand(8, 30, generator=g) < 0.3)
    counts[:, 0] += 1.0
    value_logit = torch.randn(8, generator=g)
    value = torch.rand(8, generator=g)
    target = counts / counts.sum(1, keepdim=True)
    log_q = F.log_softmax(policy, 1)
    kl = (torch.where(target > 0, target * (target.log() - log_q), torch.zeros_like(target))).sum() / 8
    bce = -(value * F.logsigmoid(value_logit) + (1 - value) * F.logsigmoid(-value_logit)).mean()
    mse = ((torch.sigmoid(value_logit) - value) ** 2).mean()
    # the target is normalised inside (raw counts in)
    assert torch.allclose(policy_kl(policy, counts), kl, rtol=1e-5)
    assert torch.allclose(PolicyValueLoss(1.0, 1.0, "bce")(policy, value_logit, counts, value), kl + bce, rtol=1e-5)
    assert torch.allclose(PolicyValueLoss(0.5, 2.0, "mse")(policy, value_logit, counts, value), 0.5 * kl + 2 * mse,
                          rtol=1e-5)


def test_build_loss_per_stage():
    z = torch.randn(4, 10)
    y = (torch.rand(4, 10) < 0.3).float()
    stage1 = build_loss(1, LossConfig(pos_weight=2.0))
    assert torch.equal(stage1({"reachable": z}, {"reachable": y.to(torch.uint8)}), ReachableSquaresLoss(2.0)(z, y))
    stage2 = build_loss(2, LossConfig(gamma_neg=2.0, asl_clip=0.05))
    assert torch.equal(stage2({"legal_moves": z}, {"legal_moves": y}), AsymmetricLoss(0, 2.0, 0.05)(z, y))
    stage3 = build_loss(3, LossConfig(value_loss="mse", value_loss_ratio=2.0))
    v, t = torch.randn(4), torch.rand(4)
    expected = policy_kl(z, y + 0.1) + 2.0 * value_loss(v, t, "mse")
    assert torch.allclose(stage3({"policy": z, "value": v}, {"policy": y + 0.1, "value": t}), expected)
