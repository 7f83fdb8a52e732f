"""Upstream's HCPE ``.feather`` files, read as upstream writes them: its exact schema (``hcp``
large_binary, int16 ``bestMove16``, int8 ``gameResult`` and the columns the build ignores), every
``hcp`` form, several record batches or one, LZ4, ZSTD or uncompressed; bad rows counted, never
fatal; the rows of a game counted as one game; and datasets built from HCPE rows equal, split
by split, to the ones built from the same games' CSA."""

from __future__ import annotations

import datetime
import json
import shutil
from collections import Counter
from pathlib import Path

import cshogi
import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pytest
from cshogi import CSA

from maou.cli import main as sweep
from maou.data.build import build_datasets
from maou.data.games import GameRecord
from maou.data.hcpe import decode_hcp, read_hcpe_table
from maou.data.sources import read_records
from maou.shogi import HCP_BYTES, position_id

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "data" / "games"
FLOODGATE = [REPO / "tests" / "golden" / "kifu" / f"floodgate2025_{name}.csa"
             for name in ("toryo", "sennichite", "timeup")]
#: Upstream's converter output (polars ``write_ipc``): its column types, in its order.
UPSTREAM_SCHEMA = pa.schema([("hcp", pa.large_binary()), ("eval", pa.int16()), ("bestMove16", pa.int16()),
                             ("gameResult", pa.int8()), ("id", pa.large_string()),
                             ("partitioningKey", pa.date32()), ("ratings", pa.large_list(pa.uint16())),
                             ("endgameStatus", pa.large_string()), ("moves", pa.int16())])
HCP_FORMS = ("large_binary", "binary", "binary_view", "fixed_size_binary", "list", "large_list", "fixed_size_list")


def bundled(n: int) -> list[Path]:
    files = sorted(BUNDLED.glob("*.csa"))[:n]
    assert len(files) == n, f"the bundled corpus {BUNDLED} (tracked in the repository) has {len(files)} games"
    return files


def upstream_rows(path: Path) -> dict[str, np.ndarray | list]:
    """One row per position of the CSA game ``path`` as upstream's converter makes it: the position
    before each move (``to_hcp``), the move played there (``cshogi.move16`` stored as int16), the
    game's result (cshogi's ``win``), the engine's score for the side to move, ratings, ending."""
    kif = CSA.Parser.parse_file(str(path))[0]
    board = cshogi.Board(kif.sfen)
    n = len(kif.moves)
    hcps = np.zeros((n, HCP_BYTES), dtype=np.uint8)
    move16 = np.zeros(n, dtype=np.uint16)
    evals = np.zeros(n, dtype=np.int16)
    for i, (move, score) in enumerate(zip(kif.moves, kif.scores)):
        board.to_hcp(hcps[i])
        move16[i] = cshogi.move16(move)
        clipped = min(32767, max(int(score), -32767))
        evals[i] = clipped if board.turn == cshogi.BLACK else -clipped
        board.push(move)
    return {"hcp": hcps, "eval": evals, "bestMove16": move16.view(np.int16),
            "gameResult": np.full(n, kif.win, dtype=np.int8), "id": [f"{path.stem}_{i}" for i in range(n)],
            "partitioningKey": [datetime.date(2025, 1, 5)] * n,
            "ratings": [[int(r) for r in kif.ratings]] * n, "endgameStatus": [kif.endgame] * n,
            "moves": np.full(n, n, dtype=np.int16)}


def hcp_array(hcps: np.ndarray, form: str) -> pa.Array:
    flat = pa.array(hcps.ravel())
    offsets = np.arange(len(hcps) + 1) * HCP_BYTES
    return {
        "large_binary": lambda: pa.array([bytes(h) for h in hcps], pa.large_binary()),
        "binary": lambda: pa.array([bytes(h) for h in hcps], pa.binary()),
        "binary_view": lambda: pa.array([bytes(h) for h in hcps], pa.binary_view()),
        "fixed_size_binary": lambda: pa.array([bytes(h) for h in hcps], pa.binary(HCP_BYTES)),
        "list": lambda: pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), flat),
        "large_list": lambda: pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), flat),
        "fixed_size_list": lambda: pa.FixedSizeListArray.from_arrays(flat, HCP_BYTES),
    }[form]()


def upstream_table(rows: dict, form: str = "large_binary") -> pa.Table:
    arrays = [hcp_array(rows["hcp"], form)]
    arrays += [pa.array(rows[field.name], field.type) for field in list(UPSTREAM_SCHEMA)[1:]]
    schema = UPSTREAM_SCHEMA.set(0, pa.field("hcp", arrays[0].type))
    return pa.Table.from_arrays(arrays, schema=schema)


def reference(path: Path) -> list[tuple[list[str], tuple[int, ...], str | None]]:
    """(board part of the sfen, (move,), winner) of each position of the CSA game, from our CSA reader."""
    (game,), _ = read_records([path])
    board, out = cshogi.Board(game.sfen), []
    for move in game.moves:
        out.append((board.sfen().split()[:3], (move,), game.winner))
        board.push(move)
    return out


def summary_of(records: list[GameRecord]) -> list[tuple[list[str], tuple[int, ...], str | None]]:
    return [(r.sfen.split()[:3], r.moves, r.winner) for r in records]


@pytest.fixture(scope="module")
def game() -> tuple[Path, dict]:
    path = FLOODGATE[0]  # a real game: promotions, captures, drops, engine scores, ratings
    return path, upstream_rows(path)


@pytest.mark.parametrize("compression", ["uncompressed", "lz4", "zstd"])
@pytest.mark.parametrize("batches", [1, 5])
@pytest.mark.parametrize("form", HCP_FORMS)
def test_every_upstream_form_reads_the_same_positions(game, form, batches, compression, tmp_path):
    path, rows = game
    table = upstream_table(rows, form)
    assert table.schema.remove(0) == UPSTREAM_SCHEMA.remove(0)
    file = tmp_path / "game.feather"
    feather.write_feather(table, file, compression=compression, chunksize=-(-table.num_rows // batches))
    with pa.memory_map(str(file)) as source:
        assert pa.ipc.open_file(source).num_record_batches == batches
    records, stats = read_records([file])
    assert summary_of(records) == reference(path)
    assert (stats.games, stats.positions) == (1, table.num_rows) and not stats.skipped  # one game, its rows
    assert all(r.fmt == "hcpe" and r.index == i for i, r in enumerate(records))


def test_upstream_int16_best_moves(game, tmp_path):
    """cshogi's move16 uses bits 0-14 (promotion is 0x4000), so upstream's int16 column holds it as
    it is; a negative (bit 15) or impossible best move leaves the row a Stage 2 position."""
    path, rows = game
    move16 = rows["bestMove16"].view(np.uint16)
    assert move16.max() < 0x8000 and (move16 & 0x4000).any()  # promotions are in the game, none negative
    as_uint16 = upstream_table(rows).set_column(2, "bestMove16", pa.array(move16))
    feather.write_feather(as_uint16, tmp_path / "u16.feather")
    assert summary_of(read_records([tmp_path / "u16.feather"])[0]) == reference(path)

    bad = dict(rows, bestMove16=rows["bestMove16"].copy())
    start = cshogi.Board()
    illegal_promotion = cshogi.move16(start.move_from_usi("1g1f")) | 0x4000  # cshogi's is_legal accepts it
    assert start.is_legal(start.move_from_move16(illegal_promotion))
    bad["hcp"] = rows["hcp"].copy()
    start.to_hcp(bad["hcp"][0])
    bad["bestMove16"][:4] = [illegal_promotion, -1, -32768, 0]
    feather.write_feather(upstream_table(bad), tmp_path / "bad.feather")
    records, stats = read_records([tmp_path / "bad.feather"])
    assert [r.moves for r in records[:4]] == [()] * 4 and not stats.skipped
    assert summary_of(records[4:]) == reference(path)[4:]


def test_nulls_and_bad_rows_are_counted_not_fatal(game, tmp_path):
    path, rows = game
    table = upstream_table(rows)
    hcps = [bytes(h) for h in rows["hcp"]]
    hcps[1], hcps[2], hcps[3] = hcps[1][:31], hcps[2] + b"\0", None
    nulls = pa.array([None if i in (5, 6) else int(v) for i, v in enumerate(rows["bestMove16"])], pa.int16())
    results = pa.array([None if i == 7 else int(v) for i, v in enumerate(rows["gameResult"])], pa.int8())
    table = table.set_column(0, "hcp", pa.array(hcps, pa.large_binary()))
    table = table.set_column(2, "bestMove16", nulls).set_column(3, "gameResult", results)
    feather.write_feather(table, tmp_path / "bad.feather", compression="zstd", chunksize=40)
    records, stats = read_records([tmp_path / "bad.feather"])
    assert stats.skipped == {"malformed": 3} and len(records) == table.num_rows - 3
    assert [r.index for r in records[:5]] == [0, 4, 5, 6, 7]
    assert records[2].moves == records[3].moves == () and records[4].winner is None
    expected = reference(path)
    assert summary_of(records[5:]) == expected[8:]

    lists = [list(h) for h in rows["hcp"][:3]]
    lists[1][0] = 300  # not a byte
    listed = pa.table({"hcp": pa.array(lists, pa.large_list(pa.uint16()))})
    feather.write_feather(listed, tmp_path / "lists.feather")
    records, stats = read_records([tmp_path / "lists.feather"])
    assert [r.index for r in records] == [0, 2] and stats.skipped == {"malformed": 1}

    for name, column in (("narrow", pa.array([b"x" * 16], pa.binary(16))), ("text", pa.array(["x" * 32])),
                         ("nohcp", None)):
        feather.write_feather(pa.table({"hcp": column} if column is not None else {"eval": [1]}),
                              tmp_path / f"{name}.feather")
    records, stats = read_records([tmp_path / f"{n}.feather" for n in ("narrow", "text", "nohcp")])
    assert records == [] and stats.skipped == {"malformed": 3}
    assert any("fixed_size_binary[16]" in e for e in stats.examples["malformed"])


def test_decode_hcp_cuts_rows_out_of_sliced_arrays(game):
    _, rows = game
    hcps = rows["hcp"][:9]
    for form in HCP_FORMS:
        array = hcp_array(hcps, form)
        decoded, ok = decode_hcp(array.slice(3, 5))
        assert ok.all() and np.array_equal(decoded, hcps[3:8]), form
        decoded, ok = decode_hcp(array.slice(9))
        assert decoded.shape == (0, HCP_BYTES) and len(ok) == 0
    nested = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(pa.array(hcps.ravel()), 8), 4)
    decoded, ok = decode_hcp(nested)  # a list of lists (4 x 8) still reads, as before
    assert ok.all() and np.array_equal(decoded, hcps)


def test_only_the_needed_columns_are_read(game, tmp_path):
    _, rows = game
    feather.write_feather(upstream_table(rows), tmp_path / "game.feather", compression="lz4")
    table = read_hcpe_table(tmp_path / "game.feather")
    assert np.array_equal(table.hcps, rows["hcp"]) and table.ok.all()
    assert table.move16 is not None and np.array_equal(table.move16, rows["bestMove16"].view(np.uint16))
    assert table.results is not None and set(table.results) == {cshogi.BLACK_WIN}
    assert table.game_names == ("floodgate2025_toryo",)  # the id's game part, its ply cut off
    assert table.games is not None and (table.games == 0).all()


# ---- agreement with the CSA records ------------------------------------------------------------------


def _stage_tables(out: Path, stage: int) -> pa.Table:
    return pa.concat_tables([feather.read_table(out / f"stage{stage}" / f"{s}.feather") for s in ("train", "val")])


def _fixed(table: pa.Table, name: str) -> np.ndarray:
    array = table.column(name).combine_chunks()
    while pa.types.is_fixed_size_list(array.type):
        array = array.flatten()
    if pa.types.is_fixed_size_binary(array.type):
        return np.frombuffer(array.buffers()[1], np.uint8)[:table.num_rows * HCP_BYTES].reshape(table.num_rows, -1)
    return array.to_numpy().reshape(table.num_rows, -1)


def _stage2(out: Path) -> dict[str, np.ndarray]:
    """Stage 2 rows of both splits (validation drops positions seen in train: each position once), by id."""
    table = _stage_tables(out, 2)
    order = np.argsort(table.column("id").to_numpy(), kind="stable")
    return {name: (table.column(name).to_numpy() if name == "id" else _fixed(table, name))[order]
            for name in ("id", "hcp", "boardIdPositions", "piecesInHand", "legalMovesBits")}


def _stage3(out: Path) -> dict[int, tuple]:
    """Stage 3 rows of both splits merged by id (a position can be in both splits: one repeated in
    a train and a validation game): (board, hand, count, play count per label, wins)."""
    table = _stage_tables(out, 3)
    boards, hands = _fixed(table, "boardIdPositions"), _fixed(table, "piecesInHand")
    merged: dict[int, tuple] = {}
    columns = (table.column(name).to_pylist() for name in ("id", "count", "resultValue", "moveLabelSparse"))
    for i, (pid, count, value, policy) in enumerate(zip(*columns)):
        plays = Counter({entry["label"]: round(entry["weight"] * count) for entry in policy})
        if pid in merged:
            _, _, before, before_plays, before_wins = merged[pid]
            count, plays, wins = before + count, before_plays + plays, before_wins + value * count
        else:
            wins = value * count
        merged[pid] = (boards[i].tobytes(), hands[i].tobytes(), count, plays, wins)
    return merged


def test_hcpe_rows_build_the_same_datasets_as_the_csa_games(tmp_path):
    games = [*bundled(6), BUNDLED / "selfplay-fairy-stockfish-1-0065.csa", *FLOODGATE]  # 0065: a draw
    csa, hcpe = tmp_path / "csa", tmp_path / "hcpe"
    csa.mkdir()
    hcpe.mkdir()
    for path in games:
        shutil.copy2(path, csa / path.name)
        rows = upstream_rows(path)
        (record,), _ = read_records([path])
        upstream_winner = {cshogi.BLACK_WIN: "black", cshogi.WHITE_WIN: "white", cshogi.DRAW: "draw"}
        assert upstream_winner[int(rows["gameResult"][0])] == record.winner  # no %TSUMI or %CHUDAN here
        feather.write_feather(upstream_table(rows), hcpe / f"{path.stem}.feather", compression="lz4")
    from_csa = build_datasets([csa], tmp_path / "out-csa", val_fraction=0.25, progress=False, workers=1)
    from_hcpe = build_datasets([hcpe], tmp_path / "out-hcpe", val_fraction=0.25, progress=False, workers=1)
    positions = sum(len(CSA.Parser.parse_file(str(p))[0].moves) for p in games)
    assert from_hcpe.stats.games == from_csa.stats.games == len(games)  # a game of rows is one game
    assert from_hcpe.stats.positions == from_csa.stats.positions == positions
    assert from_hcpe.games == from_csa.games == {"train": 8, "val": 2}  # round(10 * 0.25)
    assert not from_hcpe.stats.skipped and from_hcpe.stats.no_result == 0

    # the same games on the same sides: every split's rows, byte for byte
    for stage in (2, 3):
        for split in ("train", "val"):
            name = f"stage{stage}/{split}.feather"
            assert (tmp_path / "out-csa" / name).read_bytes() == (tmp_path / "out-hcpe" / name).read_bytes(), name
    assert from_hcpe.rows == from_csa.rows and from_hcpe.manifest["content_hash"] == from_csa.manifest["content_hash"]
    split_csa, split_hcpe = (json.loads((tmp_path / out / "split.json").read_text()) for out in ("out-csa", "out-hcpe"))
    for split in ("train", "val"):
        assert [Path(g.split("#")[0]).stem for g in split_hcpe[split]] == \
            [Path(g.split("#")[0]).stem for g in split_csa[split]]

    stage2_csa, stage2_hcpe = _stage2(tmp_path / "out-csa"), _stage2(tmp_path / "out-hcpe")
    assert len(stage2_csa["id"]) == len(np.unique(stage2_csa["id"]))
    for name in stage2_csa:
        assert np.array_equal(stage2_csa[name], stage2_hcpe[name]), name
    stage3_csa, stage3_hcpe = _stage3(tmp_path / "out-csa"), _stage3(tmp_path / "out-hcpe")
    assert stage3_csa.keys() == stage3_hcpe.keys() and set(stage3_csa) == set(stage2_csa["id"].tolist())
    for pid, (board, hand, count, plays, wins) in stage3_csa.items():
        other = stage3_hcpe[pid]
        assert (board, hand, count, plays) == other[:4] and wins == pytest.approx(other[4], abs=1e-3)
    # every play is counted once, but those of validation games in a position train has (dropped)
    train_ids = set(feather.read_table(tmp_path / "out-csa" / "stage2" / "train.feather").column("id").to_pylist())
    by_id = {record.game_id: record for record in read_records([csa])[0]}
    dropped = 0
    for game in (by_id[g] for g in split_csa["val"]):
        board = cshogi.Board(game.sfen)
        for move in game.moves:
            dropped += position_id(board) in train_ids
            board.push(move)
    assert dropped > 0 and sum(v[2] for v in stage3_csa.values()) == positions - dropped
    assert any(v[4] % 1 for v in stage3_csa.values())  # the draw's halves
    print(json.dumps({"positions": positions, "stage2_rows": len(stage2_csa["id"]),
                      "stage3_merged_rows": len(stage3_csa),
                      "stage3_split_rows": {"csa": from_csa.rows["stage3"], "hcpe": from_hcpe.rows["stage3"]}}))


def test_cli_builds_a_folder_of_upstream_files(tmp_path, capsys):
    folder = tmp_path / "hcpe"
    folder.mkdir()
    positions = 0
    for path in bundled(6):
        table = upstream_table(upstream_rows(path))
        feather.write_feather(table, folder / f"{path.stem}.feather", compression="zstd", chunksize=50)
        positions += table.num_rows
    assert sweep(["data", "build", "--games", str(folder), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "malformed" not in printed and f"{positions:,}" in printed
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["games"]["games_read"] == 6 and manifest["games"]["skipped_by_reason"] == {}  # games, not rows
    assert manifest["games"]["train"] + manifest["games"]["val"] == 6 and manifest["games"]["val"] == 1
    assert manifest["positions"]["total"] == positions and manifest["rows"]["stage3"]["train"] > 0
    table = {cells[0]: cells[1:] for line in printed.splitlines()
             if len(cells := [c.strip() for c in line.strip("│ ").split("│")]) == 4}
    assert table["games"] == ["5", "1", "6"] and table["positions"][-1] == f"{positions:,}"
