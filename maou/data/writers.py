"""The Stage 1/2/3 dataset tables: their schemas, their record batches, and the files they go to.

Column types and byte layouts are in :mod:`maou.layout`; which target is stored in which
form (dense, bit-packed, sparse) and under which column name comes from the stage registry.
A :class:`DatasetFile` is written record batch by record batch (uncompressed Arrow IPC, batches
of :data:`~maou.layout.RECORD_BATCH_ROWS` rows) to a temporary name and renamed when
closed, so a build holds at most one batch of each table in memory. Rows are sorted by ``id``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from maou.layout import RECORD_BATCH_ROWS, SYNTHETIC_FILE, fixed_list, hcp_column, sparse_column, sparse_type
from maou.shogi import BOARD_SHAPE, HCP_BYTES, PIECES_IN_HAND_NUM, REACHABLE_SQUARES_NUM, stage1_rows
from maou.shogi.shapes import MOVE_LABELS_PACKED_BYTES
from maou.stages import stage

#: Dataset files are uncompressed, so that the trainer memory-maps them with zero copy.
COMPRESSION = None


def _common_fields() -> list[Any]:
    import pyarrow as pa

    return [("id", pa.uint64()), ("hcp", pa.binary(HCP_BYTES)),
            ("boardIdPositions", pa.list_(pa.list_(pa.uint8(), BOARD_SHAPE[1]), BOARD_SHAPE[0])),
            ("piecesInHand", pa.list_(pa.uint8(), PIECES_IN_HAND_NUM))]


def stage2_schema() -> Any:
    import pyarrow as pa

    (legal,) = stage(2).targets
    return pa.schema([*_common_fields(), (legal.compact_column, pa.list_(pa.uint8(), MOVE_LABELS_PACKED_BYTES))])


def stage3_schema() -> Any:
    import pyarrow as pa

    policy, value = stage(3).targets
    return pa.schema([*_common_fields(), (policy.compact_column, sparse_type()), (value.column, pa.float32()),
                      ("count", pa.uint32())])


def _common_columns(ids: np.ndarray, hcps: np.ndarray, boards: np.ndarray, hands: np.ndarray) -> list[Any]:
    return [ids, hcp_column(hcps), fixed_list(boards, *BOARD_SHAPE), fixed_list(hands, PIECES_IN_HAND_NUM)]


def stage2_table(ids: np.ndarray, hcps: np.ndarray, boards: np.ndarray, hands: np.ndarray,
                 legal_bits: np.ndarray) -> Any:
    """Stage 2 rows: position columns and the bit-packed legal-move flags (N, 187)."""
    import pyarrow as pa

    columns = [*_common_columns(ids, hcps, boards, hands), fixed_list(legal_bits, MOVE_LABELS_PACKED_BYTES)]
    return pa.Table.from_arrays(columns, schema=stage2_schema())


def stage3_table(ids: np.ndarray, hcps: np.ndarray, boards: np.ndarray, hands: np.ndarray,
                 policy: tuple[np.ndarray, np.ndarray, np.ndarray], value: np.ndarray, count: np.ndarray) -> Any:
    """Stage 3 rows: position columns, the sparse policy ``(offsets, labels, weights)``, value and count."""
    import pyarrow as pa

    columns = [*_common_columns(ids, hcps, boards, hands), sparse_column(*policy),
               pa.array(np.asarray(value, dtype=np.float32)), pa.array(np.asarray(count, dtype=np.uint32))]
    return pa.Table.from_arrays(columns, schema=stage3_schema())


class _HashingSink:
    """A file written front to back that hashes what goes through it (no second read for the manifest)."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "wb")  # closed by close()
        self.digest = hashlib.sha256()
        self.position = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self.file.write(view)
        self.position += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()
        self.closed = True


class DatasetFile:
    """One dataset table, written in record batches of ``RECORD_BATCH_ROWS`` rows (the last one
    shorter) to ``path + ".tmp"``, renamed to ``path`` by :meth:`close`."""

    def __init__(self, path: Path, schema: Any) -> None:
        import pyarrow as pa

        self.path, self.schema = path, schema
        self.tmp = path.with_name(path.name + ".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.sink = _HashingSink(self.tmp)
        self.writer = pa.ipc.new_file(pa.PythonFile(self.sink, mode="w"), schema,
                                      options=pa.ipc.IpcWriteOptions(compression=COMPRESSION))
        self.pending: list[Any] = []
        self.pending_rows = self.rows = 0

    def write(self, table: Any) -> None:
        """Append ``table``'s rows (any number; full batches are written as soon as they fill)."""
        if table.num_rows:
            self.pending.append(table)
            self.pending_rows += table.num_rows
        while self.pending_rows >= RECORD_BATCH_ROWS:
            self._flush(RECORD_BATCH_ROWS)

    def _flush(self, rows: int) -> None:
        import pyarrow as pa

        table = pa.concat_tables(self.pending)
        head, rest = table.slice(0, rows), table.slice(rows)
        self.writer.write_batch(head.combine_chunks().to_batches()[0])
        self.rows += rows
        self.pending = [rest] if rest.num_rows else []
        self.pending_rows = rest.num_rows

    def close(self) -> dict:
        """Write what is left, rename into place; the manifest entry of the file."""
        if self.pending_rows:
            self._flush(self.pending_rows)
        self.writer.close()
        self.sink.close()
        os.replace(self.tmp, self.path)
        return {"file": self.path.name, "rows": self.rows, "bytes": self.path.stat().st_size,
                "sha256": self.sink.digest.hexdigest(), "columns": {f.name: str(f.type) for f in self.schema}}


def write_table(path: Path, table: Any) -> dict:
    """``table`` as one dataset file; its manifest entry."""
    out = DatasetFile(path, table.schema)
    out.write(table)
    return out.close()


def write_stage1(folder: Path) -> dict:
    import pyarrow as pa

    rows = stage1_rows()
    (target,) = stage(1).targets
    table = pa.table({
        "boardIdPositions": fixed_list(rows.board_id_positions, *BOARD_SHAPE),
        "piecesInHand": fixed_list(rows.pieces_in_hand, PIECES_IN_HAND_NUM),
        target.column: fixed_list(rows.reachable_squares, REACHABLE_SQUARES_NUM),
    })
    entry = write_table(folder / SYNTHETIC_FILE, table)
    return {"rows": {"all": entry["rows"]}, "files": {"all": entry}}


__all__ = ["COMPRESSION", "DatasetFile", "stage2_schema", "stage2_table", "stage3_schema",
           "stage3_table", "write_stage1", "write_table"]
