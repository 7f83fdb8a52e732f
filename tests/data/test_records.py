"""Reading game records: CSA (single and multi-game), KIF (UTF-8 and Shift-JIS), .gz, HCPE feather,
and bad records skipped and counted with their reason, never silently and never by crashing."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import cshogi
import numpy as np
import pytest
from cshogi import KIF
from sweep_helpers import bundled_games

from maou.data.kifu import decode_text, split_csa_games
from maou.data.sources import find_record_files, iter_records, read_records, record_format
from maou.errors import UserError

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "data" / "games"

HEADER = "V2\nN+black\nN-white\nPI\n+\n"
GAME_A = HEADER + "+7776FU\n-3334FU\n+2726FU\n-8384FU\n%TORYO\n"  # 4 plies, Black to move resigns
GAME_B = HEADER + "+2726FU\n-8384FU\n+2625FU\n%TORYO\n"  # 3 plies, White resigns


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def first_bundled(n: int) -> list[Path]:
    files = bundled_games(n)
    return files


def usi(record) -> list[str]:
    return [cshogi.move_to_usi(m) for m in record.moves]


def test_single_csa_game_and_winners(tmp_path):
    records, stats = read_records([write(tmp_path / "a.csa", GAME_A), write(tmp_path / "b.csa", GAME_B)])
    assert [usi(r) for r in records] == [["7g7f", "3c3d", "2g2f", "8c8d"], ["2g2f", "8c8d", "2f2e"]]
    assert [r.winner for r in records] == ["white", "black"]
    assert [r.ending for r in records] == ["%TORYO", "%TORYO"]
    assert records[0].sfen == cshogi.STARTING_SFEN
    assert (stats.files, stats.games, stats.positions, stats.games_skipped) == (2, 2, 7, 0)


def test_endings_draws_tsumi_and_no_result(tmp_path):
    moves = "+7776FU\n-3334FU\n+2726FU\n"
    texts = {"tsumi": "%TSUMI", "sennichite": "%SENNICHITE", "jishogi": "%JISHOGI", "chudan": "%CHUDAN",
             "none": "", "kachi": "%KACHI", "timeup": "%TIME_UP"}
    winners, no_result = {}, 0
    for name, ending in texts.items():
        records, stats = read_records([write(tmp_path / f"{name}.csa", HEADER + moves + ending + "\n")])
        assert stats.games_skipped == 0 and len(records) == 1
        winners[name] = records[0].winner
        no_result += stats.no_result
    # after 3 plies White is to move: %TSUMI (cshogi: draw) means Black mated; %KACHI is a declaration
    # by the side to move; %TIME_UP is a loss of the side to move
    assert winners == {"tsumi": "black", "sennichite": "draw", "jishogi": "draw", "chudan": None,
                       "none": None, "kachi": "white", "timeup": "black"}
    assert no_result == 2


def test_multi_game_csa(tmp_path):
    text = GAME_A + "/\n" + GAME_B + "/\n" + HEADER + "+5756FU\n%CHUDAN\n"
    for name, payload in (("lf.csa", text), ("crlf.csa", text.replace("\n", "\r\n"))):
        records, stats = read_records([write(tmp_path / name, payload)])
        assert [r.index for r in records] == [0, 1, 2]
        assert [len(r.moves) for r in records] == [4, 3, 1]
        assert [r.winner for r in records] == ["white", "black", None]
        assert len({r.game_id for r in records}) == 3
    assert split_csa_games("a\n/\nb") == ["a", "b"]


def test_multi_game_csa_golden(golden_dir):
    records, stats = read_records([golden_dir / "kifu" / "csa_multi_game.csa"])
    assert [(len(r.moves), r.winner, r.ending) for r in records] == [(1, "black", "%TORYO"), (2, None, "%CHUDAN")]


def test_kif_shift_jis_golden_matches_csa(golden_dir):
    kif, _ = read_records([golden_dir / "kifu" / "test_data_sjis.kif"])
    csa, _ = read_records([golden_dir / "kifu" / "test_data_1.csa"])
    assert len(kif) == 1 and kif[0].fmt == "kif"
    assert (len(kif[0].moves), kif[0].winner) == (163, "black")
    assert kif[0].moves == csa[0].moves  # the same game in both formats


def _export_kif(path: Path, moves: list[int]) -> Path:
    exporter = KIF.Exporter(str(path))  # cshogi writes .kif as cp932 (Shift-JIS), .kifu as UTF-8
    exporter.header(["先手の人", "後手の人"])
    board = cshogi.Board()
    for move in moves:
        exporter.move(move)
        board.push(move)
    exporter.end("resign")
    exporter.close()
    return path


def test_kif_shift_jis_and_utf8_and_gz(tmp_path):
    source, _ = read_records(first_bundled(1))
    moves = list(source[0].moves)
    sjis = _export_kif(tmp_path / "game.kif", moves)
    utf8 = _export_kif(tmp_path / "game.kifu", moves)
    with pytest.raises(UnicodeDecodeError):
        sjis.read_bytes().decode("utf-8")
    utf8_as_kif = tmp_path / "utf8.kif"
    shutil.copy(utf8, utf8_as_kif)  # a UTF-8 file named .kif (cshogi's parse_file would assume cp932)
    gz = tmp_path / "game.kif.gz"
    gz.write_bytes(gzip.compress(sjis.read_bytes()))
    for path in (sjis, utf8, utf8_as_kif, gz):
        records, stats = read_records([path])
        assert stats.games_skipped == 0, stats.to_dict()
        assert len(records) == 1 and records[0].moves == source[0].moves and records[0].fmt == "kif"
        # resignation by the side to move: the other side won
        loser = len(moves) % 2
        assert records[0].winner == ("black", "white")[1 - loser]


def test_csa_gz_and_folder_recursion(tmp_path):
    write(tmp_path / "corpus" / "one.csa", GAME_A)
    (tmp_path / "corpus" / "deep" / "er").mkdir(parents=True)
    (tmp_path / "corpus" / "deep" / "er" / "two.csa.gz").write_bytes(gzip.compress(GAME_B.encode()))
    write(tmp_path / "corpus" / "README.txt", "not a record")  # ignored inside folders
    files = find_record_files([tmp_path / "corpus"])
    assert [f.name for f in files] == ["two.csa.gz", "one.csa"]
    records, stats = read_records([tmp_path / "corpus"])
    assert sorted(len(r.moves) for r in records) == [3, 4] and stats.files == 2


def test_bundled_corpus_reads_cleanly():
    files = first_bundled(5)
    records, stats = read_records(files)
    assert stats.games == 5 and stats.games_skipped == 0
    for r in records:
        assert r.winner in ("black", "white", "draw") and len(r.moves) > 0
        assert Path(r.source).name.startswith("selfplay-fairy-stockfish-")


def test_bad_records_are_skipped_and_counted(tmp_path):
    bad = {
        "garbage.csa": "hello world\n",
        "truncated.csa": HEADER + "+7776FU\n-33",
        "nomoves.csa": HEADER + "%TORYO\n",
        "illegal.csa": HEADER + "+7776FU\n-3334FU\n+7775FU\n%TORYO\n",  # pawn jumps from 7g (moved) at ply 3
        "wrongside.csa": HEADER + "+7776FU\n+2726FU\n%TORYO\n",
        "illegal.kif": "手合割：平手\n手数----指手---------消費時間--\n   1 ７六歩(77)\n   2 ５五角(88)\n",
        "handicap.kif": "手合割：その他\n手数----指手---------消費時間--\n   1 ７六歩(77)\n",
    }
    paths = [write(tmp_path / name, text) for name, text in bad.items()]
    paths.append(tmp_path / "binary.csa")
    paths[-1].write_bytes(b"\x81\x20\xfe\x00garbage")
    paths.append(tmp_path / "notgzip.csa.gz")
    paths[-1].write_bytes(b"not gzip at all")
    paths.append(write(tmp_path / "notes.txt", GAME_A))
    paths.append(write(tmp_path / "good.csa", GAME_A))
    paths.append(write(tmp_path / "good-again.csa", GAME_A))
    records, stats = read_records(paths)
    assert [Path(r.source).name for r in records] == ["good.csa"]
    assert stats.skipped["illegal move"] == 3
    assert stats.skipped["no moves"] == 1
    assert stats.skipped["malformed"] == 3  # garbage, truncated mid-line, unknown KIF handicap
    assert stats.skipped["unreadable"] == 2
    assert stats.skipped["unsupported file"] == 1
    assert stats.skipped["duplicate game"] == 1
    assert stats.games_skipped == len(paths) - 1
    examples = " | ".join(sum(stats.examples.values(), []))
    assert "illegal move at ply 3" in examples and "illegal move at ply 2" in examples
    assert "truncated.csa" in examples and "good-again.csa" in examples
    summary = stats.to_dict()
    assert summary["games_read"] == 1 and summary["skipped_by_reason"]["unreadable"] == 2


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such game record"):
        list(iter_records([tmp_path / "nope"]))


def test_decode_and_formats():
    assert decode_text("７六歩".encode("cp932")) == "７六歩"
    assert decode_text(b"\xef\xbb\xbfV2\r\n") == "V2\n"
    with pytest.raises(ValueError):
        decode_text(b"\x81\x20\xfe")
    with pytest.raises(ValueError):
        decode_text(b"V2\x00\x00")  # binary
    assert [record_format(Path(n)) for n in ("a.CSA", "a.kif.gz", "a.kifu", "a.feather", "a.feather.gz", "a.txt")] == \
        ["csa", "kif", "kif", "hcpe", None, None]


def _hcpe_rows(game) -> tuple[np.ndarray, np.ndarray]:
    board = cshogi.Board(game.sfen)
    hcps = np.zeros((len(game.moves), 32), dtype=np.uint8)
    move16 = np.zeros(len(game.moves), dtype=np.uint16)
    for i, move in enumerate(game.moves):
        board.to_hcp(hcps[i])
        move16[i] = cshogi.move16(move)
        board.push(move)
    return hcps, move16


def test_hcpe_feather(tmp_path):
    import pyarrow as pa
    import pyarrow.feather as feather

    game = read_records(first_bundled(1))[0][0]
    hcps, move16 = _hcpe_rows(game)
    n = len(hcps)
    fixed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), n, [None, pa.py_buffer(hcps.tobytes())])
    result = {"black": cshogi.BLACK_WIN, "white": cshogi.WHITE_WIN, "draw": cshogi.DRAW}[game.winner]
    feather.write_feather(pa.table({"hcp": fixed, "eval": pa.array(np.zeros(n, np.int16)),
                                    "bestMove16": pa.array(move16),
                                    "gameResult": pa.array(np.full(n, result, np.int8))}), tmp_path / "full.feather")
    as_lists = pa.FixedSizeListArray.from_arrays(pa.array(hcps.ravel()), 32)
    feather.write_feather(pa.table({"hcp": as_lists}), tmp_path / "positions.feather")
    feather.write_feather(pa.table({"x": [1, 2]}), tmp_path / "nohcp.feather")

    records, stats = read_records([tmp_path / "full.feather"])
    assert len(records) == n and all(r.fmt == "hcpe" for r in records)
    assert [r.moves[0] for r in records] == list(game.moves)
    assert {r.winner for r in records} == {game.winner}
    records, stats = read_records([tmp_path / "positions.feather"])
    assert len(records) == n and all(r.moves == () and r.winner is None for r in records)
    assert records[5].sfen.split()[:3] == cshogi.Board(records[5].sfen).sfen().split()[:3]
    records, stats = read_records([tmp_path / "nohcp.feather"])
    assert records == [] and stats.skipped["malformed"] == 1
