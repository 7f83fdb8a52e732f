"""A stage's train and validation splits, batched by index: memory-mapped files or in-memory tensors.

Two kinds of split give the trainer the same tensors:

* :class:`~maou.trainer.mapped.MappedSplit` (the default for datasets built from games): the
  dataset file memory-mapped, each batch gathered from the mapping in its compact stored form and
  decoded on the training device (prefetched in a background thread on CUDA). A few hundred bytes a row
  stay resident, shared by every trial on the machine.
* :class:`~maou.trainer.split.Split`: whole tensors in memory (Stage 1's synthetic rows, ``storage="memory"``); the
  trainer moves them to the device once and takes a batch with one index gather per tensor.

No per-sample Python work anywhere. Both offer ``batch(index)``, ``stream(indices)`` (the
training batches), ``iter_batches`` (evaluation), ``iter_targets`` (the training reference) and
``subset``. Targets keep a compact dtype (multi-hot targets stay uint8); losses and metrics
convert them to float32 on the device.

Target keys, columns, widths and dtypes come from the stage registry (:mod:`maou.stages`) and
equal the model's output keys: stage 1 ``reachable`` (N, 81) uint8; stage 2 ``legal_moves``
(N, 1496) uint8; stage 3 ``policy`` (N, 1496) float32 (move frequencies) and ``value`` (N,)
float32 in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from maou.errors import UserError
from maou.layout import SPLITS, manifest_content_hash, split_path
from maou.shogi.shapes import BOARD_SHAPE
from maou.stages import stage
from maou.trainer.mapped import MappedSplit, open_split
from maou.trainer.split import Split

#: Where a split's rows live: ``mapped`` (the file, memory-mapped) or ``memory`` (whole tensors).
Storage = Literal["mapped", "memory"]


#: Either kind of split.
Rows = Split | MappedSplit


@dataclass
class StageData:
    """Train and validation splits of one stage (Stage 1 uses the same rows for both), and the
    content hash of the dataset they were read from (None for the synthetic Stage 1 rows)."""

    stage: int
    train: Rows
    val: Rows
    content_hash: str | None = None

    def __post_init__(self) -> None:
        expected = set(stage(self.stage).target_names)
        for name, split in (("train", self.train), ("val", self.val)):
            if set(split.target_names) != expected:
                raise ValueError(f"stage {self.stage} {name} targets must be {sorted(expected)}, "
                                 f"got {sorted(split.target_names)}")


def load_stage_data(stage_number: int, dataset_dir: str | Path | None = None,
                    max_rows: int | None = None, storage: Storage = "mapped") -> StageData:
    """Open a stage's splits.

    A ``synthetic`` stage (Stage 1) comes from :func:`maou.shogi.stage1_rows` (``dataset_dir`` is
    ignored; train and val are the same 1,105 rows, in memory). Other stages open
    ``dataset_dir/stage{N}/{train,val}.feather`` as written by ``sweep data build`` (or upstream's
    dense columns), memory-mapped (``storage="mapped"``) or decoded into memory (``"memory"``),
    and carry the build's ``content_hash`` (``dataset_dir/manifest.json``). ``max_rows`` keeps the
    first rows of each split (tests).
    """
    info = stage(stage_number)
    if info.data_source == "synthetic":
        return _stage1_data(max_rows)
    if dataset_dir is None:
        raise UserError(f"stage {stage_number} needs a dataset folder (built by `sweep data build`)")
    train, val = (open_split(split_path(dataset_dir, stage_number, split), info.targets, max_rows) for split in SPLITS)
    if storage == "memory":
        train, val = train.materialize(), val.materialize()
    return StageData(stage_number, train, val, content_hash=manifest_content_hash(dataset_dir))


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
