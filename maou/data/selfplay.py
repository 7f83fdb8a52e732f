"""Self-play engine games -> CSA records (``sweep data selfplay``).

A USI engine (Debian ``fairy-stockfish`` or ``gpsshogi``'s ``gpsusi``) plays both sides; cshogi
keeps the board, checks every engine move for legality, detects the ending and writes the record
with :class:`cshogi.CSA.Exporter`. The USI exchange is a small driver here rather than
``cshogi.usi.Engine`` because that one loops forever when an engine dies (it compares a bytes
line with ``''``) and never drains the engine's stderr; this one has a deadline per move.

Openings are varied by a seeded number (``OPENING_RANDOM_PLIES``) of uniformly random legal
moves at the start, so game ``i`` of seed ``s`` starts the same way on every run.

Endings, written so that ``cshogi.CSA.Parser`` reads the right winner (it reads ``%TSUMI`` as a
draw, so mate is written ``%TORYO`` like ``python -m cshogi.cli`` does):

* ``%TORYO``: the engine resigned, or the side to move is mated (winner: the other side);
* ``%KACHI``: the engine declared an impasse win (winner: the side to move);
* ``%SENNICHITE``: fourfold repetition (draw);
* ``%+ILLEGAL_ACTION`` / ``%-ILLEGAL_ACTION``: perpetual check by Black / White (that side loses);
* ``%ILLEGAL_MOVE``: the engine played an illegal move (it loses);
* ``%JISHOGI``: ``max_plies`` reached (draw, as ``cshogi.cli`` writes it).
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cshogi
import numpy as np
from cshogi import CSA

from maou.errors import UserError

#: engine name (CLI choice) -> (binary, Debian package that provides it, extra USI options).
ENGINES = {
    "fairy-stockfish": ("fairy-stockfish", "fairy-stockfish", {"Threads": 1, "Hash": 16}),
    "gpsusi": ("gpsusi", "gpsshogi", {"Thread": 1}),
}
#: Uniformly random legal moves played before the engine takes over: a seeded count in this range.
OPENING_RANDOM_PLIES = (2, 6)
#: Seconds an engine may take beyond its move time before it is declared dead.
MOVE_GRACE_S = 20.0
_EXTRA_DIRS = ("/usr/games", "/usr/local/games")


@dataclass
class SelfplaySummary:
    engine: str
    games: int
    paths: list[Path] = field(default_factory=list)
    endings: Counter = field(default_factory=Counter)
    plies: int = 0
    seconds: float = 0.0


def find_engine(engine: str) -> str:
    """Path of the engine binary; :class:`UserError` naming the Debian package when absent."""
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    binary, package, _ = ENGINES[engine]
    path = shutil.which(binary) or shutil.which(binary, path=os.pathsep.join(_EXTRA_DIRS))
    if path is None:
        raise UserError(f"engine binary {binary!r} not found; install it with "
                        f"`apt-get install {package}` (Debian package {package})")
    return path


class UsiEngine:
    """Minimal USI client: ``usi``/``isready``/``position``/``go``/``quit`` with deadlines."""

    def __init__(self, path: str, options: Mapping[str, object] | None = None):
        self.path = path
        self.proc = subprocess.Popen([path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, cwd=os.path.dirname(path) or None)
        self._buffer = b""
        self.name = os.path.basename(path)
        self.option_names: set[str] = set()
        self._send("usi")
        for line in self._lines_until("usiok", 30.0):
            if line.startswith("id name "):
                self.name = line[len("id name "):]
            elif line.startswith("option name "):
                self.option_names.add(line.split()[2])
        for name, value in (options or {}).items():
            if name in self.option_names:
                self._send(f"setoption name {name} value {value}")
        self.isready()

    def _send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode("ascii") + b"\n")
        self.proc.stdin.flush()

    def _readline(self, deadline: float) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name}: no answer in time")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"{self.name}: engine exited (code {self.proc.poll()})")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode("utf-8", errors="replace").strip()

    def _lines_until(self, prefix: str, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while True:
            line = self._readline(deadline)
            yield line
            if line.startswith(prefix):
                return

    def isready(self) -> None:
        self._send("isready")
        for _ in self._lines_until("readyok", 60.0):
            pass

    def newgame(self) -> None:
        self._send("usinewgame")
        self.isready()

    def bestmove(self, usi_moves: list[str], movetime_ms: int) -> str:
        """The engine's move (USI string, or ``resign`` / ``win``) for startpos + ``usi_moves``."""
        self._send("position startpos" + (" moves " + " ".join(usi_moves) if usi_moves else ""))
        self._send(f"go btime 0 wtime 0 byoyomi {movetime_ms}")
        for line in self._lines_until("bestmove", movetime_ms / 1000 + MOVE_GRACE_S):
            last = line
        return last.split()[1]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send("quit")
                self.proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def play_game(engine: UsiEngine, rng: np.random.Generator, movetime_ms: int, max_plies: int,
              path: Path, header_comment: str = "",
              opening_plies: tuple[int, int] = OPENING_RANDOM_PLIES) -> tuple[str, int]:
    """Play one game, write it to ``path`` (atomically); returns (CSA ending, plies).

    The first ``rng.integers(opening_plies[0], opening_plies[1] + 1)`` plies are random legal moves.
    """
    board = cshogi.Board()
    moves: list[int] = []
    usi_moves: list[str] = []
    repetitions: Counter = Counter({board.zobrist_hash(): 1})
    random_plies = int(rng.integers(opening_plies[0], opening_plies[1] + 1))
    engine.newgame()
    ending = "%JISHOGI"
    while len(moves) < max_plies:
        if board.is_game_over():  # no legal move: the side to move is mated
            ending = "%TORYO"
            break
        if len(moves) < random_plies:
            legal = list(board.legal_moves)
            move = legal[int(rng.integers(len(legal)))]
        else:
            answer = engine.bestmove(usi_moves, movetime_ms)
            if answer == "resign":
                ending = "%TORYO"
                break
            if answer == "win":
                ending = "%KACHI"
                break
            move = board.move_from_usi(answer)
            if not board.is_legal(move):
                ending = "%ILLEGAL_MOVE"
                break
        usi_moves.append(cshogi.move_to_usi(move))
        moves.append(move)
        board.push(move)
        key = board.zobrist_hash()
        repetitions[key] += 1
        if repetitions[key] >= 4:
            draw = board.is_draw()
            if draw == cshogi.REPETITION_WIN:  # the side that just moved gave perpetual check
                ending = "%+ILLEGAL_ACTION" if board.turn == cshogi.WHITE else "%-ILLEGAL_ACTION"
            elif draw == cshogi.REPETITION_LOSE:
                ending = "%+ILLEGAL_ACTION" if board.turn == cshogi.BLACK else "%-ILLEGAL_ACTION"
            else:
                ending = "%SENNICHITE"
            break
    else:
        if board.is_game_over():
            ending = "%TORYO"
    tmp = path.with_name(path.name + ".tmp")
    exporter = CSA.Exporter(str(tmp))
    exporter.info(cshogi.Board(), [engine.name, engine.name], comment=header_comment or None, version="V2")
    for move in moves:
        exporter.move(move)
    exporter.endgame(ending)
    exporter.close()
    os.replace(tmp, path)
    return ending, len(moves)


def play_games(engine: str, games: int, out_dir: str | Path, movetime_ms: int = 30, max_plies: int = 256,
               seed: int = 0, progress: bool = True) -> SelfplaySummary:
    """Play ``games`` self-play games; one ``selfplay-<engine>-<seed>-<i>.csa`` per game in ``out_dir``."""
    if games < 1:
        raise UserError(f"--games must be >= 1, got {games}")
    if movetime_ms < 1 or max_plies < 1:
        raise UserError("--movetime-ms and --max-plies must be >= 1")
    binary = find_engine(engine)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = SelfplaySummary(engine, games)
    started = time.perf_counter()
    usi = None
    try:
        usi = UsiEngine(binary, ENGINES[engine][2])
        from rich.progress import Progress

        with Progress(disable=not progress, transient=False) as bar:
            task = bar.add_task(f"self-play {engine}", total=games)
            for i in range(games):
                rng = np.random.default_rng([seed, i])
                path = out / f"selfplay-{engine}-{seed}-{i:04d}.csa"
                comment = (f"maou selfplay engine={engine} seed={seed} game={i} "
                           f"movetime_ms={movetime_ms} max_plies={max_plies}")
                ending, plies = play_game(usi, rng, movetime_ms, max_plies, path, comment)
                summary.paths.append(path)
                summary.endings[ending] += 1
                summary.plies += plies
                bar.advance(task)
    except (RuntimeError, OSError) as exc:
        raise UserError(f"engine {engine} ({binary}): {exc}") from exc
    finally:
        if usi is not None:
            usi.close()
    summary.seconds = time.perf_counter() - started
    return summary


__all__ = ["ENGINES", "SelfplaySummary", "UsiEngine", "find_engine", "play_game", "play_games"]
