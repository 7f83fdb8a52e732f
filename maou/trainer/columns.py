"""Dataset files as numpy views (memory-mapped, no copy) and the codecs of the stored targets.

:func:`open_table` maps an Arrow IPC file (``pyarrow.memory_map`` + ``pyarrow.ipc.open_file``):
an uncompressed file, as ``sweep data build`` writes, is read with zero copy and nothing is done
per row, so opening a million rows takes milliseconds; a compressed file (upstream's, older
builds) or a feather v1 file is read into memory instead; a file Arrow cannot read is an
:class:`UnreadableDataset` naming its path and the command that rebuilds it. Each column is a list
of numpy views, one per record batch (:class:`Chunked`); :meth:`Chunked.take` gathers rows from them.

A target column gathers the stored form of some rows on the host (:meth:`gather`, numpy) and
turns it into the trainer's tensor on the training device (:meth:`decode`, torch):

* :class:`DenseTarget`: one value per label (upstream's ``legalMovesLabel``, ``moveLabel``) or a
  scalar, kept in its stored dtype and cast on the device.
* :class:`BitpackedTarget`: 187 bytes a row; unpacked on the device with bitwise shifts.
* :class:`SparseTarget`: a row's (label, weight) entries; scattered into zeros on the device.

The layouts are :mod:`maou.layout`'s; the stage registry says which target uses which.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maou.errors import UserError
from maou.layout import BIT_ORDER, SPARSE_LABEL, SPARSE_WEIGHT, ranges_index
from maou.stages import Target

_TORCH_DTYPES = {"uint8": torch.uint8, "float32": torch.float32}


def open_table(path: Path) -> tuple[Any, bool]:
    """The table of an Arrow IPC (feather v2) file, memory-mapped, and whether it came with zero copy."""
    import pyarrow as pa
    import pyarrow.feather as feather

    if not path.is_file():
        raise UserError(f"no dataset file {path}; build it with `sweep data build`")
    before = pa.total_allocated_bytes()
    try:
        try:
            table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        except pa.ArrowInvalid:  # feather v1 or an IPC stream: read into memory
            return feather.read_table(path), False
    except (pa.ArrowException, OSError) as exc:
        raise UnreadableDataset(path, exc) from exc
    copied = pa.total_allocated_bytes() - before
    return table, copied <= max(1 << 16, table.nbytes // 100)


class UnreadableDataset(UserError):
    """A dataset file that Arrow cannot read (truncated, overwritten): its path and why; where the
    file's build is known, :meth:`with_hint` adds how to rebuild it (:mod:`maou.data.resolve`)."""

    def __init__(self, path: Path, exc: BaseException | str, hint: str = "") -> None:
        self.path = path
        self.reason = exc if isinstance(exc, str) else (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        self.hint = hint
        super().__init__(f"dataset file {path} is not a readable Arrow file ({self.reason})"
                         + (f"; {hint}" if hint else ""))

    def with_hint(self, hint: str) -> UnreadableDataset:
        return UnreadableDataset(self.path, self.reason, hint)


class Chunked:
    """A column of fixed-shape rows as numpy views, one per record batch."""

    def __init__(self, chunks: list[np.ndarray]) -> None:
        self.chunks = chunks
        self.starts = np.concatenate([[0], np.cumsum([len(c) for c in self.chunks])])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def row_bytes(self) -> int:
        first = self.chunks[0]
        return int(first.itemsize * prod(first.shape[1:]))

    def locate(self, index: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """``(chunk, positions in index, rows in chunk)`` for every chunk that ``index`` touches."""
        if len(self.chunks) == 1:
            return [(0, np.arange(len(index)), index)]
        chunk = np.searchsorted(self.starts, index, side="right") - 1
        out = []
        for c in np.unique(chunk):
            where = np.flatnonzero(chunk == c)
            out.append((int(c), where, index[where] - self.starts[c]))
        return out

    def take(self, index: np.ndarray) -> np.ndarray:
        """Rows ``index`` (int64 numpy) gathered into one new array."""
        first = self.chunks[0]
        if len(self.chunks) == 1:
            return np.take(first, index, axis=0)
        out = np.empty((len(index), *first.shape[1:]), dtype=first.dtype)
        for c, where, rows in self.locate(index):
            out[where] = np.take(self.chunks[c], rows, axis=0)
        return out


def _column(table: Any, path: Path, name: str) -> Any:
    if name not in table.column_names:
        raise UserError(f"{path}: missing column {name!r} (has {', '.join(table.column_names)})")
    return table.column(name)


def fixed_rows(table: Any, path: Path, name: str, shape: tuple[int, ...], dtype: Any = None) -> Chunked:
    """A (possibly nested) list column as (rows, *shape) views, cast to ``dtype`` if given (a copy
    only when the stored type differs)."""
    import pyarrow as pa

    chunks = []
    for chunk in _column(table, path, name).chunks:
        rows, values = len(chunk), chunk
        while isinstance(values.type, (pa.ListType, pa.LargeListType, pa.FixedSizeListType)):
            values = values.flatten()
        array = values.to_numpy(zero_copy_only=False)
        if array.size != rows * prod(shape):
            raise UserError(f"{path}: column {name!r} has {array.size} values for {rows} rows, "
                            f"expected {prod(shape)} per row")
        array = array.reshape((rows, *shape))
        chunks.append(array if dtype is None else array.astype(dtype, copy=False))
    if not chunks:
        arrow_type = table.schema.field(name).type
        while hasattr(arrow_type, "value_type"):
            arrow_type = arrow_type.value_type
        chunks.append(np.zeros((0, *shape), dtype=dtype or arrow_type.to_pandas_dtype()))
    return Chunked(chunks)


Parts = tuple[np.ndarray, ...]


@dataclass
class DenseTarget:
    """One value per label (or a scalar) per row, cast to the target's dtype on the device."""

    target: Target
    rows: Chunked

    def gather(self, index: np.ndarray) -> Parts:
        return (self.rows.take(index),)

    def decode(self, parts: tuple[torch.Tensor, ...], rows: int) -> torch.Tensor:
        return parts[0].to(_TORCH_DTYPES[self.target.dtype])

    def row_bytes(self) -> float:
        return self.rows.row_bytes


@dataclass
class BitpackedTarget(DenseTarget):
    """Multi-hot flags, eight a byte (``BIT_ORDER``) in ``rows``, unpacked on the device."""

    def decode(self, parts: tuple[torch.Tensor, ...], rows: int) -> torch.Tensor:
        assert BIT_ORDER == "little"
        (packed,) = parts
        shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
        flags = torch.bitwise_and(torch.bitwise_right_shift(packed.unsqueeze(-1), shifts), 1)
        return flags.reshape(rows, self.target.width).to(_TORCH_DTYPES[self.target.dtype])


@dataclass
class SparseTarget:
    """Per row, ``offsets[r]:offsets[r + 1]`` of ``labels`` and ``weights`` (one array each per
    record batch); scattered into a dense (rows, width) tensor on the device."""

    target: Target
    offsets: Chunked
    labels: list[np.ndarray]
    weights: list[np.ndarray]

    def gather(self, index: np.ndarray) -> Parts:
        owners, labels, weights = [], [], []
        for c, where, rows in self.offsets.locate(index):
            starts, ends = self.offsets.chunks[c][rows], self.offsets.chunks[c][rows + 1]
            entries = ranges_index(starts, ends - starts)
            owners.append(np.repeat(where, ends - starts))
            labels.append(self.labels[c][entries])
            weights.append(self.weights[c][entries])
        if not owners:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float16)
        return (np.concatenate(owners).astype(np.int64), np.concatenate(labels).astype(np.int64),
                np.concatenate(weights))

    def decode(self, parts: tuple[torch.Tensor, ...], rows: int) -> torch.Tensor:
        owners, labels, weights = parts
        dense = torch.zeros((rows, self.target.width), dtype=_TORCH_DTYPES[self.target.dtype], device=weights.device)
        dense[owners, labels] = weights.to(dense.dtype)
        return dense

    def row_bytes(self) -> float:
        entries = sum(len(w) for w in self.weights)
        per_entry = self.labels[0].itemsize + self.weights[0].itemsize if self.weights else 0
        return self.offsets.chunks[0].itemsize + per_entry * entries / max(1, len(self.offsets))


TargetColumn = DenseTarget | BitpackedTarget | SparseTarget


def _sparse(table: Any, path: Path, target: Target) -> SparseTarget:
    """A ``list<struct<label, weight>>`` column; the offsets chunk has one more value than rows, which
    :class:`Chunked` counts through a view of the first ``rows`` of each."""
    offsets, labels, weights = [], [], []
    for chunk in _column(table, path, target.compact_column or "").chunks:
        fields = dict(zip((f.name for f in chunk.type.value_type), chunk.values.flatten()))
        offsets.append(chunk.offsets.to_numpy())
        labels.append(fields[SPARSE_LABEL].to_numpy())
        weights.append(fields[SPARSE_WEIGHT].to_numpy())
    return SparseTarget(target, _RowOffsets(offsets), labels, weights)


class _RowOffsets(Chunked):
    """Offsets per record batch (rows + 1 values each); lengths count rows."""

    def __init__(self, chunks: list[np.ndarray]) -> None:
        super().__init__(chunks or [np.zeros(1, dtype=np.int32)])
        self.starts = np.concatenate([[0], np.cumsum([len(c) - 1 for c in self.chunks])])


def target_column(table: Any, path: Path, target: Target) -> TargetColumn:
    """The target's compact column when the file has it, else its dense (upstream) column."""
    if target.compact_column is not None and target.compact_column in table.column_names:
        if target.storage == "bitpacked":
            return BitpackedTarget(target, fixed_rows(table, path, target.compact_column, (target.width // 8,),
                                                      np.uint8))
        return _sparse(table, path, target)
    return DenseTarget(target, fixed_rows(table, path, target.column, (target.width,) if target.width else ()))


__all__ = ["BitpackedTarget", "Chunked", "DenseTarget", "SparseTarget", "TargetColumn", "UnreadableDataset",
           "fixed_rows", "open_table", "target_column"]
