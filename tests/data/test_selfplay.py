"""Self-play: CSA endings that cshogi reads back with the right winner (scripted engines), a missing
engine named with its Debian package, and two real short games when fairy-stockfish is installed."""

from __future__ import annotations

import shutil
from pathlib import Path

import cshogi
import numpy as np
import pytest

from maou.cli import main as sweep
from maou.data import selfplay
from maou.data.selfplay import find_engine, play_game, play_games
from maou.data.sources import read_records
from maou.errors import UserError


class ScriptedEngine:
    """Stands in for :class:`maou.data.selfplay.UsiEngine`: answers from a script of USI moves."""

    name = "scripted"

    def __init__(self, script: list[str]):
        self.script = list(script)

    def newgame(self) -> None:
        pass

    def bestmove(self, usi_moves: list[str], movetime_ms: int) -> str:
        return self.script[len(usi_moves) % len(self.script)] if self.script else "resign"


def play(tmp_path: Path, script: list[str], max_plies: int = 256, name: str = "g.csa"):
    path = tmp_path / name
    ending, plies = play_game(ScriptedEngine(script), np.random.default_rng(0), 10, max_plies, path,
                              opening_plies=(0, 0))
    records, stats = read_records([path])
    return ending, plies, records, stats, path.read_text()


def test_resignation(tmp_path):
    ending, plies, records, stats, text = play(tmp_path, ["7g7f", "3c3d", "2g2f", "resign"])
    assert (ending, plies) == ("%TORYO", 3)
    assert records[0].winner == "black" and text.rstrip().endswith("%TORYO")


def test_impasse_declaration(tmp_path):
    ending, plies, records, _, _ = play(tmp_path, ["7g7f", "3c3d", "win"])
    assert (ending, records[0].winner) == ("%KACHI", "black")


def test_mate_is_written_as_toryo(tmp_path):
    """Replaying a bundled game that ended in mate: the mated side to move loses (%TORYO, not %TSUMI)."""
    from maou.data.games import replay

    for path in sorted((Path(__file__).resolve().parents[2] / "data" / "games").glob("*.csa"))[:20]:
        game = read_records([path])[0][0]
        board, _ = replay(game.sfen, game.moves)
        if board.is_game_over():
            break
    else:
        pytest.fail("none of the first 20 bundled games ends in mate (the corpus is part of the repository)")
    script = [cshogi.move_to_usi(m) for m in game.moves]
    ending, plies, records, _, _ = play(tmp_path, script)
    assert (ending, plies) == ("%TORYO", len(script))
    assert records[0].winner == ("black", "white")[1 - board.turn] == game.winner


def test_repetition_and_max_plies(tmp_path):
    shuffle = ["5i5h", "5a5b", "5h5i", "5b5a"]
    ending, plies, records, _, _ = play(tmp_path, shuffle, name="rep.csa")
    assert (ending, plies, records[0].winner) == ("%SENNICHITE", 12, "draw")
    ending, plies, records, _, _ = play(tmp_path, shuffle, max_plies=6, name="max.csa")
    assert (ending, plies, records[0].winner) == ("%JISHOGI", 6, "draw")


def test_illegal_engine_move_loses(tmp_path):
    ending, plies, records, _, text = play(tmp_path, ["7g7f", "7g7f"])
    assert (ending, plies) == ("%ILLEGAL_MOVE", 1)
    assert records[0].winner == "black"  # White (to move) played an illegal move


def test_missing_engine_names_the_debian_package(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(selfplay.shutil, "which", lambda *a, **k: None)
    with pytest.raises(UserError, match="apt-get install gpsshogi"):
        find_engine("gpsusi")
    assert sweep(["data", "selfplay", "--games", "1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "apt-get install fairy-stockfish" in err


@pytest.mark.skipif(shutil.which("fairy-stockfish") is None and not Path("/usr/games/fairy-stockfish").exists(),
                    reason="fairy-stockfish not installed (Debian package fairy-stockfish)")
def test_real_selfplay_two_short_games(tmp_path, capsys):
    out = tmp_path / "games"
    code = sweep(["data", "selfplay", "--engine", "fairy-stockfish", "--games", "2", "--out", str(out),
                  "--movetime-ms", "5", "--max-plies", "24", "--seed", "7"])
    assert code == 0
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["selfplay-fairy-stockfish-7-0000.csa", "selfplay-fairy-stockfish-7-0001.csa"]
    records, stats = read_records(files)
    assert stats.games == 2 and stats.games_skipped == 0
    for record in records:
        assert 0 < len(record.moves) <= 24 and record.winner in ("black", "white", "draw")
        assert record.ending in ("%TORYO", "%JISHOGI", "%SENNICHITE", "%KACHI")
    # seeded openings: game i of seed s always starts with the same random plies
    again = play_games("fairy-stockfish", 1, tmp_path / "again", movetime_ms=5, max_plies=8, seed=7, progress=False)
    replay, _ = read_records(again.paths)
    rng = np.random.default_rng([7, 0])
    random_plies = int(rng.integers(*selfplay.OPENING_RANDOM_PLIES, endpoint=True))
    assert replay[0].moves[:random_plies] == records[0].moves[:random_plies]


def test_engine_that_dies_is_a_user_error(monkeypatch, tmp_path):
    fake = tmp_path / "fake-engine"
    fake.write_text("#!/bin/sh\nread line\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(selfplay, "find_engine", lambda engine: str(fake))
    with pytest.raises(UserError, match="engine fairy-stockfish"):
        play_games("fairy-stockfish", 1, tmp_path / "out", progress=False)
