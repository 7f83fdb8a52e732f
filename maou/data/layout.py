"""The byte layout of the dataset files: Arrow column types and the compact target forms.

Every table is an Arrow IPC file (``.feather`` v2), **uncompressed**, written one record batch of
at most :data:`RECORD_BATCH_ROWS` rows at a time, so that the trainer can memory-map it with
zero copy (``pyarrow.memory_map`` + ``pyarrow.ipc.open_file``; an lz4-compressed file would have
to be decompressed into memory) and plain pyarrow reads it as any feather file. No column has
nulls.

* ``boardIdPositions`` ``fixed_size_list<fixed_size_list<uint8, 9>, 9>`` (``[rank y][file x]``),
  ``piecesInHand`` ``fixed_size_list<uint8, 14>``, ``reachableSquares``
  ``fixed_size_list<uint8, 81>``, ``hcp`` ``fixed_size_binary(32)``, ``id`` uint64.
* Bit-packed multi-hot (``legalMovesBits``): ``fixed_size_list<uint8, 187>``, flag ``label`` in
  byte ``label // 8`` at bit ``label % 8`` counted from the least significant bit
  (``numpy.packbits(mask, axis=1, bitorder="little")``; ``numpy.unpackbits(..., bitorder="little")``
  reads it back).
* Sparse distribution (``moveLabelSparse``): ``list<struct<label: uint16, weight: float16>>``, a
  row's non-zero labels in ascending order with their weights; every other label is 0.

The stage registry (:mod:`maou.stages`) says which target is stored in which form.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from maou.shogi.shapes import HCP_BYTES

#: Rows per record batch of a dataset file (a build holds at most one batch per open table).
RECORD_BATCH_ROWS = 65_536
#: ``numpy.packbits`` bit order of the bit-packed columns.
BIT_ORDER: Literal["little"] = "little"
SPARSE_LABEL, SPARSE_WEIGHT = "label", "weight"
SPARSE_LABEL_DTYPE = np.uint16
#: Weights of sparse distributions (the dense Stage 3 targets were float16 too: the same values).
SPARSE_WEIGHT_DTYPE = np.float16


def fixed_list(values: np.ndarray, *shape: int) -> Any:
    """A fixed-size list column (nested for 2-D rows) over a flat numpy buffer, without copying rows."""
    import pyarrow as pa

    array = pa.array(np.ascontiguousarray(values).reshape(-1))
    for size in reversed(shape):
        array = pa.FixedSizeListArray.from_arrays(array, size)
    return array


def hcp_column(hcps: np.ndarray) -> Any:
    import pyarrow as pa

    hcps = np.ascontiguousarray(hcps, dtype=np.uint8)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(HCP_BYTES), len(hcps), [None, pa.py_buffer(hcps)])


def pack_flags(masks: np.ndarray) -> np.ndarray:
    """(N, W) 0/1 flags -> (N, W / 8) uint8 bytes in the files' bit order."""
    return np.packbits(np.asarray(masks, dtype=bool), axis=1, bitorder=BIT_ORDER)


def ranges_index(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Indices ``starts[0]:starts[0] + lengths[0]``, then the next range, ..., concatenated (vectorised)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if len(ends) else 0
    return np.repeat(np.asarray(starts, dtype=np.int64) - (ends - lengths), lengths) + np.arange(total)


def sparse_type() -> Any:
    import pyarrow as pa

    return pa.list_(pa.struct([(SPARSE_LABEL, pa.uint16()), (SPARSE_WEIGHT, pa.float16())]))


def sparse_column(offsets: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> Any:
    """A sparse distribution column: row ``i`` holds entries ``offsets[i]:offsets[i + 1]``."""
    import pyarrow as pa

    entries = pa.StructArray.from_arrays(
        [pa.array(np.asarray(labels, dtype=SPARSE_LABEL_DTYPE)),
         pa.array(np.asarray(weights, dtype=SPARSE_WEIGHT_DTYPE))], names=[SPARSE_LABEL, SPARSE_WEIGHT])
    return pa.ListArray.from_arrays(pa.array(np.asarray(offsets, dtype=np.int32)), entries, type=sparse_type())


__all__ = ["BIT_ORDER", "RECORD_BATCH_ROWS", "SPARSE_LABEL", "SPARSE_LABEL_DTYPE", "SPARSE_WEIGHT",
           "SPARSE_WEIGHT_DTYPE", "fixed_list", "hcp_column", "pack_flags", "ranges_index", "sparse_column",
           "sparse_type"]
