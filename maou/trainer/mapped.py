"""A split read from its memory-mapped dataset file: batches gathered from the mapping, decoded on the device.

Opening maps the file and takes numpy views of its columns (:mod:`maou.trainer.columns`); no row
is read. A batch is gathered on the host (board ids, hand counts, each target in its stored form:
a few hundred bytes a row), copied to the training device (pinned, asynchronous on CUDA) and
decoded there (bit-unpacking, sparse scatter). On CUDA :meth:`MappedSplit.stream` gathers, copies
and decodes the next batches in a background thread (:class:`~maou.trainer.prefetch.Prefetcher`);
on CPU the training thread gathers and decodes each batch itself (a second thread would only
compete with torch's CPU threads). The tensors it yields equal, bit for bit, those of the in-memory
:class:`~maou.trainer.split.Split` of the same file (:meth:`MappedSplit.materialize`).

Concurrent trials on one machine map the same files: the operating system's page cache holds
them once, whatever the number of trials.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maou.shogi.shapes import BOARD_SHAPE, PIECES_IN_HAND_NUM
from maou.stages import Target
from maou.trainer.columns import Chunked, TargetColumn, fixed_rows, open_table, target_column
from maou.trainer.prefetch import Prefetcher
from maou.trainer.split import CHUNK_ROWS, Batch, Split

#: A batch gathered but not decoded: board, hand, each target's stored parts, rows.
_Loaded = tuple[torch.Tensor, torch.Tensor, dict[str, tuple[torch.Tensor, ...]], int]
#: Batches prepared ahead of the training step.
PREFETCH_BATCHES = 4


@dataclasses.dataclass
class MappedSplit:
    """``board`` (N, 9, 9) and ``hand`` (N, 14) uint8 and the targets of one split, as views of the
    mapped file; tensors are produced on ``device``."""

    path: Path
    board: Chunked
    hand: Chunked
    columns: dict[str, TargetColumn]
    #: The file was mapped with zero copy (False: compressed or feather v1, read into memory).
    zero_copy: bool
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    #: Results computed once from the whole split (the training reference), by key.
    memo: dict[Any, Any] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.board)

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(self.columns)

    def to(self, device: torch.device | str) -> MappedSplit:
        """The same mapping, producing tensors on ``device`` (nothing is copied now)."""
        device = torch.device(device)
        return self if device == self.device else dataclasses.replace(self, device=device)

    def bytes_per_row(self) -> float:
        """Bytes a row that training reads from the mapping (what stays resident in the page cache)."""
        return self.board.row_bytes + self.hand.row_bytes + sum(c.row_bytes() for c in self.columns.values())

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def _gather_targets(self, rows: np.ndarray) -> dict[str, tuple[torch.Tensor, ...]]:
        """Each target's stored parts of ``rows``, on this split's device."""
        return {name: tuple(self._tensor(p) for p in column.gather(rows)) for name, column in self.columns.items()}

    def _decode_targets(self, parts: dict[str, tuple[torch.Tensor, ...]], rows: int) -> dict[str, torch.Tensor]:
        return {name: self.columns[name].decode(parts[name], rows) for name in self.columns}

    def _load(self, index: torch.Tensor) -> _Loaded:
        """Rows ``index`` gathered from the mapping, in their stored form, on this split's device."""
        rows = index.detach().to("cpu", torch.int64).numpy()
        return (self._tensor(self.board.take(rows)), self._tensor(self.hand.take(rows)), self._gather_targets(rows),
                len(rows))

    def _decode(self, loaded: _Loaded) -> Batch:
        board, hand, parts, rows = loaded
        return board, hand, self._decode_targets(parts, rows)

    def _targets(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        """The targets of rows ``index`` alone (board and hand are not read)."""
        return self._decode_targets(self._gather_targets(index), len(index))

    def batch(self, index: torch.Tensor) -> Batch:
        """Rows ``index`` (a tensor on any device): board, hand, targets on this split's device."""
        return self._decode(self._load(index))

    def stream(self, indices: Iterator[torch.Tensor], depth: int = PREFETCH_BATCHES) -> Any:
        """Batches of each of ``indices`` (``close()`` it).

        On CUDA they are prepared ``depth`` ahead in a thread (:class:`Prefetcher`): it gathers
        (numpy), copies to the device and decodes there (GPU kernels, on its own stream), while the
        training thread queues the step. On CPU there is nothing to overlap: gathering a batch is a
        few hundred bytes a row of numpy, and the step is torch's CPU kernels on torch's thread
        pool, which a second Python thread (its GIL, its numpy work, its wake-ups) only slows down.
        So the training thread gathers and decodes each batch when it asks for it."""
        if self.device.type == "cuda":
            return Prefetcher(self.batch, indices, depth, self.device)
        return _InPlace(self.batch, indices)

    def iter_batches(self, batch_size: int) -> Iterator[Batch]:
        """Every row in order, ``batch_size`` at a time (prefetched on CUDA)."""
        stream = self.stream(iter(torch.arange(len(self)).split(batch_size)))
        try:
            yield from stream
        finally:
            stream.close()

    def iter_targets(self, batch_size: int = CHUNK_ROWS) -> Iterator[dict[str, torch.Tensor]]:
        """Every row's targets in order, ``batch_size`` rows at a time."""
        for start in range(0, len(self), batch_size):
            yield self._targets(np.arange(start, min(start + batch_size, len(self))))

    def subset(self, index: torch.Tensor) -> Any:
        """Rows ``index`` as an in-memory split on this split's device."""
        return Split(*self.batch(index))

    def materialize(self) -> Any:
        """Every row as an in-memory :class:`~maou.trainer.split.Split` on this split's device."""
        parts = [self.batch(chunk) for chunk in torch.arange(len(self)).split(CHUNK_ROWS)] or [self.batch(
            torch.zeros(0, dtype=torch.long))]
        return Split(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                     {name: torch.cat([p[2][name] for p in parts]) for name in self.columns})


class _InPlace:
    """``MappedSplit.stream`` on CPU: each batch gathered and decoded in the calling thread when
    asked for; closeable like the prefetching one."""

    def __init__(self, produce: Callable[[torch.Tensor], Batch], indices: Iterator[torch.Tensor]) -> None:
        self.produce, self.indices = produce, indices

    def __iter__(self) -> _InPlace:
        return self

    def __next__(self) -> Batch:
        return self.produce(next(self.indices))

    def close(self) -> None:
        pass


def open_split(path: Path, targets: tuple[Target, ...], max_rows: int | None = None) -> MappedSplit:
    """Map ``path`` (a Stage 2/3 dataset file, ours or upstream's) and view its columns."""
    table, zero_copy = open_table(path)
    if max_rows is not None:
        table = table.slice(0, max_rows)
    board = fixed_rows(table, path, "boardIdPositions", BOARD_SHAPE, np.uint8)
    hand = fixed_rows(table, path, "piecesInHand", (PIECES_IN_HAND_NUM,), np.uint8)
    columns = {t.name: target_column(table, path, t) for t in targets}
    return MappedSplit(path, board, hand, columns, zero_copy)


__all__ = ["MappedSplit", "PREFETCH_BATCHES", "open_split"]
