"""The staged model: one shared backbone (``model.arch``) and fresh per-stage heads."""

from __future__ import annotations

import torch
from torch import nn

from maou.trainer.models.backbones import build_backbone
from maou.trainer.tasks import task_for


class StageModel(nn.Module):
    """``forward(board, hand)`` -> dict of logits keyed like the stage's targets
    (``reachable``; ``legal_moves``; ``policy`` and ``value`` with value of shape (N,))."""

    def __init__(self, stage: int, backbone: nn.Module, heads: nn.ModuleDict) -> None:
        super().__init__()
        self.stage = stage
        self.backbone = backbone
        self.heads = heads

    def forward(self, board: torch.Tensor, hand: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(board, hand)
        outputs = {name: head(features) for name, head in self.heads.items()}
        if "value" in outputs:
            outputs["value"] = outputs["value"].squeeze(-1)
        return outputs


def build_model(config) -> StageModel:
    """The model of a :class:`maou.trainer.config.TrainConfig`: its backbone and its stage's heads."""
    m = config.model
    backbone = build_backbone(m.arch, m.blocks, m.channels)
    return StageModel(config.stage, backbone, task_for(config).heads(backbone.out_dim))


__all__ = ["StageModel", "build_model"]
