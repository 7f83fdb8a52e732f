"""The dataset folder, owned here: the files' byte layout, their paths, the manifest and what it counts.

A built dataset folder (``sweep data build``, :mod:`maou.data.build`) holds ``stage{N}/`` folders
(:func:`split_path`: ``stage{N}/{train,val}.feather``, Stage 1's ``stage1/all.feather``), a
``manifest.json`` in each (:func:`stage_rows`: the split's row counts) and a top ``manifest.json``
(:data:`MANIFEST`) written last, whose ``files`` list every dataset file (name relative to the
folder -> ``rows``, ``bytes``, ``sha256``) and whose ``content_hash`` (:func:`content_hash_of`) is
the one hash of that list a sweep records. :class:`Dataset` is a stage's dataset once resolved
(:mod:`maou.data.resolve`): what a job carries to wherever it trains. The trainer and the data
package both read the folder through this module, which imports neither.

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

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
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


#: The manifest of a build folder (top: every file and the content hash) and of each stage folder.
MANIFEST = "manifest.json"
#: A games-built stage's splits, one file each.
SPLITS = ("train", "val")
#: Stage 1's synthetic rows, one file (written for upstream; the trainer makes them itself).
SYNTHETIC_FILE = "all.feather"


def stage_name(stage_number: int) -> str:
    """A stage's folder in a build (``stage{N}``), and its key in the top manifest's counts."""
    return f"stage{stage_number}"


def stage_prefix(stage_number: int) -> str:
    """A stage folder's name with its slash, as the manifest's file names begin."""
    return stage_name(stage_number) + "/"


def split_path(folder: str | Path, stage_number: int, split: str) -> Path:
    """The dataset file of one split of a stage: ``folder/stage{N}/{split}.feather``."""
    return Path(folder) / stage_name(stage_number) / f"{split}.feather"


def read_manifest(path: str | Path) -> dict | None:
    """A manifest file's contents, or None when it is missing or not a JSON object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def content_hash_of(files: Mapping[str, Mapping[str, Any]]) -> str:
    """The ``content_hash`` of a build: one hash of every dataset file's name and SHA-256."""
    return hashlib.sha256("".join(f"{name}\0{entry['sha256']}\n" for name, entry in sorted(files.items()))
                          .encode()).hexdigest()


def manifest_content_hash(folder: str | Path) -> str | None:
    """The ``content_hash`` a built folder's top manifest records (None: no manifest)."""
    manifest = read_manifest(Path(folder) / MANIFEST)
    return None if manifest is None else manifest.get("content_hash")


def stage_entries(manifest: Mapping[str, Any], stage_number: int) -> dict[str, dict]:
    """The top manifest's entries of one stage folder's dataset files (``stageN/...``)."""
    prefix = stage_prefix(stage_number)
    return {name: dict(entry) for name, entry in (manifest.get("files") or {}).items() if name.startswith(prefix)}


def stage_rows(folder: str | Path, stage_number: int) -> dict[str, int] | None:
    """Rows per split of a built stage (``{"train": N, "val": M}``), from its stage manifest; None
    when the manifest is missing, unreadable or counts no rows."""
    manifest = read_manifest(Path(folder) / stage_name(stage_number) / MANIFEST)
    rows = (manifest or {}).get("rows")
    if not isinstance(rows, dict):
        return None
    try:
        return {split: int(count) for split, count in rows.items()}
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Dataset:
    """A stage's dataset, resolved once per step (built, verified) and carried by every job.

    ``folder`` is None for a synthetic stage (Stage 1). ``files``: ``(name relative to the folder,
    bytes, sha256)`` of the stage's dataset files, as the manifest lists them. ``copy``: the folder
    is a node-local copy of the driver's build (multi-node Ray), used as it is and never rebuilt."""

    stage: int
    folder: str | None = None
    content_hash: str | None = None
    files: tuple[tuple[str, int, str], ...] = ()
    copy: bool = False

    @classmethod
    def of_folder(cls, stage_number: int, folder: str | Path) -> Dataset:
        """The stage's dataset in a built folder, as its top manifest lists it (absolute path)."""
        manifest = read_manifest(Path(folder) / MANIFEST) or {}
        files = tuple((name, int(entry["bytes"]), str(entry["sha256"]))
                      for name, entry in sorted(stage_entries(manifest, stage_number).items()))
        content_hash = manifest.get("content_hash")
        return cls(stage_number, str(Path(folder).resolve()), str(content_hash) if content_hash else None, files)


__all__ = ["BIT_ORDER", "MANIFEST", "RECORD_BATCH_ROWS", "SPARSE_LABEL", "SPARSE_LABEL_DTYPE", "SPARSE_WEIGHT",
           "SPARSE_WEIGHT_DTYPE", "SPLITS", "SYNTHETIC_FILE", "Dataset", "content_hash_of", "fixed_list",
           "hcp_column", "manifest_content_hash", "pack_flags", "ranges_index", "read_manifest", "sparse_column",
           "sparse_type", "split_path", "stage_entries", "stage_name", "stage_prefix", "stage_rows"]
