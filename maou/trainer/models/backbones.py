"""Backbones: (board ids, hand counts) -> one feature vector of size ``out_dim`` per position.

Both architectures embed the 29 piece ids (``nn.Embedding``), add a projection of the normalised
hand counts to every square, and end by reducing each square to a few channels and flattening,
so the heads see where things are (reachable squares and move labels are positional).
"""

from __future__ import annotations

import torch
from torch import nn

from maou.shogi.shapes import BOARD_SHAPE, PIECE_IDS_NUM, PIECES_IN_HAND_NUM, SQUARES_NUM

SQUARES = SQUARES_NUM
#: Most pieces of each kind one side can hold (pawn, lance, knight, silver, gold, bishop, rook),
#: for the mover then the opponent: hand counts are divided by these.
HAND_MAX_COUNTS = (18, 4, 4, 4, 4, 2, 2) * 2
assert len(HAND_MAX_COUNTS) == PIECES_IN_HAND_NUM


def feature_channels(channels: int) -> int:
    """Channels per square kept before flattening: the feature size is ``SQUARES * this``."""
    return max(4, channels // 4)


class InputEmbedding(nn.Module):
    """Board ids -> (N, 81, C) square embeddings, plus the projected hand on every square."""

    hand_scale: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pieces = nn.Embedding(PIECE_IDS_NUM, channels)
        self.hand = nn.Linear(PIECES_IN_HAND_NUM, channels)
        self.register_buffer("hand_scale", 1.0 / torch.tensor(HAND_MAX_COUNTS, dtype=torch.float32),
                             persistent=False)

    def forward(self, board: torch.Tensor, hand: torch.Tensor) -> torch.Tensor:
        squares = self.pieces(board.reshape(board.shape[0], SQUARES).long())
        return squares + self.hand(hand.float() * self.hand_scale).unsqueeze(1)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class ResNetBackbone(nn.Module):
    """Residual CNN over the 9x9 board: stem conv, ``blocks`` residual blocks, 1x1 reduce, flatten."""

    def __init__(self, blocks: int, channels: int) -> None:
        super().__init__()
        self.embed = InputEmbedding(channels)
        self.stem = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU())
        self.blocks = nn.Sequential(*(ResidualBlock(channels) for _ in range(blocks)))
        k = feature_channels(channels)
        self.reduce = nn.Sequential(nn.Conv2d(channels, k, 1, bias=False), nn.BatchNorm2d(k), nn.ReLU())
        self.out_dim = SQUARES * k

    def forward(self, board: torch.Tensor, hand: torch.Tensor) -> torch.Tensor:
        x = self.embed(board, hand)                                       # (N, 81, C)
        x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *BOARD_SHAPE)  # (N, C, 9, 9)
        x = self.reduce(self.blocks(self.stem(x)))
        return x.flatten(1)


class MixerBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.token_norm = nn.LayerNorm(channels)
        self.token_mlp = nn.Sequential(nn.Linear(SQUARES, 2 * SQUARES), nn.GELU(), nn.Linear(2 * SQUARES, SQUARES))
        self.channel_norm = nn.LayerNorm(channels)
        self.channel_mlp = nn.Sequential(nn.Linear(channels, 4 * channels), nn.GELU(),
                                         nn.Linear(4 * channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:                  # (N, 81, C)
        x = x + self.token_mlp(self.token_norm(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.channel_norm(x))


class MLPMixerBackbone(nn.Module):
    """A small MLP-Mixer over the 81 square tokens (learned position embedding)."""

    def __init__(self, blocks: int, channels: int) -> None:
        super().__init__()
        self.embed = InputEmbedding(channels)
        self.position = nn.Parameter(torch.zeros(1, SQUARES, channels))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.Sequential(*(MixerBlock(channels) for _ in range(blocks)))
        k = feature_channels(channels)
        self.reduce = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, k), nn.GELU())
        self.out_dim = SQUARES * k

    def forward(self, board: torch.Tensor, hand: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.embed(board, hand) + self.position)
        return self.reduce(x).flatten(1)


BACKBONES: dict[str, type[ResNetBackbone] | type[MLPMixerBackbone]] = {
    "resnet": ResNetBackbone, "mlp_mixer": MLPMixerBackbone}


def build_backbone(arch: str, blocks: int, channels: int) -> ResNetBackbone | MLPMixerBackbone:
    if arch not in BACKBONES:
        raise ValueError(f"unknown model.arch {arch!r} (known: {', '.join(BACKBONES)})")
    return BACKBONES[arch](blocks, channels)
