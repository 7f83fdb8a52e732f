"""Stage heads on the backbone's feature vector (size D). Output keys equal the target keys of
:mod:`maou.data.tensors`; every output is a logit (value included: sigmoid gives the win rate)."""

from __future__ import annotations

from torch import nn

from maou.shogi.shapes import MOVE_LABELS_NUM, REACHABLE_SQUARES_NUM


def legal_moves_head(features: int, hidden_dim: int | None, dropout: float) -> nn.Module:
    """Linear(D, 1496), or Linear(D, H) -> GELU -> Dropout(p) -> Linear(H, 1496) when ``hidden_dim``."""
    if hidden_dim is None:
        return nn.Linear(features, MOVE_LABELS_NUM)
    return nn.Sequential(nn.Linear(features, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden_dim, MOVE_LABELS_NUM))


def build_heads(stage: int, features: int, hidden_dim: int | None = None, dropout: float = 0.0) -> nn.ModuleDict:
    if stage == 1:
        return nn.ModuleDict({"reachable": nn.Linear(features, REACHABLE_SQUARES_NUM)})
    if stage == 2:
        return nn.ModuleDict({"legal_moves": legal_moves_head(features, hidden_dim, dropout)})
    if stage == 3:
        return nn.ModuleDict({"policy": nn.Linear(features, MOVE_LABELS_NUM), "value": nn.Linear(features, 1)})
    raise ValueError(f"stage must be 1, 2 or 3, got {stage!r}")
