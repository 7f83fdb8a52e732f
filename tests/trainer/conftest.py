"""Trainer fixtures: tiny configs and small Stage 2/3 datasets built once per session.

The datasets come from a subset of the bundled corpus (``data/games``) through
``maou.data.build.ensure_datasets``; where the corpus or the builder is absent they are
contract-shaped synthetic feather files with a learnable rule, so the trainer tests still run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from maou.shogi.shapes import BOARD_SHAPE, MOVE_LABELS_NUM, PIECES_IN_HAND_NUM, SQUARES_NUM
from maou.trainer.config import DataConfig, TrainConfig, train_config_from_dict

REPO = Path(__file__).resolve().parents[2]
BUNDLED_GAMES = REPO / "data" / "games"
SUBSET_GAMES = 100  # the builder takes well under a second for these

torch.set_num_threads(1)


def make_tiny_config(stage: int, **overrides) -> TrainConfig:
    """A 2-block, 16-channel, single-thread CPU config; ``overrides`` replace top-level sections
    (``max_steps``, ``epochs`` and ``eval_every`` go to the budget)."""
    base: dict = {"stage": stage, "model": {"blocks": 2, "channels": 16}, "batch_size": 64,
                  "budget": {"max_steps": 200, "eval_every": 100}, "device": "cpu", "threads": 1, "seed": 0,
                  "optim": {"lr": 3e-3}}
    for key, value in overrides.items():
        if key in ("max_steps", "epochs", "eval_every"):  # the budget's keys, for short calls
            base["budget"][key] = value
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return train_config_from_dict(base)


def _game_files() -> list[Path]:
    if not BUNDLED_GAMES.is_dir():
        return []
    return sorted(p for p in BUNDLED_GAMES.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() != ".md")


def _build_from_corpus(root: Path) -> DataConfig:
    from maou.data.build import ensure_datasets

    files = _game_files()
    assert files, f"the bundled corpus {BUNDLED_GAMES} is empty: it is part of the repository"
    subset = root / "games"
    subset.mkdir()
    for i, path in enumerate(files[:SUBSET_GAMES]):
        (subset / f"{i:03d}_{path.name}").symlink_to(path)
    config = DataConfig(games=(str(subset),), dir=str(root / "build"), val_fraction=0.2, split_seed=0)
    ensure_datasets(config, progress=False)
    return config


def write_synthetic_datasets(root: Path, train_rows: int = 1200, val_rows: int = 300, seed: int = 0,
                             nested_board: bool = False) -> Path:
    """Contract-shaped ``stage2``/``stage3`` feather files with learnable targets.

    Stage 2: each own piece (ids 1-4) on file x switches on a fixed set of 8 labels of (id, x).
    Stage 3: the most played move is a function of the square of the mover's king (id 8), and the
    value is high when that king stands on ranks a-d.
    """
    import pyarrow as pa
    import pyarrow.feather as feather

    rng = np.random.default_rng(seed)
    table2 = rng.integers(0, MOVE_LABELS_NUM, size=(5, BOARD_SHAPE[1], 8))
    king_move = rng.permutation(MOVE_LABELS_NUM)[:SQUARES_NUM]

    def fixed(values: np.ndarray, width: int):
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), width)

    def board_column(boards: np.ndarray):
        if nested_board:
            rows = fixed(boards, BOARD_SHAPE[1])
            return pa.FixedSizeListArray.from_arrays(rows, BOARD_SHAPE[0])
        return fixed(boards, SQUARES_NUM)

    for split, rows in (("train", train_rows), ("val", val_rows)):
        boards = np.zeros((rows, SQUARES_NUM), dtype=np.uint8)
        for r in range(rows):
            squares = rng.permutation(SQUARES_NUM)[:12]
            boards[r, squares[:6]] = rng.integers(1, 5, size=6)          # own pawns..silvers
            boards[r, squares[6:11]] = rng.integers(15, 29, size=5)      # opponent's pieces
            boards[r, squares[11]] = 8                                   # the mover's king
        hands = rng.integers(0, 2, size=(rows, PIECES_IN_HAND_NUM)).astype(np.uint8)
        legal = np.zeros((rows, MOVE_LABELS_NUM), dtype=np.uint8)
        policy = np.zeros((rows, MOVE_LABELS_NUM), dtype=np.float32)
        value = np.zeros(rows, dtype=np.float32)
        for r in range(rows):
            grid = boards[r].reshape(BOARD_SHAPE)
            for y, x in zip(*np.nonzero((grid >= 1) & (grid <= 4))):
                legal[r, table2[grid[y, x], x]] = 1
            king = int(np.flatnonzero(boards[r] == 8)[0])
            policy[r, king_move[king]] = 0.8
            policy[r, rng.integers(0, MOVE_LABELS_NUM)] += 0.2
            value[r] = float(king // BOARD_SHAPE[1] < 4) if rng.random() > 0.1 else 0.5
        ids = pa.array(np.arange(rows, dtype=np.uint64))
        (root / "stage2").mkdir(parents=True, exist_ok=True)
        (root / "stage3").mkdir(parents=True, exist_ok=True)
        feather.write_feather(pa.table({"id": ids, "boardIdPositions": board_column(boards),
                                        "piecesInHand": fixed(hands, PIECES_IN_HAND_NUM),
                                        "legalMovesLabel": fixed(legal, MOVE_LABELS_NUM)}),
                              root / "stage2" / f"{split}.feather")
        feather.write_feather(pa.table({"id": ids, "boardIdPositions": board_column(boards),
                                        "piecesInHand": fixed(hands, PIECES_IN_HAND_NUM),
                                        "moveLabel": fixed(policy, MOVE_LABELS_NUM), "resultValue": value,
                                        "count": np.ones(rows, dtype=np.int32)}),
                              root / "stage3" / f"{split}.feather")
    return root


@pytest.fixture(scope="session")
def tiny_config():
    """``tiny_config(stage, **overrides)`` -> a tiny single-thread CPU :class:`TrainConfig`."""
    return make_tiny_config


@pytest.fixture(scope="session")
def synthetic_datasets():
    """``synthetic_datasets(root, train_rows, val_rows, nested_board=False)`` -> dataset folder."""
    return write_synthetic_datasets


@pytest.fixture(scope="session")
def corpus_data_config(tmp_path_factory) -> DataConfig:
    """The ``data`` config of datasets built from the bundled corpus subset."""
    return _build_from_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def dataset_dir(corpus_data_config) -> Path:
    """Stage 2/3 datasets built from the bundled corpus subset."""
    return Path(corpus_data_config.dir)


@pytest.fixture(scope="session")
def stage_data(dataset_dir):
    """``stage_data(stage)`` -> StageData, loaded once per stage."""
    from maou.trainer.tensors import load_stage_data

    cache: dict[int, object] = {}

    def get(stage: int):
        if stage not in cache:
            cache[stage] = load_stage_data(stage, None if stage == 1 else dataset_dir)
        return cache[stage]

    return get
