"""Model shapes, heads per stage, both architectures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maou.shogi.shapes import BOARD_SHAPE, MOVE_LABELS_NUM, PIECE_IDS_NUM, PIECES_IN_HAND_NUM, REACHABLE_SQUARES_NUM
from maou.trainer.config import TrainConfig, train_config_from_dict
from maou.trainer.models import StageModel, build_model

torch.set_num_threads(1)


def batch(n: int = 5):
    g = torch.Generator().manual_seed(0)
    board = torch.randint(0, PIECE_IDS_NUM, (n, *BOARD_SHAPE), generator=g).to(torch.uint8)
    hand = torch.randint(0, 3, (n, PIECES_IN_HAND_NUM), generator=g).to(torch.uint8)
    return board, hand


def config(stage: int, **model) -> TrainConfig:
    return train_config_from_dict({"stage": stage, "model": {"blocks": 1, "channels": 8, **model}})


@pytest.mark.parametrize("arch", ["resnet", "mlp_mixer"])
def test_outputs_per_stage(arch):
    board, hand = batch()
    expected = {1: {"reachable": (5, REACHABLE_SQUARES_NUM)}, 2: {"legal_moves": (5, MOVE_LABELS_NUM)},
                3: {"policy": (5, MOVE_LABELS_NUM), "value": (5,)}}
    for stage, shapes in expected.items():
        model = build_model(config(stage, arch=arch))
        assert isinstance(model, StageModel) and model.stage == stage
        out = model(board, hand)
        assert {k: tuple(v.shape) for k, v in out.items()} == shapes
        assert all(torch.isfinite(v).all() for v in out.values())
        # uint8 and long inputs give the same outputs
        model.eval()
        key = next(iter(shapes))
        assert torch.equal(model(board, hand)[key], model(board.long(), hand.float())[key])


def test_backbone_is_shared_and_heads_are_per_stage():
    m1, m2 = build_model(config(1)), build_model(config(2))
    assert m1.backbone.state_dict().keys() == m2.backbone.state_dict().keys()
    assert set(m1.heads) == {"reachable"} and set(m2.heads) == {"legal_moves"}


def test_stage2_hidden_head():
    model = build_model(config(2, hidden_dim=24, dropout=0.1))
    head = model.heads["legal_moves"]
    assert isinstance(head, nn.Sequential)
    layers = list(head)
    assert isinstance(layers[0], nn.Linear) and layers[0].out_features == 24
    assert isinstance(layers[1], nn.GELU) and isinstance(layers[2], nn.Dropout) and layers[2].p == 0.1
    assert layers[3].out_features == MOVE_LABELS_NUM
    assert isinstance(build_model(config(2)).heads["legal_moves"], nn.Linear)


def test_blocks_and_channels_change_the_model():
    small = sum(p.numel() for p in build_model(config(1, blocks=1, channels=8)).parameters())
    deeper = sum(p.numel() for p in build_model(config(1, blocks=3, channels=8)).parameters())
    wider = sum(p.numel() for p in build_model(config(1, blocks=1, channels=16)).parameters())
    assert small < deeper and small < wider


def test_position_matters():
    """The feature vector keeps square positions (flattened), so moving a piece changes outputs."""
    model = build_model(config(1)).eval()
    board = torch.zeros(2, *BOARD_SHAPE, dtype=torch.uint8)
    board[0, 4, 4] = 1
    board[1, 6, 2] = 1
    hand = torch.zeros(2, PIECES_IN_HAND_NUM, dtype=torch.uint8)
    out = model(board, hand)["reachable"]
    assert not torch.allclose(out[0], out[1])
