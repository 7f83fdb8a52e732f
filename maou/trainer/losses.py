"""The stage losses (docs/design.md, section 4). Every loss is computed in float32, even under autocast.

Each ``*Loss`` module takes logits and float targets; a stage's task (:mod:`maou.trainer.tasks`)
applies its loss to the dicts of model outputs and split targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _fp32(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t.float() for t in tensors)


def _no_autocast(tensor: torch.Tensor) -> torch.autocast:
    """Autocast off for ``tensor``'s device: the loss runs in float32."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


class WeightedBCEWithLogits(nn.Module):
    """``BCEWithLogits(pos_weight)``, mean over all elements."""

    pos_weight: torch.Tensor

    def __init__(self, pos_weight: float = 1.0) -> None:
        super().__init__()
        self.pos_weight_value = float(pos_weight)
        self.register_buffer("pos_weight", torch.tensor(self.pos_weight_value), persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with _no_autocast(logits):
            logits, targets = _fp32(logits, targets)
            pos_weight = self.pos_weight if self.pos_weight_value != 1.0 else None
            return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)


class ReachableSquaresLoss(WeightedBCEWithLogits):
    """Stage 1: BCEWithLogits(pos_weight) over the 81 squares."""


class AsymmetricLoss(nn.Module):
    """Asymmetric loss (Ridnik et al., ICCV 2021); z = logit, p = sigmoid(z), m = ``clip``.

    positive term ``y * (1 - p)**gamma_pos * log(p)``;
    negative term ``(1 - y) * (1 - q)**gamma_neg * log(q)`` with ``q = min(1, sigmoid(-z) + m)``
    when m > 0 (negatives with p <= m give exactly 0), else ``q = sigmoid(-z)``;
    loss = -mean over all elements. Logs and powers are taken in log space (``logsigmoid``), so
    logits of +-100 stay finite in value and gradient. All three parameters at 0 is
    ``BCEWithLogits`` exactly (it is computed by it).
    """

    def __init__(self, gamma_pos: float = 0.0, gamma_neg: float = 0.0, clip: float = 0.0) -> None:
        super().__init__()
        self.gamma_pos, self.gamma_neg, self.clip = float(gamma_pos), float(gamma_neg), float(clip)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with _no_autocast(logits):
            z, y = _fp32(logits, targets)
            if self.gamma_pos == 0 and self.gamma_neg == 0 and self.clip == 0:
                return F.binary_cross_entropy_with_logits(z, y)
            log_p, log_not_p = F.logsigmoid(z), F.logsigmoid(-z)            # log p, log(1 - p)
            positive = y * torch.exp(self.gamma_pos * log_not_p) * log_p
            if self.clip > 0:
                q = torch.sigmoid(-z) + self.clip
                easy = q >= 1.0                                              # p <= m: exactly 0
                q_safe = torch.where(easy, torch.full_like(q, 0.5), q)      # keeps gradients finite
                negative = torch.where(easy, torch.zeros_like(q),
                                       (1.0 - q_safe).pow(self.gamma_neg) * torch.log(q_safe))
            else:
                negative = torch.exp(self.gamma_neg * log_p) * log_not_p    # (1 - q) = p
            return -(positive + (1.0 - y) * negative).mean()


class LegalMovesLoss(nn.Module):
    """Stage 2: ASL when any of gamma_pos, gamma_neg, clip > 0, else BCEWithLogits(pos_weight)."""

    def __init__(self, pos_weight: float = 1.0, gamma_pos: float = 0.0, gamma_neg: float = 0.0,
                 clip: float = 0.0) -> None:
        super().__init__()
        self.uses_asl = gamma_pos > 0 or gamma_neg > 0 or clip > 0
        self.loss = AsymmetricLoss(gamma_pos, gamma_neg, clip) if self.uses_asl else WeightedBCEWithLogits(pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, targets)


def policy_kl(policy_logits: torch.Tensor, policy_target: torch.Tensor) -> torch.Tensor:
    """KLDiv(batchmean) of log_softmax(policy) against the target normalised to sum 1."""
    with _no_autocast(policy_logits):
        logits, target = _fp32(policy_logits, policy_target)
        target = target / target.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        return F.kl_div(F.log_softmax(logits, dim=-1), target, reduction="batchmean")


def value_loss(value_logits: torch.Tensor, value_target: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """``bce``: BCEWithLogits on the logit; ``mse``: MSE of sigmoid(logit), the report's failing setup."""
    with _no_autocast(value_logits):
        logits, target = _fp32(value_logits, value_target)
        if kind == "bce":
            return F.binary_cross_entropy_with_logits(logits, target)
        if kind == "mse":
            return F.mse_loss(torch.sigmoid(logits), target)
        raise ValueError(f"value loss must be bce or mse, got {kind!r}")


class PolicyValueLoss(nn.Module):
    """Stage 3: ``policy_loss_ratio * KL(policy) + value_loss_ratio * value loss``."""

    def __init__(self, policy_loss_ratio: float = 1.0, value_loss_ratio: float = 1.0,
                 value_loss: str = "bce") -> None:
        super().__init__()
        self.policy_loss_ratio, self.value_loss_ratio, self.value_loss = policy_loss_ratio, value_loss_ratio, value_loss

    def forward(self, policy_logits: torch.Tensor, value_logits: torch.Tensor,
                policy_target: torch.Tensor, value_target: torch.Tensor) -> torch.Tensor:
        return (self.policy_loss_ratio * policy_kl(policy_logits, policy_target)
                + self.value_loss_ratio * value_loss(value_logits, value_target, self.value_loss))
