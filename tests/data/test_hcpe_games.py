"""HCPE rows gathered into games: upstream's converter writes a game's positions as rows whose
``id`` is ``<game>_<ply>``, one file per game. The build keeps every game on one side of the
split, whatever the files: one game per file, several games in one file, one game across files
(and shards), files without an ``id`` (a game each); and it splits them exactly as it splits the
same games read as CSA records: the same games on the same sides, the same rows byte for byte."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import cshogi
import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pytest
from cshogi import CSA
from test_hcpe import FLOODGATE, bundled, upstream_rows, upstream_table

from maou.data import pipeline
from maou.data.build import build_datasets
from maou.data.hcpe import hcpe_game_parts, read_hcpe_table
from maou.data.sources import read_records
from maou.shogi import position_id

SPLITS = ("train", "val")
VAL_FRACTION, SEED = 0.25, 5


@dataclass
class Corpus:
    """Real games (floodgate and bundled self-play), in build order, with the position ids of each."""

    games: list[Path]
    positions: list[set[int]]
    #: Position id -> the games (indices) it occurs in.
    owners: dict[int, set[int]]
    plies: int
    csa_out: Path

    def union(self, games: set[int]) -> set[int]:
        return set().union(*(self.positions[g] for g in games))


def _positions(path: Path) -> tuple[set[int], int]:
    kif = CSA.Parser.parse_file(str(path))[0]
    board, ids = cshogi.Board(kif.sfen), set()
    for move in kif.moves:
        ids.add(position_id(board))
        board.push(move)
    return ids, len(kif.moves)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    """12 games (a draw by repetition, time-up, resignations) and their CSA build: the CSA copies are
    named ``NN-...`` so every layout below lists the same games in the same order."""
    root = tmp_path_factory.mktemp("corpus")
    games = [*FLOODGATE, *bundled(9)]
    csa = root / "csa"
    csa.mkdir()
    positions, owners, plies = [], {}, 0
    for i, path in enumerate(games):
        shutil.copy2(path, csa / f"{i:02d}-{path.name}")
        ids, n = _positions(path)
        positions.append(ids)
        plies += n
        for pid in ids:
            owners.setdefault(pid, set()).add(i)
    repeated = {pid for pid, owner in owners.items() if len(owner) > 1}
    # positions repeat across games (the start position in all of them, some openings in two)
    assert len(repeated) >= 3 and max(len(owners[pid]) for pid in repeated) == len(games)
    build_datasets([csa], root / "out-csa", val_fraction=VAL_FRACTION, split_seed=SEED, progress=False, workers=1)
    return Corpus(games, positions, owners, plies, root / "out-csa")


def _table(path: Path, rows: slice = slice(None), ids: bool = True) -> pa.Table:
    table = upstream_table(upstream_rows(path)).slice(rows.start or 0, None)
    if rows.stop is not None:
        table = table.slice(0, rows.stop - (rows.start or 0))
    return table if ids else table.drop_columns(["id"])


def _write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    feather.write_feather(table, path, compression="lz4", chunksize=64)


def _ids(out: Path, stage: int) -> dict[str, set[int]]:
    return {split: set(feather.read_table(out / f"stage{stage}" / f"{split}.feather").column("id").to_pylist())
            for split in SPLITS}


def check_split_by_game(corpus: Corpus, out: Path) -> dict[str, set[int]]:
    """Every game on one side, every row where its game's side puts it; returns the games of each side."""
    sides: dict[str, set[int]] = {split: set() for split in SPLITS}
    for stage in (2, 3):
        ids = _ids(out, stage)
        # each row's position back to its games: a game's own positions (in no other game) are all on one side
        for game, positions in enumerate(corpus.positions):
            own = {pid for pid in positions if corpus.owners[pid] == {game}}
            assert len(own) > 20
            found = [split for split in SPLITS if own & ids[split]]
            assert len(found) == 1, f"stage {stage}: game {corpus.games[game].name} has positions in {found}"
            assert own <= ids[found[0]]
            sides[found[0]].add(game)
        train, val = corpus.union(sides["train"]), corpus.union(sides["val"])
        assert ids["train"] == train
        # validation drops the positions seen in train, at both stages (every game has a result): no id
        # in both splits, though some positions (the start position) are in a train and a val game
        assert ids["val"] == val - train and not ids["train"] & ids["val"] and train & val
    assert not sides["train"] & sides["val"] and len(sides["train"] | sides["val"]) == len(corpus.games)
    assert len(sides["val"]) == round(len(corpus.games) * VAL_FRACTION)
    return sides


def check_as_csa(corpus: Corpus, out: Path, summary) -> None:
    """The split of the CSA build of the same games: the same rows on each side, byte for byte; the
    same counts of games (not rows) in the summary and the manifests."""
    for stage in (2, 3):
        for split in SPLITS:
            name = f"stage{stage}/{split}.feather"
            assert (out / name).read_bytes() == (corpus.csa_out / name).read_bytes(), name
    assert check_split_by_game(corpus, out) == check_split_by_game(corpus, corpus.csa_out)
    csa = json.loads((corpus.csa_out / "manifest.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    n = len(corpus.games)
    assert summary.stats.games == manifest["games"]["games_read"] == csa["games"]["games_read"] == n
    assert summary.stats.positions == manifest["games"]["positions"] == corpus.plies
    assert summary.games == {"train": n - 3, "val": 3} and manifest["games"]["games_without_result"] == 0
    for key in ("train", "val", "games_skipped", "games_without_result", "positions"):
        assert manifest["games"][key] == csa["games"][key], key
    for stage in ("stage2", "stage3"):
        games = json.loads((out / stage / "manifest.json").read_text())["games"]
        assert (games["games_read"], games["train"], games["val"]) == (n, n - 3, 3)
    assert manifest["content_hash"] == csa["content_hash"] and manifest["positions"] == csa["positions"]
    split = json.loads((out / "split.json").read_text())
    assert {s: len(v) for s, v in split.items()} == {"train": n - 3, "val": 3}  # games, not rows


def test_one_file_per_game_splits_as_the_csa_games(corpus, tmp_path):
    folder = tmp_path / "hcpe"
    for i, path in enumerate(corpus.games):
        _write(_table(path), folder / f"{i:02d}-{path.stem}.feather")
    summary = build_datasets([folder], tmp_path / "out", val_fraction=VAL_FRACTION, split_seed=SEED, progress=False,
                             workers=1)
    check_as_csa(corpus, tmp_path / "out", summary)
    split = json.loads((tmp_path / "out" / "split.json").read_text())
    named = [Path(g).name for s in SPLITS for g in split[s]]
    assert sorted(named) == sorted(f"{i:02d}-{p.stem}.feather#{p.stem}" for i, p in enumerate(corpus.games))


def test_files_without_ids_are_a_game_each(corpus, tmp_path):
    """No ``id`` column, or nulls in it: upstream writes one file per game, so the file is the game."""
    folder = tmp_path / "hcpe"
    for i, path in enumerate(corpus.games):
        table = _table(path, ids=i % 3 != 0)
        if i % 3 == 1:  # an id column of nulls
            nulls = pa.nulls(table.num_rows, pa.large_string())
            table = table.set_column(table.schema.get_field_index("id"), "id", nulls)
        _write(table, folder / f"{i:02d}-{path.stem}.feather")
    records, stats = read_records([folder])
    assert stats.games == len(corpus.games) and stats.positions == len(records) == corpus.plies
    summary = build_datasets([folder], tmp_path / "out", val_fraction=VAL_FRACTION, split_seed=SEED, progress=False,
                             workers=1)
    check_as_csa(corpus, tmp_path / "out", summary)
    split = json.loads((tmp_path / "out" / "split.json").read_text())
    without = [g for s in SPLITS for g in split[s] if "#" not in Path(g).name]  # a game without ids: its file
    assert len(without) == 8 and all(g.endswith(".feather") for g in without)


@pytest.mark.parametrize("workers", [1, 2])
def test_games_in_one_file_and_across_files_and_shards(corpus, tmp_path, monkeypatch, workers):
    """Two games' rows in one file (told apart by id), one game's rows in two files (and, built on
    small shards, in two shards: one game): the same split as the CSA build."""
    monkeypatch.setattr(pipeline, "SHARD_BYTES", (1, 1))  # a shard a file
    folder = tmp_path / "hcpe"
    games = corpus.games
    _write(pa.concat_tables([_table(games[0]), _table(games[1])]), folder / "00-two-games.feather")
    half = len(upstream_rows(games[2])["id"]) // 2
    _write(_table(games[2], slice(0, half)), folder / "02a-first-half.feather")
    _write(_table(games[2], slice(half, None)), folder / "02b-second-half.feather")
    for i, path in enumerate(games[3:], start=3):
        _write(_table(path), folder / f"{i:02d}-{path.stem}.feather")
    plan = pipeline.plan_build(sorted(folder.iterdir()), tmp_path / "x", workers=workers)
    by_shard = {Path(f).name: shard.number for shard in plan.shards for f in shard.files}
    assert by_shard["02a-first-half.feather"] != by_shard["02b-second-half.feather"]

    records, stats = read_records([folder])
    assert (stats.games, stats.positions) == (len(games), corpus.plies)
    keys = {r.source.rsplit("/", 1)[1]: set() for r in records}
    for r in records:
        assert r.hcpe_game is not None
        keys[r.source.rsplit("/", 1)[1]].add(r.hcpe_game.key)
    assert len(keys["00-two-games.feather"]) == 2 and keys["02a-first-half.feather"] == keys["02b-second-half.feather"]

    summary = build_datasets([folder], tmp_path / "out", val_fraction=VAL_FRACTION, split_seed=SEED, progress=False,
                             workers=workers)
    check_as_csa(corpus, tmp_path / "out", summary)
    split = json.loads((tmp_path / "out" / "split.json").read_text())
    named = {Path(g).name for s in SPLITS for g in split[s]}
    assert {f"00-two-games.feather#{games[0].stem}", f"00-two-games.feather#{games[1].stem}",
            f"02a-first-half.feather#{games[2].stem}"} <= named  # a game across files: named by its first


def test_a_game_counts_once_and_without_result_only_when_no_row_has_one(corpus, tmp_path):
    a, b = corpus.games[3], corpus.games[4]
    first = _table(a)
    results = pa.array([None] * 10 + first.column("gameResult").to_pylist()[10:], pa.int8())
    first = first.set_column(first.schema.get_field_index("gameResult"), "gameResult", results)
    _write(first, tmp_path / "a.feather")  # a result on some rows: a game with a result
    _write(_table(b).drop_columns(["gameResult"]), tmp_path / "b.feather")  # no result: Stage 2 only
    records, stats = read_records([tmp_path])
    assert (stats.games, stats.no_result) == (2, 1) and stats.positions == len(records)
    summary = build_datasets([tmp_path / "a.feather", tmp_path / "b.feather"], tmp_path / "out", val_fraction=0.5,
                             progress=False, workers=1)
    assert summary.stats.to_dict() == stats.to_dict() and summary.games == {"train": 1, "val": 1}


def test_game_parts_of_ids():
    ids = pa.chunked_array([pa.array(["g.hcpe_0", "g.hcpe_12", None, "x_12_3", "nosuffix"], pa.large_string()),
                            pa.array(["", "_4", "h_1", "g.hcpe", "x_12_1"], pa.large_string())])
    games, names = hcpe_game_parts(ids)
    assert names == ("g.hcpe", "x_12", "nosuffix", "h")
    assert games.tolist() == [0, 0, -1, 1, 2, -1, -1, 3, 0, 1]  # null, empty: the file's game
    for form in (ids.cast(pa.string()), ids.cast(pa.string_view()), ids.combine_chunks().dictionary_encode(),
                 pa.chunked_array([c.dictionary_encode() for c in ids.chunks])):
        assert hcpe_game_parts(form)[0].tolist() == games.tolist(), form.type
    assert hcpe_game_parts(pa.chunked_array([], pa.large_string()))[0].tolist() == []
    with pytest.raises(ValueError, match="not strings"):
        hcpe_game_parts(pa.array([1, 2]))


def test_an_id_that_is_not_text_makes_the_file_malformed(corpus, tmp_path):
    table = _table(corpus.games[3])
    table = table.set_column(table.schema.get_field_index("id"), "id", pa.array(np.arange(table.num_rows)))
    _write(table, tmp_path / "int-ids.feather")
    with pytest.raises(ValueError, match="'id' is int64"):
        read_hcpe_table(tmp_path / "int-ids.feather")
    records, stats = read_records([tmp_path])
    assert records == [] and stats.skipped == {"malformed": 1}
