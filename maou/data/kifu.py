"""Reading CSA and KIF game records (and ``.gz`` of those) into validated
:class:`~maou.data.games.GameRecord` s.

Text is decoded as UTF-8 (with or without BOM), else as Shift-JIS (cp932). Parsing uses cshogi
(``CSA.Parser`` for CSA, one game per block of a multi-game file separated by a line ``/``;
``KIF.Parser`` for KIF) and every game is replayed with cshogi: a move that is not legal where it
is played rejects the game. Each rejected game, file or block is counted in the
:class:`~maou.data.games.ReadStats` (``malformed``, ``unreadable``, ``no moves``, ``illegal move``,
``duplicate game``).

Results: ``None`` when the record has none (``%CHUDAN``, no ending line, a KIF without its result
line). cshogi reads ``%TSUMI`` as a draw; here it is a win for the side that made the last move.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

import cshogi

from maou.data.games import GameRecord, ReadStats, Winner, replay, short_error, winner_from_cshogi

GZIP_SUFFIX = ".gz"

#: CSA endings with no winner although cshogi reports DRAW (an unfinished or unknown game).
_NO_RESULT_ENDINGS = {"", "%CHUDAN", "%ERROR"}
_DRAW_ENDINGS = {"%SENNICHITE", "%JISHOGI", "%HIKIWAKE", "%MAX_MOVES"}
_COLOURS: tuple[Winner, Winner] = ("black", "white")


def decode_text(data: bytes) -> str:
    """UTF-8 (BOM allowed), else Shift-JIS (cp932); newlines normalised to ``\\n``. ValueError if neither."""
    for encoding in ("utf-8-sig", "cp932"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if "\x00" in text:
            raise ValueError("binary data (NUL bytes), not a text record")
        return text.replace("\r\n", "\n").replace("\r", "\n")
    raise ValueError("neither UTF-8 nor Shift-JIS text")


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.lower().endswith(GZIP_SUFFIX):
        data = gzip.decompress(data)
    return data


def split_csa_games(text: str) -> list[str]:
    """Blocks of a (multi-game) CSA text: games are separated by a line holding only ``/``."""
    games: list[str] = []
    current: list[str] = []
    for line in text.split("\n"):
        if line.strip() == "/":
            games.append("\n".join(current))
            current = []
        else:
            current.append(line)
    games.append("\n".join(current))
    return games


def _csa_winner(ending: str, win: int, last_mover: int | None) -> Winner | None:
    if ending in _NO_RESULT_ENDINGS:
        return None
    if ending == "%TSUMI":  # cshogi says draw; the side that made the last move has mated
        return None if last_mover is None else _COLOURS[last_mover]
    if ending in _DRAW_ENDINGS:
        return "draw"
    winner = winner_from_cshogi(win)
    return None if winner == "draw" else winner  # an unknown ending that cshogi maps to DRAW


class KifuReader:
    """Stateful reader of CSA and KIF files: tracks duplicates (unless told not to) and fills a
    :class:`~maou.data.games.ReadStats`."""

    def __init__(self, stats: ReadStats, detect_duplicates: bool = True):
        self.stats = stats
        self.detect_duplicates = detect_duplicates
        self.seen_games: dict[tuple[str, tuple[int, ...]], str] = {}

    def read(self, source: str, path: Path, fmt: str) -> Iterator[GameRecord]:
        """The valid games of the CSA (``fmt == "csa"``) or KIF file ``path``, named ``source``."""
        try:
            text = decode_text(_read_bytes(path))
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
            self.stats.skip("unreadable", source, short_error(exc))
            return
        yield from (self.csa(source, text) if fmt == "csa" else self.kif(source, text))

    def game(self, source: str, index: int, sfen: str, moves: list[int], ending: str, win: int | None,
             fmt: str, kif_winner: Winner | None = None) -> GameRecord | None:
        where = f"{source}#{index}"
        if not moves:
            self.stats.skip("no moves", where, f"ending {ending or 'none'}")
            return None
        try:
            board, illegal = replay(sfen, moves)
        except Exception as exc:  # noqa: BLE001 - cshogi raises anything on a bad start position
            self.stats.skip("malformed", where, f"bad start position {sfen!r}: {exc}")
            return None
        if illegal is not None:
            self.stats.skip("illegal move", where, f"illegal move at ply {illegal}")
            return None
        key = (sfen, tuple(moves))
        if self.detect_duplicates and key in self.seen_games:
            self.stats.skip("duplicate game", where, f"same moves as {self.seen_games[key]}")
            return None
        if self.detect_duplicates:
            self.seen_games[key] = where
        if fmt == "kif":
            winner = kif_winner
        else:
            winner = _csa_winner(ending, win if win is not None else cshogi.DRAW, 1 - board.turn)
        self.stats.games += 1
        self.stats.positions += len(moves)
        self.stats.no_result += winner is None
        return GameRecord(source, index, sfen, tuple(int(m) for m in moves), winner, ending, fmt)  # type: ignore[arg-type]

    def csa(self, source: str, text: str) -> Iterator[GameRecord]:
        from cshogi import CSA

        index = 0
        for block in split_csa_games(text):
            if not block.strip():
                continue
            where = f"{source}#{index}"
            try:
                parser = CSA.Parser()
                parser.parse_csa_str(block)
                sfen, moves, ending, win = parser.sfen, list(parser.moves), parser.endgame, parser.win
            except Exception as exc:  # noqa: BLE001 - a bad block is counted, never fatal
                self.stats.skip("malformed", where, short_error(exc))
            else:
                record = self.game(source, index, sfen, moves, ending, win, "csa")
                if record is not None:
                    yield record
            index += 1

    def kif(self, source: str, text: str) -> Iterator[GameRecord]:
        from cshogi import KIF

        where = f"{source}#0"
        try:
            parser = KIF.Parser.parse_str(text)
            sfen, moves, ending = parser.sfen, list(parser.moves), parser.endgame or ""
            winner = winner_from_cshogi(parser.win)
        except Exception as exc:  # noqa: BLE001 - a bad file is counted, never fatal
            self.stats.skip("malformed", where, short_error(exc))
            return
        record = self.game(source, 0, sfen, moves, ending, None, "kif", kif_winner=winner)
        if record is not None:
            yield record


__all__ = ["GZIP_SUFFIX", "KifuReader", "decode_text", "split_csa_games"]
