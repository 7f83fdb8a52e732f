"""Arrow tables of the Stage 1/2/3 datasets (``.feather``, lz4), each file written then renamed.

Column types: ``boardIdPositions`` is ``fixed_size_list<fixed_size_list<uint8, 9>, 9>``, i.e.
``[rank y][file x]``; ``piecesInHand`` is ``fixed_size_list<uint8, 14>``; ``reachableSquares``
``fixed_size_list<uint8, 81>`` indexed by ``sq = 9 * x + y``; ``legalMovesLabel`` / ``moveLabel``
are fixed-size lists of 1496; ``hcp`` is 32-byte fixed-size binary. Rows are sorted by ``id``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from maou.data.positions import POLICY_DTYPE, Positions, aggregate_stage3, legal_masks
from maou.data.sources import file_sha256
from maou.shogi import BOARD_SHAPE, HCP_BYTES, MOVE_LABELS_NUM, PIECES_IN_HAND_NUM, REACHABLE_SQUARES_NUM, stage1_rows

SPLITS = ("train", "val")
COMPRESSION = "lz4"


def _fixed_list(values: np.ndarray, *shape: int):
    """A fixed-size list column (nested for 2-D rows) over a flat numpy buffer, without copying rows."""
    import pyarrow as pa

    array = pa.array(np.ascontiguousarray(values).reshape(-1))
    for size in reversed(shape):
        array = pa.FixedSizeListArray.from_arrays(array, size)
    return array


def _hcp_column(hcps: np.ndarray):
    import pyarrow as pa

    hcps = np.ascontiguousarray(hcps, dtype=np.uint8)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(HCP_BYTES), len(hcps), [None, pa.py_buffer(hcps)])


def _write_table(path: Path, columns: dict) -> dict:
    import pyarrow as pa
    import pyarrow.feather as feather

    table = pa.table(columns)
    tmp = path.with_name(path.name + ".tmp")
    feather.write_feather(table, tmp, compression=COMPRESSION)
    os.replace(tmp, path)
    return {"file": path.name, "rows": table.num_rows, "bytes": path.stat().st_size,
            "sha256": file_sha256(path), "columns": {f.name: str(f.type) for f in table.schema}}


def write_stage1(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rows = stage1_rows()
    entry = _write_table(folder / "all.feather", {
        "boardIdPositions": _fixed_list(rows.board_id_positions, *BOARD_SHAPE),
        "piecesInHand": _fixed_list(rows.pieces_in_hand, PIECES_IN_HAND_NUM),
        "reachableSquares": _fixed_list(rows.reachable_squares, REACHABLE_SQUARES_NUM),
    })
    return {"rows": {"all": entry["rows"]}, "files": {"all": entry}}


def write_stage2(folder: Path, positions: dict[str, Positions], encoded: dict) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    files, rows, dropped = {}, {}, 0
    train_keys = positions["train"].key
    for name in SPLITS:
        pos = positions[name]
        keep = np.arange(len(pos))
        if name == "val":
            seen = np.isin(pos.key, train_keys)
            dropped = int(seen.sum())
            keep = np.flatnonzero(~seen)
        boards, hands, ids = encoded[name]
        masks = legal_masks(pos, keep)
        order = np.argsort(ids[keep], kind="stable")
        sel = keep[order]
        entry = _write_table(folder / f"{name}.feather", {
            "id": ids[sel],
            "hcp": _hcp_column(pos.hcp[sel]),
            "boardIdPositions": _fixed_list(boards[sel], *BOARD_SHAPE),
            "piecesInHand": _fixed_list(hands[sel], PIECES_IN_HAND_NUM),
            "legalMovesLabel": _fixed_list(masks[order], MOVE_LABELS_NUM),
        })
        files[name], rows[name] = entry, entry["rows"]
    return {"rows": rows, "files": files, "val_dropped_seen_in_train": dropped,
            "mean_legal_moves": {name: float(positions[name].legal_counts.mean()) if len(positions[name]) else 0.0
                                  for name in SPLITS}}


def write_stage3(folder: Path, positions: dict[str, Positions], encoded: dict) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    files, rows = {}, {}
    train_keys = positions["train"].key
    also_in_train = 0
    for name in SPLITS:
        pos = positions[name]
        agg = aggregate_stage3(pos)
        boards, hands, ids = encoded[name]
        ids_rows = ids[agg.rows]
        order = np.argsort(ids_rows, kind="stable")
        sel = agg.rows[order]
        if name == "val":
            also_in_train = int(np.isin(pos.key[agg.rows], train_keys).sum())
        entry = _write_table(folder / f"{name}.feather", {
            "id": ids_rows[order],
            "hcp": _hcp_column(pos.hcp[sel]),
            "boardIdPositions": _fixed_list(boards[sel], *BOARD_SHAPE),
            "piecesInHand": _fixed_list(hands[sel], PIECES_IN_HAND_NUM),
            "moveLabel": _fixed_list(agg.policy()[order], MOVE_LABELS_NUM),
            "resultValue": agg.result_value()[order],
            "count": agg.count[order].astype(np.uint32),
        })
        files[name], rows[name] = entry, entry["rows"]
    return {"rows": rows, "files": files, "val_rows_also_in_train": also_in_train,
            "policy_dtype": np.dtype(POLICY_DTYPE).name}


__all__ = ["COMPRESSION", "SPLITS", "write_stage1", "write_stage2", "write_stage3"]
