"""Game records -> Stage 1/2/3 Arrow datasets (``sweep data build``), split by game.

Layout of ``OUT`` (all tables Arrow IPC ``.feather``, lz4-compressed, one row per position):

* ``stage1/all.feather``: the 1,105 synthetic rows of :func:`maou.shogi.stage1_rows`
  (``boardIdPositions``, ``piecesInHand``, ``reachableSquares``). Stage 1 has no split.
* ``stage2/{train,val}.feather``: every unique position of the split's games: ``id`` uint64
  (upstream maou's position id, :func:`maou.shogi.position_id`), ``hcp`` (32-byte cshogi
  HuffmanCodedPos), ``boardIdPositions``, ``piecesInHand``, ``legalMovesLabel`` (1496 uint8
  multi-hot). Validation drops every position that also occurs in train (counted in the manifest).
* ``stage3/{train,val}.feather``: positions aggregated by id within the split (games with a
  result only): ``id``, ``hcp``, ``boardIdPositions``, ``piecesInHand``, ``moveLabel`` (1496
  float16: per-label play counts / count, sums to 1), ``resultValue`` float32 (wins / count for
  the side to move; win 1, loss 0, draw 0.5), ``count`` uint32.
* ``split.json`` (the game ids of each split), ``manifest.json`` per stage folder and at ``OUT``.

Column types: ``boardIdPositions`` is ``fixed_size_list<fixed_size_list<uint8, 9>, 9>``, i.e.
``[rank y][file x]`` (flatten twice, reshape (N, 9, 9)); ``piecesInHand`` is
``fixed_size_list<uint8, 14>``; ``reachableSquares`` ``fixed_size_list<uint8, 81>`` indexed by
``sq = 9 * x + y``; ``legalMovesLabel`` / ``moveLabel`` are fixed-size lists of 1496. Rows are
sorted by ``id``. Reading back is ``table.column(c).combine_chunks().flatten()...to_numpy()``.

The split is by game, seeded: no game has positions on both sides, and with two or more games
each side gets at least one. The hot path replays each game once with cshogi, keeping for each
new position its raw pieces, hands and legal moves in flat buffers; labels, masks, encodings and
ids are then computed for all positions at once with numpy (no per-row Python or pyarrow work).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import cshogi
import numpy as np

from maou import __version__
from maou.data.records import GameRecord, ReadStats, find_record_files, iter_records
from maou.errors import UserError
from maou.shogi import (
    BOARD_SHAPE,
    HAND_KINDS_NUM,
    HCP_BYTES,
    MOVE_LABELS_NUM,
    PIECES_IN_HAND_NUM,
    REACHABLE_SQUARES_NUM,
    SQUARES_NUM,
    encode_position,
    move_labels,
    position_id,
    stage1_rows,
)

#: Bumped when the written layout changes; a dataset of another format version is rebuilt.
FORMAT_VERSION = 1
SPLITS = ("train", "val")
MANIFEST = "manifest.json"
COMPRESSION = "lz4"
#: Stage 3 policy targets are stored as float16 (sums to 1 within 1e-3).
POLICY_DTYPE = np.float16
#: Per-file entries listed in the manifest (the content hash always covers every file).
MAX_LISTED_SOURCES = 2000
_LEGAL_DTYPE = np.dtype(f"u{array('I').itemsize}")
_WINNER_CODE = {"black": 0, "white": 1, "draw": 2}
_NO_RESULT = 3


# --- positions of a split ---------------------------------------------------------------------------


@dataclass
class Positions:
    """Unique positions of some games (first-seen order) and every played position with a result.

    Unique (U rows): ``key`` cshogi ``zobrist_hash`` (dedup key), ``pieces`` (U, 81) cshogi piece
    ids by square, ``hands`` (U, 2, 7) cshogi hand counts by colour, ``turn`` (U,), ``hcp``
    (U, 32), ``legal`` flat cshogi legal moves with ``legal_counts`` (U,).
    Played (P rows, only games with a result): ``row`` index into the unique rows, ``move``
    (cshogi move), ``value`` for the side to move (1 win, 0 loss, 0.5 draw).
    """

    key: np.ndarray
    pieces: np.ndarray
    hands: np.ndarray
    turn: np.ndarray
    hcp: np.ndarray
    legal: np.ndarray
    legal_counts: np.ndarray
    row: np.ndarray
    move: np.ndarray
    value: np.ndarray
    positions: int = 0  # all played positions, with or without a result

    def __len__(self) -> int:
        return len(self.key)


def extract_positions(games: Sequence[GameRecord], progress=None, task=None) -> Positions:
    """Replay ``games`` once with cshogi and collect their positions (see :class:`Positions`).

    A game's positions are the ones before each of its moves; a record without moves (an HCPE
    row without a best move) contributes its start position to the unique rows only.
    """
    index: dict[int, int] = {}
    pieces, hands, turns = array("B"), array("B"), array("B")
    legal, legal_counts = array("I"), array("I")
    total = sum(max(len(g.moves), 1) for g in games)
    hcps = np.empty((total, HCP_BYTES), dtype=np.uint8)
    rows, moves, values = array("I"), array("I"), array("f")
    positions = 0
    board = cshogi.Board()
    for game in games:
        board.set_sfen(game.sfen)
        code = _WINNER_CODE[game.winner] if game.winner is not None else _NO_RESULT
        labelled = code != _NO_RESULT
        for move in game.moves or (None,):
            key = board.zobrist_hash()
            row = index.get(key)
            if row is None:
                row = index[key] = len(index)
                pieces.extend(board.pieces)
                black_hand, white_hand = board.pieces_in_hand
                hands.extend(black_hand)
                hands.extend(white_hand)
                turns.append(board.turn)
                board.to_hcp(hcps[row])
                before = len(legal)
                legal.extend(board.legal_moves)
                legal_counts.append(len(legal) - before)
            if move is None:
                break
            positions += 1
            if labelled:
                rows.append(row)
                moves.append(move)
                turn = board.turn
                values.append(0.5 if code == 2 else float(code == turn))
            board.push(move)
        if progress is not None:
            progress.advance(task)
    n = len(index)
    return Positions(
        key=np.fromiter(index.keys(), dtype=np.uint64, count=n),
        pieces=np.frombuffer(pieces, dtype=np.uint8).reshape(n, SQUARES_NUM),
        hands=np.frombuffer(hands, dtype=np.uint8).reshape(n, 2, HAND_KINDS_NUM),
        turn=np.frombuffer(turns, dtype=np.uint8),
        hcp=hcps[:n],
        legal=np.frombuffer(legal, dtype=_LEGAL_DTYPE),
        legal_counts=np.frombuffer(legal_counts, dtype=_LEGAL_DTYPE),
        row=np.frombuffer(rows, dtype=_LEGAL_DTYPE).astype(np.intp),
        move=np.frombuffer(moves, dtype=_LEGAL_DTYPE),
        value=np.frombuffer(values, dtype=np.float32),
        positions=positions,
    )


def legal_masks(pos: Positions, rows: np.ndarray | None = None) -> np.ndarray:
    """(len(rows), 1496) uint8 legal-move masks of unique rows ``rows`` (default all), one scatter."""
    n = len(pos)
    counts = pos.legal_counts.astype(np.intp)
    owner = np.repeat(np.arange(n), counts)
    labels = move_labels(pos.legal, np.repeat(pos.turn, counts))
    if rows is None:
        out = np.zeros((n, MOVE_LABELS_NUM), dtype=np.uint8)
        out[owner, labels] = 1
        return out
    rows = np.asarray(rows, dtype=np.intp)
    target = np.full(n, -1, dtype=np.intp)
    target[rows] = np.arange(len(rows))
    keep = target[owner] >= 0
    out = np.zeros((len(rows), MOVE_LABELS_NUM), dtype=np.uint8)
    out[target[owner[keep]], labels[keep]] = 1
    return out


def encode_unique(pos: Positions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(board_id_positions (U, 9, 9), pieces_in_hand (U, 14), ids (U,) uint64)`` of the unique rows.

    Vectorised with the lookup tables behind :func:`maou.shogi.encode_position` and
    :func:`maou.shogi.position_id` (tests check equality with them); falls back to those
    per-board functions if the tables are not available.
    """
    try:
        from maou.shogi import features

        (lut_black, lut_white), order = features._tables()
        keys, hand_keys, turn_key = features._zobrist_keys()
    except (ImportError, AttributeError, ValueError, TypeError):  # pragma: no cover - fallback
        return _encode_per_board(pos)
    n = len(pos)
    white = pos.turn.astype(bool)
    boards = np.empty((n, SQUARES_NUM), dtype=np.uint8)
    boards[~white] = lut_black[pos.pieces[~white][:, order[0]]]
    boards[white] = lut_white[pos.pieces[white][:, order[1]]]
    hand = np.where(white[:, None], pos.hands[:, ::-1].reshape(n, PIECES_IN_HAND_NUM),
                    pos.hands.reshape(n, PIECES_IN_HAND_NUM)).astype(np.uint8)
    squares = np.arange(SQUARES_NUM)
    ids = np.bitwise_xor.reduce(keys[pos.pieces, squares], axis=1) if n else np.zeros(0, np.uint64)
    colours = np.repeat(np.arange(2), HAND_KINDS_NUM)
    kinds = np.tile(np.arange(HAND_KINDS_NUM), 2)
    if n:
        ids ^= np.bitwise_xor.reduce(hand_keys[colours, kinds, pos.hands.reshape(n, -1).astype(np.intp)], axis=1)
        ids ^= np.where(white, np.uint64(turn_key), np.uint64(0))
    return boards.reshape(n, *BOARD_SHAPE), hand, ids.astype(np.uint64)


def _encode_per_board(pos: Positions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(pos)
    boards = np.empty((n, *BOARD_SHAPE), dtype=np.uint8)
    hands = np.empty((n, PIECES_IN_HAND_NUM), dtype=np.uint8)
    ids = np.empty(n, dtype=np.uint64)
    board = cshogi.Board()
    for i, hcp in enumerate(pos.hcp):
        board.set_hcp(hcp)
        boards[i], hands[i] = encode_position(board)
        ids[i] = position_id(board)
    return boards, hands, ids


@dataclass
class Stage3Aggregate:
    """Positions grouped by unique row: ``rows`` (R,) unique-row indices, ``count`` and ``wins``
    (R,), and sparse per-label statistics ``pair_index`` (into ``rows``), ``pair_label``,
    ``pair_count``, ``pair_wins`` (upstream's move_label_values and move_win_values)."""

    rows: np.ndarray
    count: np.ndarray
    wins: np.ndarray
    pair_index: np.ndarray
    pair_label: np.ndarray
    pair_count: np.ndarray
    pair_wins: np.ndarray

    def policy(self) -> np.ndarray:
        """(R, 1496) POLICY_DTYPE move frequencies: play counts / count."""
        out = np.zeros((len(self.rows), MOVE_LABELS_NUM), dtype=POLICY_DTYPE)
        out[self.pair_index, self.pair_label] = self.pair_count / self.count[self.pair_index]
        return out

    def result_value(self) -> np.ndarray:
        return (self.wins / self.count).astype(np.float32)


def aggregate_stage3(pos: Positions) -> Stage3Aggregate:
    """Group the played positions (with a result) by unique row, vectorised."""
    n = len(pos)
    count_all = np.bincount(pos.row, minlength=n)
    rows = np.flatnonzero(count_all)
    remap = np.full(n, -1, dtype=np.intp)
    remap[rows] = np.arange(len(rows))
    wins = np.bincount(pos.row, weights=pos.value, minlength=n)[rows]
    labels = move_labels(pos.move, pos.turn[pos.row]) if len(pos.row) else np.zeros(0, np.int64)
    pair_keys, inverse, pair_count = np.unique(pos.row.astype(np.int64) * MOVE_LABELS_NUM + labels,
                                               return_inverse=True, return_counts=True)
    pair_wins = np.bincount(inverse.ravel(), weights=pos.value, minlength=len(pair_keys))
    return Stage3Aggregate(rows=rows, count=count_all[rows], wins=wins,
                           pair_index=remap[pair_keys // MOVE_LABELS_NUM],
                           pair_label=(pair_keys % MOVE_LABELS_NUM).astype(np.intp),
                           pair_count=pair_count, pair_wins=pair_wins)


# --- Arrow writing ----------------------------------------------------------------------------------


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
            "sha256": _file_sha256(path), "columns": {f.name: str(f.type) for f in table.schema}}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- sources and split --------------------------------------------------------------------------------


def source_files(games: Sequence[str | Path]) -> list[tuple[int, Path, Path]]:
    """(input index, file, path relative to its input) of every record file; UserError if an input is missing."""
    out = []
    for i, raw in enumerate(games):
        root = Path(raw)
        for f in find_record_files([root]):
            out.append((i, f, f.relative_to(root) if root.is_dir() else Path(f.name)))
    return out


def sources_fingerprint(files: list[tuple[int, Path, Path]]) -> str:
    """Cheap fingerprint: input index, relative path, size and mtime of every file."""
    digest = hashlib.sha256()
    for i, f, rel in files:
        st = f.stat()
        digest.update(f"{i}\0{rel.as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def sources_content_hash(files: list[tuple[int, Path, Path]]) -> tuple[str, list[dict]]:
    digest = hashlib.sha256()
    listed = []
    for i, f, rel in files:
        data_hash = _file_sha256(f)
        digest.update(f"{i}\0{rel.as_posix()}\0{data_hash}\n".encode())
        if len(listed) < MAX_LISTED_SOURCES:
            listed.append({"input": i, "path": rel.as_posix(), "bytes": f.stat().st_size, "sha256": data_hash})
    return digest.hexdigest(), listed


def split_games(n: int, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean (n,) mask of validation games: a seeded random ``round(n * val_fraction)``, at least one
    game on each side when ``n >= 2`` (no validation games when ``n == 1``)."""
    is_val = np.zeros(n, dtype=bool)
    if n >= 2:
        n_val = min(max(int(round(n * val_fraction)), 1), n - 1)
        is_val[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return is_val


# --- the build ------------------------------------------------------------------------------------------


@dataclass
class BuildSummary:
    out_dir: Path
    stats: ReadStats
    games: dict[str, int] = field(default_factory=dict)
    positions: dict[str, int] = field(default_factory=dict)
    unique_positions: dict[str, int] = field(default_factory=dict)
    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    val_dropped_in_train: int = 0
    seconds: float = 0.0
    manifest: dict = field(default_factory=dict)

    @property
    def positions_per_s(self) -> float:
        return sum(self.positions.values()) / self.seconds if self.seconds > 0 else 0.0


def build_datasets(games: Sequence[str | Path], out_dir: str | Path, val_fraction: float = 0.1,
                   split_seed: int = 0, progress: bool = True) -> BuildSummary:
    """Read the game records of ``games`` and write the Stage 1/2/3 datasets under ``out_dir``."""
    if isinstance(games, (str, Path)):
        games = [games]
    if not games:
        raise UserError("no game records given (--games PATH ...)")
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must be in (0, 1), got {val_fraction}")
    started = time.perf_counter()
    files = source_files(games)
    out = Path(out_dir)
    stats = ReadStats()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("reading game records", total=len(files))
        records: list[GameRecord] = []
        last_files = 0
        for record in iter_records([], stats, files=[f for _, f, _ in files]):
            records.append(record)
            if stats.files != last_files:
                bar.update(task, completed=stats.files - 1, description=f"reading game records ({len(records)} games)")
                last_files = stats.files
        bar.update(task, completed=len(files))
        if not records:
            reasons = ", ".join(f"{k} {v}" for k, v in stats.skipped.most_common()) or "no record files found"
            raise UserError(f"no readable games in {', '.join(map(str, games))} ({len(files)} files; {reasons})")

        is_val = split_games(len(records), val_fraction, split_seed)
        split_games_ = {"train": [g for g, v in zip(records, is_val) if not v],
                        "val": [g for g, v in zip(records, is_val) if v]}
        task = bar.add_task("replaying games", total=len(records))
        positions = {name: extract_positions(split_games_[name], bar, task) for name in SPLITS}

    out.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (out / MANIFEST).unlink()  # the top manifest marks a complete build: written last
    summary = BuildSummary(out_dir=out, stats=stats)
    summary.games = {name: len(split_games_[name]) for name in SPLITS}
    summary.positions = {name: positions[name].positions for name in SPLITS}
    summary.unique_positions = {name: len(positions[name]) for name in SPLITS}

    stage1 = _write_stage1(out / "stage1")
    encoded = {name: encode_unique(positions[name]) for name in SPLITS}
    stage2 = _write_stage2(out / "stage2", positions, encoded)
    stage3 = _write_stage3(out / "stage3", positions, encoded)
    summary.val_dropped_in_train = stage2["val_dropped_seen_in_train"]
    summary.rows = {"stage1": {"all": stage1["rows"]["all"]}, "stage2": stage2["rows"], "stage3": stage3["rows"]}
    (out / "split.json").write_text(json.dumps(
        {name: [g.game_id for g in split_games_[name]] for name in SPLITS}, indent=0) + "\n")

    content_hash, listed = sources_content_hash(files)
    summary.seconds = time.perf_counter() - started
    common = {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(summary.seconds, 3),
        "split_seed": split_seed,
        "val_fraction": val_fraction,
    }
    sources = {"inputs": [str(g) for g in games], "resolved": _resolved(games), "files": len(files),
               "bytes": sum(f.stat().st_size for _, f, _ in files),
               "fingerprint": sources_fingerprint(files), "content_sha256": content_hash,
               "listed": listed, "listed_truncated": len(files) > len(listed)}
    reading = stats.to_dict()
    for name, stage in (("stage1", stage1), ("stage2", stage2), ("stage3", stage3)):
        stage_manifest = {**common, "stage": int(name[-1]), **stage}
        if name != "stage1":
            stage_manifest["sources"] = {k: v for k, v in sources.items() if k != "listed"}
            stage_manifest["games"] = reading | {split: summary.games[split] for split in SPLITS}
            stage_manifest["positions"] = summary.positions
            stage_manifest["unique_positions"] = summary.unique_positions
        (out / name / MANIFEST).write_text(json.dumps(stage_manifest, indent=2) + "\n")
    written = {f"{name}/{entry['file']}": {k: entry[k] for k in ("rows", "bytes", "sha256")}
               for name, stage in (("stage1", stage1), ("stage2", stage2), ("stage3", stage3))
               for entry in stage["files"].values()}
    summary.manifest = {
        **common,
        # one hash of every written dataset file (names and contents): identifies the data a run trained on
        "content_hash": hashlib.sha256("".join(f"{name}\0{entry['sha256']}\n" for name, entry in
                                               sorted(written.items())).encode()).hexdigest(),
        "sources": sources,
        "games": reading | {"train": summary.games["train"], "val": summary.games["val"]},
        "positions": {**summary.positions, "total": sum(summary.positions.values())},
        "unique_positions": {**summary.unique_positions},
        "val_dropped_seen_in_train": summary.val_dropped_in_train,
        "stage3_val_rows_also_in_train": stage3["val_rows_also_in_train"],
        "rows": summary.rows,
        "positions_per_s": round(summary.positions_per_s, 1),
        "files": written,
    }
    (out / MANIFEST).write_text(json.dumps(summary.manifest, indent=2) + "\n")
    if progress:
        print_summary(summary)
    return summary


def _write_stage1(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rows = stage1_rows()
    entry = _write_table(folder / "all.feather", {
        "boardIdPositions": _fixed_list(rows.board_id_positions, *BOARD_SHAPE),
        "piecesInHand": _fixed_list(rows.pieces_in_hand, PIECES_IN_HAND_NUM),
        "reachableSquares": _fixed_list(rows.reachable_squares, REACHABLE_SQUARES_NUM),
    })
    return {"rows": {"all": entry["rows"]}, "files": {"all": entry}}


def _write_stage2(folder: Path, positions: dict[str, Positions], encoded: dict) -> dict:
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


def _write_stage3(folder: Path, positions: dict[str, Positions], encoded: dict) -> dict:
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


def print_summary(summary: BuildSummary) -> None:
    from rich.console import Console
    from rich.table import Table

    stats = summary.stats
    table = Table(title=f"datasets -> {summary.out_dir}", show_header=True)
    table.add_column("")
    for name in ("train", "val", "total"):
        table.add_column(name, justify="right")

    def add(label: str, values: dict[str, int]) -> None:
        table.add_row(label, *(f"{values.get(n, 0):,}" for n in SPLITS), f"{sum(values.values()):,}")

    add("games", summary.games)
    add("positions", summary.positions)
    add("unique positions", summary.unique_positions)
    add("stage 2 rows", summary.rows["stage2"])
    add("stage 3 rows", summary.rows["stage3"])
    table.add_row("stage 1 rows", "", "", f"{summary.rows['stage1']['all']:,}")
    table.add_row("files read", "", "", f"{stats.files:,}")
    table.add_row("games without result (stage 2 only)", "", "", f"{stats.no_result:,}")
    for reason, n in sorted(stats.skipped.items()):
        table.add_row(f"skipped: {reason}", "", "", f"{n:,}")
    table.add_row("val positions dropped (seen in train)", "", "", f"{summary.val_dropped_in_train:,}")
    table.add_row("time", "", "", f"{summary.seconds:.2f} s")
    table.add_row("positions / s", "", "", f"{summary.positions_per_s:,.0f}")
    Console().print(table)


# --- on demand ------------------------------------------------------------------------------------------


def _resolved(games: Sequence[str | Path]) -> list[str]:
    return [str(Path(g).resolve()) for g in games]


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def datasets_up_to_date(data_config) -> bool:
    """True when ``data_config.dir`` holds a complete build of the same sources and split."""
    out = Path(data_config.dir)
    manifest = _read_manifest(out / MANIFEST)
    if manifest is None or manifest.get("format_version") != FORMAT_VERSION:
        return False
    if manifest.get("split_seed") != data_config.split_seed or manifest.get("val_fraction") != data_config.val_fraction:
        return False
    sources = manifest.get("sources", {})
    if sources.get("resolved") != _resolved(data_config.games):
        return False
    if not all((out / name).is_file() for name in manifest.get("files", {})):
        return False
    files = source_files(data_config.games)
    if sources_fingerprint(files) == sources.get("fingerprint"):
        return True
    # same files with new mtimes (a fresh checkout): compare contents before rebuilding
    return sources_content_hash(files)[0] == sources.get("content_sha256")


def ensure_datasets(data_config, progress: bool = True) -> Path:
    """``Path(data_config.dir)``, building it first when missing or built from other sources/split."""
    out = Path(data_config.dir)
    out.mkdir(parents=True, exist_ok=True)
    with _lock(out / ".build.lock"):
        if not datasets_up_to_date(data_config):
            build_datasets(list(data_config.games), out, val_fraction=data_config.val_fraction,
                           split_seed=data_config.split_seed, progress=progress)
    return out


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive advisory lock, so concurrent trials do not build the same folder twice."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cli_build(args) -> int:
    build_datasets(args.games, args.out, val_fraction=args.val_fraction, split_seed=args.split_seed, progress=True)
    return 0


__all__ = ["BuildSummary", "Positions", "Stage3Aggregate", "aggregate_stage3", "build_datasets", "cli_build",
           "datasets_up_to_date", "encode_unique", "ensure_datasets", "extract_positions", "legal_masks",
           "split_games"]
