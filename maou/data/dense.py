"""A built Stage 2/3 split in upstream's dense form: the file upstream ``maou learn-model`` reads.

``sweep data build`` stores targets compactly (``legalMovesBits``, ``moveLabelSparse``:
:mod:`maou.layout`); upstream's loaders read their own dense columns instead. A dense copy
has exactly upstream's columns, in its order (:func:`dense_schema`): ``id``, ``boardIdPositions``,
``piecesInHand``, then each target's dense column from the stage registry (Stage 2
``legalMovesLabel``, 1496 uint8 a row; Stage 3 ``moveLabel``, 1496 float32, and ``resultValue``).
The build's other columns (``hcp``, ``count``) are not upstream's and are left out.

:func:`write_dense_copy` converts a few thousand rows at a time (at most :data:`SLICE_BYTES` of
dense rows): the built file is read a record batch at a time (not mapped, whose pages would stay
resident), each slice's targets gathered and decoded by the trainer's own codecs
(:mod:`maou.trainer.columns`), so the dense targets are the tensors a trial trains on, and the
whole dense table (5M Stage 2 rows: 7.5 GB) is never in memory: memory stays flat whatever the
rows (about 650 MB resident, most of it torch and pyarrow themselves). The file is Arrow IPC
(feather v2), one record batch per slice, LZ4-frame compressed as upstream writes its own files
(its reader concatenates the batches; polars reads the fixed-size lists as arrays); written to a
temporary name and renamed, so a partial copy never stands in the final place. Its schema metadata
names the built file's SHA-256 (from the build's manifest): :func:`is_current_copy` recognises a
copy of the same data, which is not written twice.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maou.layout import fixed_list
from maou.shogi.shapes import BOARD_SHAPE, PIECES_IN_HAND_NUM
from maou.stages import Stage, stage

#: Upstream writes its files LZ4-frame compressed; its reader (and pyarrow, polars) reads them.
DENSE_COMPRESSION = "lz4"
#: Dense rows converted and written at a time (one record batch), in bytes.
SLICE_BYTES = 32 << 20
#: Schema metadata keys of a dense copy: the SHA-256 of the built file it was converted from.
SOURCE_SHA256 = b"maou.source_sha256"
SOURCE_ROWS = b"maou.source_rows"
_ARROW_DTYPES = {"uint8": "uint8", "float32": "float32"}
_ITEM_BYTES = {"uint8": 1, "float32": 4}
#: id (uint64), board (81 uint8), hand (14 uint8): the columns every dense copy has.
_POSITION_BYTES = 8 + BOARD_SHAPE[0] * BOARD_SHAPE[1] + PIECES_IN_HAND_NUM


def needs_dense_copy(stage_number: int) -> bool:
    """Whether upstream cannot read the stage's built files as they are (a target stored compactly)."""
    return any(t.storage != "dense" for t in stage(stage_number).targets)


def dense_row_bytes(stage_number: int) -> int:
    """Bytes a row of the stage's dense copy holds, uncompressed."""
    return _POSITION_BYTES + sum(max(1, t.width) * _ITEM_BYTES[t.dtype] for t in stage(stage_number).targets)


def dense_bytes(stage_number: int, rows: int) -> int:
    """The size of a dense copy of ``rows`` rows before compression (the memory upstream loads it into)."""
    return rows * dense_row_bytes(stage_number)


def size_text(size: int) -> str:
    """Bytes in decimal units, as disks count them: ``7.5 GB``, ``57 MB``, ``3.2 MB``, ``12 kB``."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            value = size / scale
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{size} B"


def dense_schema(stage_number: int, metadata: dict[bytes, bytes] | None = None) -> Any:
    """Upstream's columns of the stage, in its order, as fixed-size lists."""
    import pyarrow as pa

    fields = [("id", pa.uint64()),
              ("boardIdPositions", pa.list_(pa.list_(pa.uint8(), BOARD_SHAPE[1]), BOARD_SHAPE[0])),
              ("piecesInHand", pa.list_(pa.uint8(), PIECES_IN_HAND_NUM))]
    for target in stage(stage_number).targets:
        value = pa.type_for_alias(_ARROW_DTYPES[target.dtype])
        fields.append((target.column, pa.list_(value, target.width) if target.width else value))
    return pa.schema(fields, metadata=metadata)


@dataclass(frozen=True)
class DenseCopy:
    """A dense copy on disk: where, its rows and bytes, and what writing it took (``written`` False:
    an existing copy of the same data was kept)."""

    path: Path
    rows: int
    bytes: int
    written: bool
    seconds: float = 0.0
    #: Peak resident memory of this process after the copy (bytes; 0 where unknown).
    peak_rss: int = 0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def copy_metadata(path: Path) -> dict[bytes, bytes] | None:
    """The schema metadata of a dense copy (None: no readable Arrow file there)."""
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            return dict(pa.ipc.open_file(source).schema.metadata or {})
    except (OSError, pa.ArrowException):
        return None


def is_current_copy(path: Path, stage_number: int, source_sha256: str | None) -> bool:
    """Whether ``path`` is a complete dense copy of the stage's built file whose SHA-256 is
    ``source_sha256`` (never, when that hash is unknown)."""
    import pyarrow as pa

    if not source_sha256 or not path.is_file():
        return False
    try:
        with pa.memory_map(str(path)) as source:
            schema = pa.ipc.open_file(source).schema
    except (OSError, pa.ArrowException):
        return False
    return ((schema.metadata or {}).get(SOURCE_SHA256) == source_sha256.encode()
            and schema.remove_metadata().equals(dense_schema(stage_number)))


def _progress(enabled: bool, title: str, rows: int) -> Any:
    from rich import progress as p

    bar = p.Progress(p.TextColumn("{task.description}"), p.BarColumn(), p.MofNCompleteColumn(), p.TextColumn("rows"),
                     p.TimeElapsedColumn(), p.TimeRemainingColumn(), disable=not enabled, transient=True)
    return bar, bar.add_task(title, total=rows)


def peak_rss_bytes() -> int:
    """This process's peak resident set size (0 where the platform does not say)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return 0
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # kilobytes on Linux


def write_dense_copy(source: Path, dest: Path, stage_number: int, source_sha256: str | None = None,
                     progress: bool = True) -> DenseCopy:
    """Write the dense copy of the built file ``source`` (a Stage 2/3 split) to ``dest``, slice by
    slice; ``source_sha256`` (the manifest's) goes into its metadata. An existing copy of the same
    data is kept as it is."""
    import pyarrow as pa

    if is_current_copy(dest, stage_number, source_sha256):
        rows = int((copy_metadata(dest) or {}).get(SOURCE_ROWS, b"0"))
        return DenseCopy(dest, rows, dest.stat().st_size, written=False, peak_rss=peak_rss_bytes())
    import torch  # noqa: F401  (the codecs' decoding; imported before the clock starts)

    import maou.trainer.columns  # noqa: F401

    started = time.perf_counter()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        with _open_source(source) as reader, _disk_full(dest):
            rows = reader.count_rows()
            metadata = {SOURCE_ROWS: str(rows).encode()}
            if source_sha256:
                metadata[SOURCE_SHA256] = source_sha256.encode()
            schema = dense_schema(stage_number, metadata)
            bar, task = _progress(progress, f"upstream's dense Stage {stage_number} rows", rows)
            with bar, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(
                    sink, schema, options=pa.ipc.IpcWriteOptions(compression=DENSE_COMPRESSION)) as writer:
                for batch in _dense_batches(reader, source, stage(stage_number), schema):
                    writer.write_batch(batch)
                    bar.advance(task, batch.num_rows)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return DenseCopy(dest, rows, dest.stat().st_size, written=True, seconds=time.perf_counter() - started,
                     peak_rss=peak_rss_bytes())


@contextlib.contextmanager
def _disk_full(dest: Path) -> Iterator[None]:
    """A full disk while writing ``dest`` as one line."""
    import errno

    from maou.errors import UserError

    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC and "No space left" not in str(exc):
            raise
        raise UserError(f"disk full writing upstream's dense copy {dest}: nothing kept; free some space and "
                        "export again") from exc


@contextlib.contextmanager
def _open_source(path: Path) -> Iterator[Any]:
    """The built file's Arrow IPC reader, read (not mapped: a mapping's pages would stay resident)
    a record batch at a time; a file Arrow cannot read is an :class:`UnreadableDataset`."""
    import pyarrow as pa

    from maou.errors import UserError
    from maou.trainer.columns import UnreadableDataset

    if not path.is_file():
        raise UserError(f"no dataset file {path}; build it with `sweep data build`")
    file = pa.OSFile(str(path))
    try:
        try:
            reader = pa.ipc.open_file(file)
        except (OSError, pa.ArrowException) as exc:
            raise UnreadableDataset(path, exc) from exc
        yield reader
    finally:
        file.close()


def _dense_batches(reader: Any, source: Path, info: Stage, schema: Any) -> Iterator[Any]:
    """The built file's rows as record batches of ``schema``: each of its record batches in slices
    of at most :data:`SLICE_BYTES` dense, the targets decoded by the trainer's codecs (gathered as
    for a training batch, decoded on the CPU)."""
    import pyarrow as pa

    if reader.num_record_batches == 0:
        yield pa.RecordBatch.from_arrays([pa.array([], type=f.type) for f in schema], schema=schema)
    step = max(1, SLICE_BYTES // dense_row_bytes(info.number))
    for i in range(reader.num_record_batches):
        table = pa.Table.from_batches([reader.get_batch(i)])
        for start in range(0, table.num_rows, step):
            yield _dense_slice(table.slice(start, step), source, info, schema)


def _dense_slice(table: Any, source: Path, info: Stage, schema: Any) -> Any:
    import pyarrow as pa
    import torch

    from maou.trainer.columns import fixed_rows, target_column

    index = np.arange(table.num_rows, dtype=np.int64)
    arrays = [pa.array(fixed_rows(table, source, "id", ()).take(index).astype(np.uint64, copy=False)),
              fixed_list(fixed_rows(table, source, "boardIdPositions", BOARD_SHAPE, np.uint8).take(index),
                         *BOARD_SHAPE),
              fixed_list(fixed_rows(table, source, "piecesInHand", (PIECES_IN_HAND_NUM,), np.uint8).take(index),
                         PIECES_IN_HAND_NUM)]
    for target in info.targets:
        column = target_column(table, source, target)
        parts = tuple(torch.from_numpy(np.ascontiguousarray(p)) for p in column.gather(index))
        dense = column.decode(parts, len(index)).numpy()
        arrays.append(fixed_list(dense, target.width) if target.width else pa.array(dense))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


__all__ = ["DENSE_COMPRESSION", "DenseCopy", "SLICE_BYTES", "SOURCE_ROWS", "SOURCE_SHA256", "copy_metadata",
           "dense_bytes", "dense_row_bytes", "dense_schema", "is_current_copy", "needs_dense_copy",
           "peak_rss_bytes", "size_text", "write_dense_copy"]
