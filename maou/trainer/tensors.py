"""A stage's train and validation splits as whole in-memory tensors, batched by index.

No per-sample Python work anywhere: each split is a handful of tensors (board ids, hand counts,
targets); the trainer moves them to the device once and takes a batch with one index gather per
tensor (``split.batch(index)``), the index being a slice of a per-epoch ``torch.randperm``.
Targets keep their compact stored dtype (multi-hot targets stay uint8); losses and metrics
convert them to float32 on the device.

Target keys, columns, widths and dtypes come from the stage registry (:mod:`maou.stages`) and
equal the model's output keys: stage 1 ``reachable`` (N, 81) uint8; stage 2 ``legal_moves``
(N, 1496) uint8; stage 3 ``policy`` (N, 1496) float32 (move frequencies) and ``value`` (N,)
float32 in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from pathlib import Path

import numpy as np
import torch

from maou.errors import UserError
from maou.shogi.shapes import BOARD_SHAPE, PIECES_IN_HAND_NUM
from maou.stages import Target, stage


@dataclass
class Split:
    """One split: ``board`` (N, 9, 9) uint8 piece ids, ``hand`` (N, 14) uint8 counts, ``targets``."""

    board: torch.Tensor
    hand: torch.Tensor
    targets: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.board.shape[0]
        if self.hand.shape[0] != n or any(t.shape[0] != n for t in self.targets.values()):
            raise ValueError("board, hand and targets must have the same number of rows")

    def __len__(self) -> int:
        return int(self.board.shape[0])

    @property
    def device(self) -> torch.device:
        return self.board.device

    def to(self, device: torch.device | str) -> Split:
        """A copy on ``device`` (whole tensors, pinned and copied asynchronously to CUDA)."""
        device = torch.device(device)
        if self.board.device == device:
            return self

        def move(t: torch.Tensor) -> torch.Tensor:
            if device.type == "cuda":
                return t.pin_memory().to(device, non_blocking=True)
            return t.to(device)

        return Split(move(self.board), move(self.hand), {k: move(v) for k, v in self.targets.items()})

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Rows ``index`` (a tensor on this split's device): board, hand, targets."""
        return self.board[index], self.hand[index], {k: v[index] for k, v in self.targets.items()}

    def subset(self, index: torch.Tensor) -> Split:
        return Split(*self.batch(index))


@dataclass
class StageData:
    """Train and validation splits of one stage (Stage 1 uses the same rows for both), and the
    content hash of the dataset they were read from (None for the synthetic Stage 1 rows)."""

    stage: int
    train: Split
    val: Split
    content_hash: str | None = None

    def __post_init__(self) -> None:
        expected = set(stage(self.stage).target_names)
        for name, split in (("train", self.train), ("val", self.val)):
            if set(split.targets) != expected:
                raise ValueError(f"stage {self.stage} {name} targets must be {sorted(expected)}, "
                                 f"got {sorted(split.targets)}")


def load_stage_data(stage_number: int, dataset_dir: str | Path | None = None,
                    max_rows: int | None = None) -> StageData:
    """Load a stage's splits as tensors.

    A ``synthetic`` stage (Stage 1) comes from :func:`maou.shogi.stage1_rows` (``dataset_dir`` is
    ignored; train and val are the same 1,105 rows). Other stages read
    ``dataset_dir/stage{N}/{train,val}.feather`` as written by ``sweep data build``, and carry the
    build's ``content_hash`` (``dataset_dir/manifest.json``). ``max_rows`` keeps the first rows of
    each split (tests).
    """
    info = stage(stage_number)
    if info.data_source == "synthetic":
        return _stage1_data(max_rows)
    if dataset_dir is None:
        raise UserError(f"stage {stage_number} needs a dataset folder (built by `sweep data build`)")
    folder = Path(dataset_dir) / f"stage{stage_number}"
    train, val = (_read_split(info.targets, folder / f"{name}.feather", max_rows) for name in ("train", "val"))
    return StageData(stage_number, train, val, content_hash=dataset_content_hash(dataset_dir))


def dataset_content_hash(dataset_dir: str | Path) -> str | None:
    """The ``content_hash`` of a built dataset folder (its top ``manifest.json``), if recorded."""
    import json

    manifest = Path(dataset_dir) / "manifest.json"
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text()).get("content_hash")


def _stage1_data(max_rows: int | None) -> StageData:
    from maou.shogi import stage1_rows

    rows = stage1_rows()
    (target,) = stage(1).targets
    board, hand, reachable = (torch.from_numpy(np.array(a, dtype=np.uint8))  # copies: rows are read-only
                              for a in (rows.board_id_positions, rows.pieces_in_hand, rows.reachable_squares))
    board = board.reshape(-1, *BOARD_SHAPE)
    if max_rows is not None:
        board, hand, reachable = board[:max_rows], hand[:max_rows], reachable[:max_rows]
    split = Split(board, hand, {target.name: reachable.reshape(-1, target.width)})
    return StageData(1, split, split)


def _read_split(targets: tuple[Target, ...], path: Path, max_rows: int | None) -> Split:
    import pyarrow.feather as feather

    if not path.is_file():
        raise UserError(f"no dataset file {path}; build it with `sweep data build`")
    table = feather.read_table(path, memory_map=True)
    if max_rows is not None:
        table = table.slice(0, max_rows)
    board = _column(table, path, "boardIdPositions", BOARD_SHAPE, np.uint8)
    hand = _column(table, path, "piecesInHand", (PIECES_IN_HAND_NUM,), np.uint8)
    columns = {t.name: _column(table, path, t.column, (t.width,) if t.width else (), np.dtype(t.dtype))
               for t in targets}
    return Split(board, hand, columns)


def _column(table, path: Path, name: str, shape: tuple[int, ...], dtype) -> torch.Tensor:
    """A (possibly nested) list column as one (N, *shape) tensor, without per-row Python work."""
    import pyarrow as pa

    if name not in table.column_names:
        raise UserError(f"{path}: missing column {name!r} (has {', '.join(table.column_names)})")
    array = table.column(name).combine_chunks()
    while isinstance(array.type, (pa.ListType, pa.LargeListType, pa.FixedSizeListType)):
        array = array.flatten()
    values = array.to_numpy(zero_copy_only=False)
    rows = table.num_rows
    if values.size != rows * prod(shape):
        raise UserError(f"{path}: column {name!r} has {values.size} values for {rows} rows, "
                        f"expected {prod(shape)} per row")
    # astype copies: the tensor owns its memory (the table may be memory-mapped and read-only)
    return torch.from_numpy(values.reshape((rows, *shape)).astype(dtype))
