"""Building the Stage 1/2/3 datasets: layout, column types, the by-game split, targets that match the
shogi encoding, upstream's golden aggregation, manifests, CLI errors and rebuild-only-when-needed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cshogi
import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pytest
from sweep_helpers import bundled_games

from maou import __version__
from maou.cli import main as sweep
from maou.data import build as build_module
from maou.data.build import build_datasets, ensure_datasets
from maou.data.positions import aggregate_stage3, encode_unique, extract_positions, legal_masks
from maou.data.sources import file_sha256, read_records, split_games
from maou.shogi import (
    BOARD_SHAPE,
    MOVE_LABELS_NUM,
    MOVE_LABELS_PACKED_BYTES,
    PIECES_IN_HAND_NUM,
    REACHABLE_SQUARES_NUM,
    STAGE1_ROWS_NUM,
    encode_position,
    legal_moves_mask,
    position_id,
)
from maou.trainer.config import DataConfig

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "data" / "games"
N_GAMES = 8


def copy_games(dest: Path, n: int, start: int = 0) -> Path:
    files = bundled_games(n, start)
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, dest / f.name)
    return dest


def column(table: pa.Table, name: str, shape: tuple[int, ...]) -> np.ndarray:
    array = table.column(name).combine_chunks()
    while pa.types.is_fixed_size_list(array.type):
        array = array.flatten()
    return array.to_numpy().reshape((table.num_rows, *shape))


def legal_masks_of(table: pa.Table) -> np.ndarray:
    """The (N, 1496) multi-hot of a Stage 2 table, unpacked with plain numpy."""
    packed = column(table, "legalMovesBits", (MOVE_LABELS_PACKED_BYTES,))
    return np.unpackbits(packed, axis=1, bitorder="little")


def policy_of(table: pa.Table) -> np.ndarray:
    """The (N, 1496) float16 policy of a Stage 3 table, from its sparse entries with plain pyarrow."""
    sparse = table.column("moveLabelSparse").combine_chunks()
    lengths = sparse.value_lengths().to_numpy()
    entries = sparse.flatten()
    labels, weights = entries.field("label").to_numpy(), entries.field("weight").to_numpy()
    assert all((np.diff(row) > 0).all() for row in np.split(labels, np.cumsum(lengths)[:-1]))  # ascending
    dense = np.zeros((table.num_rows, MOVE_LABELS_NUM), dtype=np.float16)
    dense[np.repeat(np.arange(table.num_rows), lengths), labels] = weights
    return dense


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    games = copy_games(root / "games", N_GAMES)
    summary = build_datasets([games], root / "out", val_fraction=0.25, split_seed=3, progress=False)
    return summary, root / "out", games


def read(out: Path, stage: int, split: str) -> pa.Table:
    return feather.read_table(out / f"stage{stage}" / f"{split}.feather")


def plays_at(records, ids: set[int]) -> int:
    """How many moves of ``records`` are played in a position of ``ids``."""
    plays = 0
    for record in records:
        board = cshogi.Board(record.sfen)
        for move in record.moves:
            plays += position_id(board) in ids
            board.push(move)
    return plays


def test_layout_and_column_types(built):
    summary, out, _ = built
    for path in ("manifest.json", "split.json", "stage1/all.feather", "stage1/manifest.json",
                 "stage2/train.feather", "stage2/val.feather", "stage2/manifest.json",
                 "stage3/train.feather", "stage3/val.feather", "stage3/manifest.json"):
        assert (out / path).is_file(), path
    board_type = pa.list_(pa.list_(pa.uint8(), BOARD_SHAPE[1]), BOARD_SHAPE[0])
    hand_type = pa.list_(pa.uint8(), PIECES_IN_HAND_NUM)
    stage1 = feather.read_table(out / "stage1" / "all.feather")
    assert stage1.num_rows == STAGE1_ROWS_NUM
    assert stage1.schema.field("boardIdPositions").type == board_type
    assert stage1.schema.field("reachableSquares").type == pa.list_(pa.uint8(), REACHABLE_SQUARES_NUM)
    for split in ("train", "val"):
        t2, t3 = read(out, 2, split), read(out, 3, split)
        assert t2.schema.field("id").type == pa.uint64()
        assert t2.schema.field("hcp").type == pa.binary(32)
        assert t2.schema.field("boardIdPositions").type == board_type
        assert t2.schema.field("piecesInHand").type == hand_type
        assert t2.schema.field("legalMovesBits").type == pa.list_(pa.uint8(), MOVE_LABELS_PACKED_BYTES)
        assert t3.schema.field("moveLabelSparse").type == pa.list_(
            pa.struct([("label", pa.uint16()), ("weight", pa.float16())]))
        assert t3.schema.field("resultValue").type == pa.float32()
        assert t3.schema.field("count").type == pa.uint32()
        assert t2.num_rows == summary.rows["stage2"][split] > 0
        assert t3.num_rows == summary.rows["stage3"][split] > 0
        ids = t2.column("id").to_numpy()
        assert (np.diff(ids.astype(np.float64)) >= 0).all() and len(np.unique(ids)) == len(ids)  # sorted, unique


def test_split_is_by_game(built):
    summary, out, games = built
    split = json.loads((out / "split.json").read_text())
    train, val = set(split["train"]), set(split["val"])
    assert not train & val
    assert len(train) + len(val) == N_GAMES and len(val) == 2  # round(8 * 0.25)
    assert {Path(g.split("#")[0]).name for g in train | val} == {f.name for f in games.iterdir()}
    # positions of a validation game are nowhere in train: each val position id is absent from stage 2 train
    train_ids = set(read(out, 2, "train").column("id").to_numpy().tolist())
    val_ids = set(read(out, 2, "val").column("id").to_numpy().tolist())
    assert not train_ids & val_ids
    # and re-deriving: every position of the val games is either a stage 2 val row or a dropped train duplicate
    val_games = [r for r in read_records([games])[0] if r.game_id.replace(str(games), "") in
                 {g.replace(str(games), "") for g in val}]
    board, seen = cshogi.Board(), set()
    for game in val_games:
        board.set_sfen(game.sfen)
        for move in game.moves:
            seen.add(position_id(board))
            board.push(move)
    assert val_ids <= seen
    assert seen - val_ids <= train_ids
    assert len(seen - val_ids) == summary.val_dropped_in_train


def test_split_games_properties():
    for n in (2, 3, 10, 101):
        for fraction in (0.01, 0.1, 0.5, 0.99):
            is_val = split_games(n, fraction, seed=0)
            assert 1 <= is_val.sum() <= n - 1
    assert split_games(1, 0.5, 0).sum() == 0
    assert (split_games(50, 0.2, 7) == split_games(50, 0.2, 7)).all()
    assert not (split_games(50, 0.2, 7) == split_games(50, 0.2, 8)).all()


def test_stage2_rows_match_the_encoding(built):
    _, out, _ = built
    board = cshogi.Board()
    for split in ("train", "val"):
        table = read(out, 2, split)
        hcps = np.frombuffer(table.column("hcp").combine_chunks().buffers()[1], dtype=np.uint8)
        hcps = hcps[: table.num_rows * 32].reshape(-1, 32)
        boards = column(table, "boardIdPositions", BOARD_SHAPE)
        hands = column(table, "piecesInHand", (PIECES_IN_HAND_NUM,))
        masks = legal_masks_of(table)
        ids = table.column("id").to_numpy()
        for i in range(0, table.num_rows, 7):
            board.set_hcp(hcps[i])
            expected_board, expected_hand = encode_position(board)
            assert (boards[i] == expected_board).all() and (hands[i] == expected_hand).all()
            assert (masks[i] == legal_moves_mask(board)).all()
            assert int(ids[i]) == position_id(board)
        assert 40 < masks.sum(axis=1).mean() < 200


def test_stage3_targets(built):
    summary, out, games = built
    records = {r.game_id.replace(str(games), ""): r for r in read_records([games])[0]}
    split = json.loads((out / "split.json").read_text())
    train_ids = set(read(out, 2, "train").column("id").to_pylist())  # every position of the train games
    for name in ("train", "val"):
        table = read(out, 3, name)
        policy = policy_of(table).astype(np.float32)
        value = table.column("resultValue").to_numpy()
        count = table.column("count").to_numpy()
        np.testing.assert_allclose(policy.sum(axis=1), 1.0, atol=2e-3)
        assert ((value >= 0) & (value <= 1)).all() and (count >= 1).all()
        split_games = [records[g.replace(str(games), "")] for g in split[name]]
        split_positions = sum(len(game.moves) for game in split_games)
        assert split_positions == summary.positions[name]
        # validation drops the positions train has (the start position, common openings)
        seen = plays_at(split_games, train_ids) if name == "val" else 0
        assert count.sum() == split_positions - seen and (name == "train" or seen > 0)
        if name == "val":
            assert not set(table.column("id").to_pylist()) & train_ids
        assert table.column("id").to_numpy().tolist() == sorted(table.column("id").to_numpy().tolist())
    # the two sides' value targets: the start position is Black to move in every game
    train = read(out, 3, "train")
    start_id = position_id(cshogi.Board())
    row = train.column("id").to_numpy().tolist().index(start_id)
    train_games = [records[g.replace(str(games), "")] for g in split["train"]]
    value = {"black": 1.0, "white": 0.0, "draw": 0.5}
    wins = sum(value[g.winner] for g in train_games if g.sfen == cshogi.STARTING_SFEN)
    assert train.column("count").to_numpy()[row] == len(train_games)
    assert train.column("resultValue").to_numpy()[row] == pytest.approx(wins / len(train_games))


def test_manifests(built):
    summary, out, games = built
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["package_version"] == __version__
    assert manifest["split_seed"] == 3 and manifest["val_fraction"] == 0.25
    assert manifest["sources"]["inputs"] == [str(games)] and manifest["sources"]["files"] == N_GAMES
    assert len(manifest["sources"]["content_sha256"]) == 64 and len(manifest["sources"]["listed"]) == N_GAMES
    assert manifest["games"]["games_read"] == N_GAMES and manifest["games"]["games_skipped"] == 0
    assert manifest["games"]["train"] + manifest["games"]["val"] == N_GAMES
    assert manifest["positions"]["total"] == sum(summary.positions.values())
    assert manifest["rows"]["stage2"] == summary.rows["stage2"]
    assert manifest["val_dropped_seen_in_train"] == summary.val_dropped_in_train
    assert "built_at" in manifest and manifest["build_seconds"] > 0
    assert len(manifest["content_hash"]) == 64  # recorded on every trial as its dataset_hash
    for name, entry in manifest["files"].items():
        path = out / name
        assert path.stat().st_size == entry["bytes"]
        assert file_sha256(path) == entry["sha256"]
    for stage in (1, 2, 3):
        stage_manifest = json.loads((out / f"stage{stage}" / "manifest.json").read_text())
        assert stage_manifest["stage"] == stage and stage_manifest["package_version"] == __version__
        assert set(stage_manifest["rows"]) == ({"all"} if stage == 1 else {"train", "val"})


def test_trainer_reads_the_datasets(built):
    import torch

    from maou.trainer.tensors import load_stage_data

    summary, out, _ = built
    for stage in (2, 3):
        data = load_stage_data(stage, out)
        assert len(data.train) == summary.rows[f"stage{stage}"]["train"]
        board, _, targets = data.val.batch(torch.arange(3))
        assert tuple(board.shape[1:]) == BOARD_SHAPE
        table = read(out, stage, "val")
        expected = legal_masks_of(table) if stage == 2 else policy_of(table).astype(np.float32)
        name = "legal_moves" if stage == 2 else "policy"
        assert (targets[name].numpy() == expected[:3]).all()


def test_vectorised_encoding_equals_per_board_functions():
    records, _ = read_records(bundled_games(3))
    pos = extract_positions(records)
    boards, hands, ids = encode_unique(pos)
    masks = legal_masks(pos)
    board = cshogi.Board()
    for i in range(len(pos)):  # each row again from its HCP, one board at a time
        board.set_hcp(pos.hcp[i])
        one_board, one_hand = encode_position(board)
        assert (boards[i] == one_board).all() and (hands[i] == one_hand).all() and ids[i] == position_id(board)
        if i % 5:
            continue
        assert (masks[i] == legal_moves_mask(board)).all()
        assert board.zobrist_hash() == int(pos.key[i])
    subset = np.array([3, 1, 4])
    assert (legal_masks(pos, subset) == masks[subset]).all()


def test_golden_preprocess_aggregation(golden_dir):
    """upstream's aggregation of test_data_1..3 (531 positions, 526 unique) is reproduced exactly."""
    kifu = golden_dir / "kifu"
    records, stats = read_records([kifu / f"test_data_{i}.csa" for i in (1, 2, 3)])
    assert stats.positions == 531
    pos = extract_positions(records)
    boards, hands, ids = encode_unique(pos)
    agg = aggregate_stage3(pos)
    with np.load(golden_dir / "preprocess_golden.npz") as z:
        golden = {k: z[k] for k in z.files}
    order = np.argsort(ids[agg.rows])
    assert (ids[agg.rows][order] == golden["hashes"]).all()
    assert (agg.count[order] == golden["counts"]).all()
    np.testing.assert_allclose(agg.wins[order], golden["win_counts"])
    assert (boards[agg.rows][order] == golden["board_id_positions"]).all()
    assert (hands[agg.rows][order] == golden["pieces_in_hand"]).all()
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    pair_row = rank[agg.pair_index]
    pairs = np.lexsort((agg.pair_label, pair_row))
    offsets = np.concatenate([[0], np.cumsum(np.bincount(pair_row, minlength=len(order)))])
    assert (offsets == golden["offsets"]).all()
    assert (agg.pair_label[pairs] == golden["move_label_indices"]).all()
    assert (agg.pair_count[pairs] == golden["move_label_values"]).all()
    np.testing.assert_allclose(agg.pair_wins[pairs], golden["move_win_values"])
    policy = agg.policy()[order]
    dense = np.zeros_like(policy, dtype=np.float64)
    dense[np.repeat(np.arange(len(order)), np.diff(golden["offsets"])), golden["move_label_indices"]] = \
        golden["move_label_values"]
    np.testing.assert_allclose(policy, dense / golden["counts"][:, None], atol=1e-3)


def test_golden_stage2_ids_are_upstream_position_ids(golden_dir):
    """stage2_golden ``ids`` are upstream's Zobrist ids (maou.shogi.position_id), not cshogi's zobrist_hash."""
    with np.load(golden_dir / "stage2_golden.npz") as z:
        hcps, ids, masks = z["hcps"], z["ids"], z["legal_moves_label"]
    board = cshogi.Board()
    for i in range(0, len(ids), 25):
        board.set_hcp(hcps[i])
        assert position_id(board) == int(ids[i]) != board.zobrist_hash()
        assert (legal_moves_mask(board) == masks[i]).all()


def test_cli_build_and_errors(tmp_path, capsys):
    games = copy_games(tmp_path / "games", 3)
    assert sweep(["data", "build", "--games", str(games), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "manifest.json").is_file()
    capsys.readouterr()

    assert sweep(["data", "build", "--games", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing" in err and "error" in err

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "broken.csa").write_text("not a game\n")
    assert sweep(["data", "build", "--games", str(empty), "--out", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no readable games" in err and "malformed 1" in err
    assert not (tmp_path / "o3" / "manifest.json").exists()


def test_skips_are_reported_in_the_manifest(tmp_path):
    games = copy_games(tmp_path / "games", 2)
    (games / "bad.csa").write_text("V2\nPI\n+\n+7776FU\n+7675FU\n%TORYO\n")  # Black moves twice
    (games / "chudan.csa").write_text("V2\nPI\n+\n+5756FU\n-5354FU\n%CHUDAN\n")
    summary = build_datasets([games], tmp_path / "out", progress=False)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    split = json.loads((tmp_path / "out" / "split.json").read_text())
    assert manifest["games"]["skipped_by_reason"] == {"illegal move": 1}
    assert "illegal move at ply 2" in manifest["games"]["skipped_examples"]["illegal move"][0]
    assert manifest["games"]["games_without_result"] == 1
    # the game without a result gives stage 2 positions but no stage 3 rows
    stage3 = sum(feather.read_table(tmp_path / "out" / "stage3" / f"{s}.feather").column("count").to_numpy().sum()
                 for s in ("train", "val"))
    by_id = {record.game_id: record for record in read_records([games])[0]}
    val_with_result = [by_id[g] for g in split["val"] if by_id[g].winner is not None]
    seen = plays_at(val_with_result, set(read(tmp_path / "out", 2, "train").column("id").to_pylist()))
    assert stage3 == sum(summary.positions.values()) - 2 - seen


def test_ensure_datasets_rebuilds_only_when_needed(tmp_path, monkeypatch):
    games = copy_games(tmp_path / "games", 3)
    config = DataConfig(games=(str(games),), dir=str(tmp_path / "data"), val_fraction=0.34, split_seed=0)
    calls = []
    real_build = build_module.build_datasets

    def counting_build(*args, **kwargs):
        calls.append(args)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(build_module, "build_datasets", counting_build)
    assert ensure_datasets(config, progress=False) == Path(config.dir)
    assert len(calls) == 1
    ensure_datasets(config, progress=False)
    assert len(calls) == 1  # up to date

    first = sorted(games.iterdir())[0]
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))
    ensure_datasets(config, progress=False)
    assert len(calls) == 1  # new mtime, same content: no rebuild

    ensure_datasets(DataConfig(games=config.games, dir=config.dir, val_fraction=0.34, split_seed=1), progress=False)
    assert len(calls) == 2  # other split seed
    ensure_datasets(DataConfig(games=config.games, dir=config.dir, val_fraction=0.5, split_seed=1), progress=False)
    assert len(calls) == 3  # other fraction

    copy_games(games, 1, start=N_GAMES + 1)  # a new game
    config = DataConfig(games=config.games, dir=config.dir, val_fraction=0.5, split_seed=1)
    ensure_datasets(config, progress=False)
    assert len(calls) == 4
    manifest = json.loads((Path(config.dir) / "manifest.json").read_text())
    assert manifest["games"]["games_read"] == 4

    (Path(config.dir) / "stage2" / "val.feather").unlink()  # a damaged build
    ensure_datasets(config, progress=False)
    assert len(calls) == 5
    with pytest.raises(Exception, match="no such game record"):
        ensure_datasets(DataConfig(games=(str(tmp_path / "nope"),), dir=str(tmp_path / "d2")), progress=False)


def test_hcpe_positions_feed_stage2(tmp_path):
    records, _ = read_records(bundled_games(1))
    game = records[0]
    board = cshogi.Board(game.sfen)
    hcps = np.zeros((len(game.moves), 32), dtype=np.uint8)
    for i, move in enumerate(game.moves):
        board.to_hcp(hcps[i])
        board.push(move)
    column_ = pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), len(hcps), [None, pa.py_buffer(hcps.tobytes())])
    feather.write_feather(pa.table({"hcp": column_}), tmp_path / "positions.feather")
    summary = build_datasets([tmp_path / "positions.feather"], tmp_path / "out", progress=False)
    unique = len({position_id(cshogi.Board(r.sfen)) for r in read_records([tmp_path / "positions.feather"])[0]})
    assert sum(summary.rows["stage2"].values()) + summary.val_dropped_in_train == unique
    assert sum(summary.rows["stage3"].values()) == 0  # no moves, no results: positions only


def test_ensure_datasets_accepts_the_same_folder_spelled_differently(tmp_path, monkeypatch):
    games = copy_games(tmp_path / "games", 2)
    ensure_datasets(DataConfig(games=(str(games),), dir=str(tmp_path / "data")), progress=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(build_module, "build_datasets", lambda *a, **k: pytest.fail("rebuilt"))
    ensure_datasets(DataConfig(games=("games",), dir="data"), progress=False)
    ensure_datasets(DataConfig(games=("./games/",), dir=str(tmp_path / "data")), progress=False)
