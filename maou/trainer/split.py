"""A split held in memory: whole tensors, one index gather per tensor a batch (Stage 1's synthetic
rows, ``storage="memory"``, the tests). :class:`~maou.trainer.mapped.MappedSplit` gives the trainer
the same tensors from a memory-mapped file."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

#: A batch: board (N, 9, 9) uint8, hand (N, 14) uint8, targets by name.
Batch = tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]
#: Rows gathered at a time where a whole split is walked (targets, materializing a mapping).
CHUNK_ROWS = 16_384


@dataclass
class Split:
    """One split: ``board`` (N, 9, 9) uint8 piece ids, ``hand`` (N, 14) uint8 counts, ``targets``."""

    board: torch.Tensor
    hand: torch.Tensor
    targets: dict[str, torch.Tensor] = field(default_factory=dict)
    #: Results computed once from the whole split (the training reference), by key.
    memo: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = self.board.shape[0]
        if self.hand.shape[0] != n or any(t.shape[0] != n for t in self.targets.values()):
            raise ValueError("board, hand and targets must have the same number of rows")

    def __len__(self) -> int:
        return int(self.board.shape[0])

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(self.targets)

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

    def batch(self, index: torch.Tensor) -> Batch:
        """Rows ``index`` (a tensor on this split's device): board, hand, targets."""
        return self.board[index], self.hand[index], {k: v[index] for k, v in self.targets.items()}

    def stream(self, indices: Iterator[torch.Tensor], depth: int = 0) -> _Batches:
        """The batches of ``indices`` (CPU index tensors), taken when asked for (already in memory)."""
        return _Batches(self, indices)

    def iter_batches(self, batch_size: int) -> Iterator[Batch]:
        """Every row in order, ``batch_size`` at a time."""
        for start in range(0, len(self), batch_size):
            yield self.batch(torch.arange(start, min(start + batch_size, len(self)), device=self.device))

    def iter_targets(self, batch_size: int = CHUNK_ROWS) -> Iterator[dict[str, torch.Tensor]]:
        for start in range(0, len(self), batch_size):
            yield {k: v[start:start + batch_size] for k, v in self.targets.items()}

    def subset(self, index: torch.Tensor) -> Split:
        return Split(*self.batch(index))


class _Batches:
    """``Split.stream``: a closeable iterator, like the prefetching one of a mapped split."""

    def __init__(self, split: Split, indices: Iterator[torch.Tensor]) -> None:
        self.split, self.indices = split, indices

    def __iter__(self) -> _Batches:
        return self

    def __next__(self) -> Batch:
        return self.split.batch(next(self.indices).to(self.split.device))

    def close(self) -> None:
        pass



__all__ = ["Batch", "CHUNK_ROWS", "Split"]
