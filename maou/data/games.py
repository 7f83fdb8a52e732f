"""The validated game record (:class:`GameRecord`: a CSA or KIF game, or an HCPE row, with its
result and, for HCPE rows, its :class:`HcpeGame`) and what a read of record files counts
(:class:`ReadStats`).

Nothing bad is silent and nothing crashes: each rejected game, file or block is counted in
:class:`ReadStats` under a reason (``malformed``, ``unreadable``, ``no moves``, ``illegal move``,
``duplicate game``, ``unsupported file``), with a few examples.

Results (:attr:`GameRecord.winner`): ``black``, ``white``, ``draw``, or ``None`` when the record
has none (:mod:`maou.data.kifu` and :mod:`maou.data.hcpe` say when). Games without a result still
give Stage 2 positions; Stage 3 (which needs a result) leaves them out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import cshogi
import numpy as np

from maou.data.tally import Tally

Winner = Literal["black", "white", "draw"]

_CSHOGI_WINNERS: dict[int, Winner] = {cshogi.BLACK_WIN: "black", cshogi.WHITE_WIN: "white", cshogi.DRAW: "draw"}


class HcpeGame(NamedTuple):
    """The game of HCPE rows: ``key``, 16 bytes naming it (:func:`~maou.data.hcpe.hcpe_game_key`), and
    ``name``, as ``split.json`` lists it: ``FILE#GAME`` (the file its rows were first read from, the
    game part of their ids) or ``FILE`` (rows without an id)."""

    key: bytes
    name: str


@dataclass(frozen=True)
class GameRecord:
    """One validated game: every move in ``moves`` (cshogi 32-bit moves) is legal from ``sfen``."""

    source: str
    index: int
    sfen: str
    moves: tuple[int, ...]
    winner: Winner | None
    ending: str
    fmt: Literal["csa", "kif", "hcpe"] = "csa"
    #: HCPE rows: the row's game (:class:`HcpeGame`, its key equal for every row of that game, in
    #: any file); None for a CSA or KIF record, a game of its own.
    hcpe_game: HcpeGame | None = None

    @property
    def game_id(self) -> str:
        return f"{self.source}#{self.index}"


@dataclass
class ReadStats:
    """What a read found: files, games read, and records skipped by reason (with examples)."""

    files: int = 0
    games: int = 0
    positions: int = 0
    no_result: int = 0
    #: The records skipped, by reason (``skipped`` and ``examples`` are its counts and examples).
    skips: Tally = field(default_factory=Tally)

    @property
    def skipped(self) -> Counter:
        return self.skips.counts

    @property
    def examples(self) -> dict[str, list[str]]:
        return self.skips.examples

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        self.skips.add(reason, where, detail)

    def merge(self, other: ReadStats) -> None:
        """Add ``other``'s counts, as if its records had been read after these."""
        self.files += other.files
        self.games += other.games
        self.positions += other.positions
        self.no_result += other.no_result
        self.skips.merge(other.skips)

    @property
    def games_skipped(self) -> int:
        return self.skips.total

    def to_dict(self) -> dict:
        return {"files": self.files, "games_read": self.games, "games_skipped": self.games_skipped,
                "games_without_result": self.no_result, "positions": self.positions,
                "skipped_by_reason": self.skips.counts_by_reason(),
                "skipped_examples": self.skips.examples_by_reason()}


def winner_from_cshogi(win: int | None) -> Winner | None:
    """The :data:`Winner` of a cshogi result (``DRAW``, ``BLACK_WIN``, ``WHITE_WIN``), else None."""
    return None if win is None else _CSHOGI_WINNERS.get(int(win))


def replay(sfen: str, moves: Iterable[int]) -> tuple[cshogi.Board, int | None]:
    """Replay ``moves`` from ``sfen``; returns (final board, 1-based ply of the first illegal move or None)."""
    board = cshogi.Board()
    board.set_sfen(sfen)
    for ply, move in enumerate(moves, start=1):
        if not move or not board.is_legal(move):
            return board, ply
        board.push(move)
    return board, None


def game_digest(record: GameRecord) -> bytes:
    """16 bytes naming a game's start position and moves: equal for the games ``iter_records`` calls
    duplicates (HCPE rows are never duplicates: :attr:`GameRecord.hcpe_game` names their game)."""
    import hashlib

    sfen = record.sfen.encode()
    digest = hashlib.blake2b(len(sfen).to_bytes(4, "little") + sfen, digest_size=16)
    digest.update(np.asarray(record.moves, dtype=np.uint32).tobytes())
    return digest.digest()


def short_error(exc: BaseException) -> str:
    """``Type: first line`` of ``exc`` (200 characters at most): a skip's detail."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:200]


__all__ = ["GameRecord", "HcpeGame", "ReadStats", "Winner", "game_digest", "replay", "short_error",
           "winner_from_cshogi"]
