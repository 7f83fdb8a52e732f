"""The order of training rows, and batches prepared ahead of the training step in a thread.

:func:`batch_indices` yields each step's row indices: a fresh seeded permutation every epoch
(``full``; exactly the batches the in-memory loop always drew), or a seeded order of blocks of
consecutive rows shuffled within windows of blocks (``block``: reads stay mostly sequential, for
memory-mapped data larger than memory). :class:`Prefetcher` runs ``produce(index)`` (gather from
the mapping, copy to the device, decode there) for the next ``depth`` batches in a background
thread; on CUDA on a side stream, the training stream waiting on an event per batch.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch

Shuffle = Literal["full", "block"]
#: ``block`` shuffle: rows per block, and blocks shuffled together in one window.
BLOCK_ROWS = 4096
WINDOW_BLOCKS = 16


def _block_order(rows: int, generator: torch.Generator) -> torch.Tensor:
    blocks = torch.randperm(math.ceil(rows / BLOCK_ROWS), generator=generator)
    order = (blocks.unsqueeze(1) * BLOCK_ROWS + torch.arange(BLOCK_ROWS)).reshape(-1)
    order = order[order < rows]
    window = BLOCK_ROWS * WINDOW_BLOCKS
    for start in range(0, rows, window):
        part = order[start:start + window]
        order[start:start + window] = part[torch.randperm(len(part), generator=generator)]
    return order


def physical_memory() -> int:
    """Bytes of memory of this machine."""
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resolve_shuffle(choice: str, train: Any) -> Shuffle:
    """``full`` or ``block`` for a loader's ``shuffle`` choice; ``auto`` is ``block`` when the mapped
    training rows exceed half of this machine's memory (an in-memory split is always ``full``)."""
    if choice in ("full", "block"):
        return choice  # type: ignore[return-value]
    per_row = getattr(train, "bytes_per_row", None)
    if per_row is None:
        return "full"
    return "block" if per_row() * len(train) > physical_memory() // 2 else "full"


def batch_indices(rows: int, batch_size: int, steps: int, generator: torch.Generator,
                  shuffle: Shuffle = "full") -> Iterator[torch.Tensor]:
    """The (CPU) row indices of each of ``steps`` batches of at most ``batch_size`` rows; an epoch's
    last batch may be short, and the next epoch starts a new order."""
    order, cursor = torch.empty(0, dtype=torch.long), rows
    for _ in range(steps):
        if cursor >= rows:
            order = torch.randperm(rows, generator=generator) if shuffle == "full" else _block_order(rows, generator)
            cursor = 0
        yield order[cursor: cursor + batch_size]
        cursor += batch_size


_END = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetcher:
    """An iterator over ``finish(produce(index))`` for each index of ``indices``: ``produce`` runs in
    a thread, ``depth`` batches ahead; ``finish`` (default: none) in the iterating thread."""

    def __init__(self, produce: Callable[[torch.Tensor], Any], indices: Iterator[torch.Tensor], depth: int,
                 device: torch.device, finish: Callable[[Any], Any] | None = None) -> None:
        self.produce, self.indices, self.device, self.finish = produce, indices, device, finish
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._work, name="maou-prefetch", daemon=True)
        self.thread.start()

    def _put(self, item: Any) -> bool:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        try:
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                for index in self.indices:
                    batch = self.produce(index)
                    event = None
                    if stream is not None:
                        event = torch.cuda.Event()
                        event.record(stream)
                    if not self._put((batch, event)):
                        return
            self._put(_END)
        except BaseException as error:  # noqa: BLE001 - raised again in the training thread
            self._put(_Failure(error))

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        item = self.queue.get()
        if item is _END:
            self.queue.put(_END)  # later calls end too
            raise StopIteration
        if isinstance(item, _Failure):
            raise item.error
        batch, event = item
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for tensor in _tensors(batch):
                tensor.record_stream(current)  # the side stream's allocations are used on this one
        return batch if self.finish is None else self.finish(batch)

    def close(self) -> None:
        """Stop the thread (it may be ahead by ``depth`` batches); safe to call twice."""
        self.stopping.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self.queue.get_nowait()
        self.thread.join()


def _tensors(batch: Any) -> Iterator[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, dict):
        for value in batch.values():
            yield from _tensors(value)
    elif isinstance(batch, (tuple, list)):
        for value in batch:
            yield from _tensors(value)


__all__ = ["BLOCK_ROWS", "Prefetcher", "Shuffle", "WINDOW_BLOCKS", "batch_indices", "physical_memory",
           "resolve_shuffle"]
