"""Game records -> validated :class:`GameRecord` s (CSA, KIF, ``.gz`` of those, HCPE ``.feather``).

Sources are files or folders (searched recursively for ``RECORD_SUFFIXES``, following links, loops
and broken links counted in a :class:`FileScan`: :func:`scan_record_files`). Text is decoded as
UTF-8 (with or without BOM), else as Shift-JIS (cp932). Parsing uses cshogi (``CSA.Parser`` for
CSA, one game per block of a multi-game file separated by a line ``/``; ``KIF.Parser`` for KIF)
and every game is replayed with cshogi: a move that is not legal where it is played rejects the
game. Nothing bad is silent and nothing crashes: each rejected game, file or block is counted in
:class:`ReadStats` under a reason (``malformed``, ``unreadable``, ``no moves``, ``illegal move``,
``duplicate game``, ``unsupported file``), with a few examples.

Results (:attr:`GameRecord.winner`): ``black``, ``white``, ``draw``, or ``None`` when the record
has none (``%CHUDAN``, no ending line, a KIF without its result line). cshogi reads ``%TSUMI``
as a draw; here it is a win for the side that made the last move. Games without a result still
give Stage 2 positions; Stage 3 (which needs a result) leaves them out.

HCPE ``.feather`` files (upstream ``maou`` data: a 32-byte ``hcp`` column, optionally
``bestMove16``, ``gameResult`` and ``id``; ``eval``, ``ratings`` and the like are not read) are a
position source: each row becomes a one-position record (``moves`` holds ``bestMove16`` when
present and one of the position's legal moves, else nothing; ``winner`` from ``gameResult``, which
upstream's converter fills with cshogi's ``win``: 0 draw, 1 Black, 2 White) with ``fmt == "hcpe"``
and ``index`` = the row. Every form upstream writes is read (:func:`read_hcpe_table`); a row whose
``hcp`` is not 32 bytes is counted as malformed.

The rows of one game share a :attr:`GameRecord.hcpe_game` (:class:`HcpeGame`), so the by-game
split keeps a game's positions on one side: upstream's ``id`` is ``<game>_<ply>``
(``floodgate2025_toryo.hcpe_17``), and rows with the same game part (the id without its trailing
``_<digits>``; an id without one is its own game part) are one game, in whichever file or files
they are. A row without an id (no ``id`` column, a null or empty one) belongs to its file's game
(upstream writes one file per game). :class:`ReadStats` counts HCPE games (``games``, and
``no_result``: games none of whose rows has a result) and their rows (``positions``).
"""

from __future__ import annotations

import errno
import gzip
import os
import stat
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import cshogi
import numpy as np

from maou.errors import UserError
from maou.shogi.shapes import HCP_BYTES

Winner = Literal["black", "white", "draw"]
#: File name endings read from folders (and accepted as explicit files), with their format.
RECORD_SUFFIXES = {".csa": "csa", ".kif": "kif", ".kifu": "kif", ".feather": "hcpe"}
GZIP_SUFFIX = ".gz"
#: Examples kept per skip reason.
MAX_EXAMPLES = 3

#: CSA endings with no winner although cshogi reports DRAW (an unfinished or unknown game).
_NO_RESULT_ENDINGS = {"", "%CHUDAN", "%ERROR"}
_DRAW_ENDINGS = {"%SENNICHITE", "%JISHOGI", "%HIKIWAKE", "%MAX_MOVES"}
_CSHOGI_WINNERS: dict[int, Winner] = {cshogi.BLACK_WIN: "black", cshogi.WHITE_WIN: "white", cshogi.DRAW: "draw"}
_COLOURS: tuple[Winner, Winner] = ("black", "white")


class HcpeGame(NamedTuple):
    """The game of HCPE rows: ``key``, 16 bytes naming it (:func:`hcpe_game_key`), and ``name``, as
    ``split.json`` lists it: ``FILE#GAME`` (the file its rows were first read from, the game part
    of their ids) or ``FILE`` (rows without an id)."""

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
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(f"{where}: {detail}" if detail else where)

    def merge(self, other: ReadStats) -> None:
        """Add ``other``'s counts, as if its records had been read after these."""
        self.files += other.files
        self.games += other.games
        self.positions += other.positions
        self.no_result += other.no_result
        self.skipped.update(other.skipped)
        for reason, examples in other.examples.items():
            kept = self.examples.setdefault(reason, [])
            kept.extend(examples[: MAX_EXAMPLES - len(kept)])

    @property
    def games_skipped(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict:
        return {"files": self.files, "games_read": self.games, "games_skipped": self.games_skipped,
                "games_without_result": self.no_result, "positions": self.positions,
                "skipped_by_reason": dict(sorted(self.skipped.items())),
                "skipped_examples": {k: list(v) for k, v in sorted(self.examples.items())}}


def record_format(path: Path) -> str | None:
    """``csa``, ``kif`` or ``hcpe`` from the file name (``.gz`` allowed for text records), else None."""
    name = path.name.lower()
    gz = name.endswith(GZIP_SUFFIX)
    if gz:
        name = name[: -len(GZIP_SUFFIX)]
    fmt = RECORD_SUFFIXES.get(os.path.splitext(name)[1])
    return None if fmt == "hcpe" and gz else fmt


@dataclass
class FileScan:
    """What a search of the game-record inputs found: the record files (sorted within each input,
    each real file once), every file seen by kind, and every path left out, by reason.

    Kinds: ``csa``, ``kif``, ``hcpe`` (the record files), ``other`` (files inside folders without a
    record suffix, their suffixes in ``other_suffixes``). Left out: ``broken link`` (a link whose
    target is missing), ``link loop`` (a linked folder that is one of its own parents),
    ``folder linked twice`` / ``file listed twice`` (reached again through another path: read once),
    ``unreadable folder`` / ``unreadable file`` (no permission, an I/O error).
    """

    files: list[Path] = field(default_factory=list)
    kinds: Counter = field(default_factory=Counter)
    other_suffixes: Counter = field(default_factory=Counter)
    left_out: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def leave_out(self, reason: str, where: Path | str, detail: str = "") -> None:
        self.left_out[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(f"{where}: {detail}" if detail else str(where))

    def merge(self, other: FileScan) -> None:
        self.files += other.files
        self.kinds.update(other.kinds)
        self.other_suffixes.update(other.other_suffixes)
        for reason, n in other.left_out.items():
            self.left_out[reason] += n
            kept = self.examples.setdefault(reason, [])
            kept.extend(other.examples.get(reason, [])[: MAX_EXAMPLES - len(kept)])

    def common_suffixes(self, n: int = 3) -> list[str]:
        """The most frequent suffixes of the other files (ties in name order)."""
        ranked = sorted(self.other_suffixes.items(), key=lambda item: (-item[1], item[0]))
        return [suffix or "no suffix" for suffix, _ in ranked[:n]]

    def describe(self) -> str:
        """The files seen, in a few words: ``3 files: csa 2, other 1 (.txt)`` or ``no files found``."""
        seen = sum(self.kinds.values())
        if not seen:
            return "no files found"
        kinds = []
        for kind, n in sorted(self.kinds.items(), key=lambda item: (item[0] == "other", item[0])):
            suffixes = ", ".join(self.common_suffixes())
            kinds.append(f"{kind} {n}" + (f" ({suffixes})" if kind == "other" and suffixes else ""))
        return f"{seen} file{'s' if seen != 1 else ''}: {', '.join(kinds)}"

    def describe_left_out(self) -> str:
        """``broken link 2 (e.g. games/x: -> /gone)``, one reason after another ("" when none)."""
        return ", ".join(f"{reason} {n} (e.g. {self.examples[reason][0]})"
                         for reason, n in self.left_out.most_common())

    def to_dict(self) -> dict:
        return {"kinds": dict(sorted(self.kinds.items())), "other_suffixes": dict(self.other_suffixes.most_common(20)),
                "left_out": dict(sorted(self.left_out.items())),
                "left_out_examples": {k: list(v) for k, v in sorted(self.examples.items())}}


def scan_record_files(paths: Iterable[str | Path]) -> FileScan:
    """The record files of ``paths`` and what else was found; :class:`UserError` if an input is missing.

    Explicit files are taken whatever their name (an unsupported one is counted as skipped when
    read); inside folders only files with a record suffix are. Folders are searched recursively,
    following links to folders and files: a linked folder that is one of its own parents (a loop),
    or a folder or file reached a second time, is read once and counted; a broken link or an
    unreadable folder is counted, never fatal.
    """
    scan = FileScan()
    files: set[tuple[int, int]] = set()
    folders: set[tuple[int, int]] = set()

    def take(path: Path, st: os.stat_result, explicit: bool = False) -> None:
        kind = record_format(path)
        scan.kinds[kind or "other"] += 1
        if kind is None:
            scan.other_suffixes[path.suffix.lower()] += 1
            if not explicit:  # inside a folder only record files are read
                return
        if (st.st_dev, st.st_ino) in files:
            scan.leave_out("file listed twice", path, "read once")
            return
        files.add((st.st_dev, st.st_ino))
        if not os.access(path, os.R_OK):
            scan.leave_out("unreadable file", path, "permission denied")
            return
        scan.files.append(path)

    for raw in paths:
        path = Path(raw)
        try:
            st = path.stat()
        except FileNotFoundError:
            link = f" (a broken link to {os.readlink(path)})" if path.is_symlink() else ""
            raise UserError(f"no such game record file or folder: {path}{link}") from None
        except OSError as exc:
            raise UserError(f"cannot read the game record path {path}: {exc.strerror}") from None
        start = len(scan.files)
        if not stat.S_ISDIR(st.st_mode):
            take(path, st, explicit=True)
        else:
            _walk(path, (st.st_dev, st.st_ino), frozenset(), scan, folders, take)
            scan.files[start:] = sorted(scan.files[start:])
    return scan


def _walk(folder: Path, key: tuple[int, int], parents: frozenset[tuple[int, int]], scan: FileScan,
          seen: set[tuple[int, int]], take: Callable[[Path, os.stat_result], None]) -> None:
    """Every file under ``folder`` (its identity ``key``) to ``take``, what cannot be read to
    ``scan``; ``parents``: the identities of the folders above it (a link back to one is a loop)."""
    seen.add(key)
    parents = parents | {key}
    here = os.path.realpath(folder)
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError as exc:
        scan.leave_out("unreadable folder", folder, exc.strerror or type(exc).__name__)
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            st = entry.stat()  # follows links
        except FileNotFoundError:
            if entry.is_symlink():
                scan.leave_out("broken link", path, f"-> {os.readlink(path)}")
            continue
        except OSError as exc:
            reason = "link loop" if exc.errno == errno.ELOOP else "unreadable file"
            scan.leave_out(reason, path, exc.strerror or type(exc).__name__)
            continue
        if stat.S_ISDIR(st.st_mode):
            child, target = (st.st_dev, st.st_ino), os.path.realpath(path)
            if child in parents or here == target or here.startswith(target.rstrip(os.sep) + os.sep):
                scan.leave_out("link loop", path, f"-> {target}, a folder above it")
            elif child in seen:
                scan.leave_out("folder linked twice", path, f"-> {target}, read once")
            else:
                _walk(path, child, parents, scan, seen, take)
        elif stat.S_ISREG(st.st_mode):
            take(path, st)


def find_record_files(paths: Iterable[str | Path]) -> list[Path]:
    """Record files of ``paths`` (folders searched recursively, links followed, sorted);
    :class:`UserError` if one is missing. :func:`scan_record_files` also says what was left out."""
    return scan_record_files(paths).files


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


def _winner_from_cshogi(win: int | None) -> Winner | None:
    return None if win is None else _CSHOGI_WINNERS.get(int(win))


def _csa_winner(ending: str, win: int, last_mover: int | None) -> Winner | None:
    if ending in _NO_RESULT_ENDINGS:
        return None
    if ending == "%TSUMI":  # cshogi says draw; the side that made the last move has mated
        return None if last_mover is None else _COLOURS[last_mover]
    if ending in _DRAW_ENDINGS:
        return "draw"
    winner = _winner_from_cshogi(win)
    return None if winner == "draw" else winner  # an unknown ending that cshogi maps to DRAW


def replay(sfen: str, moves: Iterable[int]) -> tuple[cshogi.Board, int | None]:
    """Replay ``moves`` from ``sfen``; returns (final board, 1-based ply of the first illegal move or None)."""
    board = cshogi.Board()
    board.set_sfen(sfen)
    for ply, move in enumerate(moves, start=1):
        if not move or not board.is_legal(move):
            return board, ply
        board.push(move)
    return board, None


class _Reader:
    """Stateful iterator over records: tracks duplicates (unless told not to) and fills a :class:`ReadStats`."""

    def __init__(self, stats: ReadStats, detect_duplicates: bool = True):
        self.stats = stats
        self.detect_duplicates = detect_duplicates
        self.seen_games: dict[tuple[str, tuple[int, ...]], str] = {}
        #: The HCPE games read (their :attr:`HcpeGame.key`), and whether one of their rows had a result.
        self.hcpe_games: dict[bytes, bool] = {}

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
                self.stats.skip("malformed", where, _short(exc))
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
            winner = _winner_from_cshogi(parser.win)
        except Exception as exc:  # noqa: BLE001 - a bad file is counted, never fatal
            self.stats.skip("malformed", where, _short(exc))
            return
        record = self.game(source, 0, sfen, moves, ending, None, "kif", kif_winner=winner)
        if record is not None:
            yield record

    def hcpe(self, source: str, path: Path) -> Iterator[GameRecord]:
        try:
            table = read_hcpe_table(path)
        except Exception as exc:  # noqa: BLE001 - a bad file is counted, never fatal
            self.stats.skip("malformed", source, _short(exc))
            return
        hcps, ok, move16, results, games, names = table
        file_game = HcpeGame(hcpe_game_key(None, source), source)  # rows without an id (game -1)
        of_name = [HcpeGame(hcpe_game_key(name), f"{source}#{name}") for name in names] + [file_game]
        row_games = games.tolist() if games is not None else None
        board = cshogi.Board()
        for row in range(len(hcps)):
            where = f"{source}#{row}"
            if not ok[row]:
                self.stats.skip("malformed", where, f"bad hcp: null or not {HCP_BYTES} bytes")
                continue
            try:
                board.set_hcp(hcps[row])
            except Exception as exc:  # noqa: BLE001 - a bad row is counted, never fatal
                self.stats.skip("malformed", where, f"bad hcp: {_short(exc)}")
                continue
            if not board.is_ok():
                self.stats.skip("malformed", where, "bad hcp: invalid position")
                continue
            moves: tuple[int, ...] = ()
            if move16 is not None and move16[row]:
                move = board.move_from_move16(int(move16[row]))
                # cshogi's is_legal accepts some impossible moves (a promotion outside the zone, bits
                # of no square): a best move counts only when it is one of the position's legal moves
                if board.is_legal(move) and move in board.legal_moves:
                    moves = (int(move),)
            winner = _winner_from_cshogi(int(results[row])) if results is not None else None
            game = file_game if row_games is None else of_name[row_games[row]]
            self._count_hcpe_row(game.key, winner is not None)
            yield GameRecord(source, row, board.sfen(), moves, winner, "", "hcpe", game)

    def _count_hcpe_row(self, key: bytes, has_result: bool) -> None:
        """A row of the HCPE game ``key``: a position, and a game (without result until a row has one)
        the first time the game is seen."""
        had_result = self.hcpe_games.get(key)
        if had_result is None:
            self.stats.games += 1
            self.stats.no_result += 1
            had_result = False
        if has_result and not had_result:
            self.stats.no_result -= 1
            had_result = True
        self.hcpe_games[key] = had_result
        self.stats.positions += 1


class HcpeRows(NamedTuple):
    """The columns of an HCPE file that a build reads (:func:`read_hcpe_table`), and the games of its rows."""

    #: (N, 32) uint8 HuffmanCodedPos, zeros where not ``ok``.
    hcps: np.ndarray
    #: (N,) bool: the row's ``hcp`` is 32 bytes (not null, not another length, list values in 0-255).
    ok: np.ndarray
    #: (N,) int64 16-bit moves in 0..65535 (0: none or null), or None without a ``bestMove16`` column.
    move16: np.ndarray | None
    #: (N,) int64 cshogi results (``DRAW`` 0, ``BLACK_WIN`` 1, ``WHITE_WIN`` 2; -1 null), or None.
    results: np.ndarray | None
    #: (N,) int64: each row's game, an index into ``game_names`` (-1: no id, the file's game), or
    #: None without an ``id`` column.
    games: np.ndarray | None = None
    #: The game parts of the file's ids (:func:`hcpe_game_parts`), each once, in first-seen order.
    game_names: tuple[str, ...] = ()


#: The columns of an HCPE file a build reads; the others (``eval``, ``ratings``, ...) are ignored.
HCPE_COLUMNS = ("hcp", "bestMove16", "gameResult", "id")
#: An HCPE id's ply suffix: upstream's ids are ``<game>_<ply>``.
HCPE_PLY_SUFFIX = r"_\d+$"


def hcpe_game_parts(ids: Any) -> tuple[np.ndarray, tuple[str, ...]]:
    """``(games (N,) int64, names)`` of an Arrow array or chunked array of HCPE ids: each row's game
    part (the id without a trailing ``_<digits>``; an id without one is its own game part) as an
    index into ``names`` (the distinct game parts, in first-seen order), -1 for a null or empty id
    or game part. Vectorised (Arrow compute: one regex replace and one hash pass, however many
    rows). ValueError for ids that are not strings."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = ids.type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise ValueError(f"'id' is {ids.type}, not strings")
    ids = ids.cast(pa.large_string())
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks else pa.array([], pa.large_string())
    encoded = pc.dictionary_encode(pc.replace_substring_regex(ids, pattern=HCPE_PLY_SUFFIX, replacement=""))
    games = np.asarray(pc.fill_null(encoded.indices.cast(pa.int64()), -1).to_numpy(), dtype=np.int64)
    names = tuple(encoded.dictionary.to_pylist())
    if "" in names:  # no name: the row is its file's
        empty = names.index("")
        games = np.where(games == empty, -1, games - (games > empty))
        names = names[:empty] + names[empty + 1:]
    return games, names


def hcpe_game_key(name: str | None, file: str | None = None) -> bytes:
    """16 bytes naming an HCPE game: the game part ``name`` of its ids, or (``name`` None) the
    ``file`` whose rows have no id. Equal names are one game, whichever files hold their rows."""
    import hashlib

    kind, text = (b"id", name) if name is not None else (b"file", file or "")
    return hashlib.blake2b(kind + b"\0" + text.encode("utf-8", "surrogatepass"), digest_size=16,
                           person=b"maou-hcpe-game").digest()


def read_hcpe_table(path: str | Path) -> HcpeRows:
    """The ``hcp``, ``bestMove16``, ``gameResult`` and ``id`` columns of an HCPE feather file (v2,
    uncompressed or LZ4/ZSTD-compressed, in any number of record batches; or v1), other columns
    unread. ``hcp`` is decoded by :func:`decode_hcp`; ``bestMove16`` is taken modulo 2**16 (upstream
    stores it as int16; cshogi's move16 never sets bit 15, so only garbage reads negative); ``id``
    gives the rows' games (:func:`hcpe_game_parts`). ValueError when the file has no ``hcp``
    column, an ``hcp`` type that cannot hold HCPs, a move or result column that is not integers,
    or an ``id`` column that is not strings."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.feather as feather

    try:
        with pa.memory_map(str(path)) as source:
            names: list[str] | None = pa.ipc.open_file(source).schema.names
    except pa.ArrowInvalid:  # not an IPC file (feather v1): its columns are known once read
        names = None
    if names is not None and "hcp" not in names:
        raise ValueError(f"no 'hcp' column (has {', '.join(names)})")
    wanted = None if names is None else [name for name in HCPE_COLUMNS if name in names]
    table = feather.read_table(path, columns=wanted, memory_map=True)
    if "hcp" not in table.column_names:
        raise ValueError(f"no 'hcp' column (has {', '.join(table.column_names)})")
    decoded = [decode_hcp(chunk) for chunk in table.column("hcp").chunks]
    hcps = np.concatenate([h for h, _ in decoded]) if decoded else np.zeros((0, HCP_BYTES), dtype=np.uint8)
    ok = np.concatenate([k for _, k in decoded]) if decoded else np.zeros(0, dtype=bool)

    def integers(name: str, null: int) -> np.ndarray | None:
        if name not in table.column_names:
            return None
        column = table.column(name)
        if not pa.types.is_integer(column.type):
            raise ValueError(f"'{name}' is {column.type}, not integers")
        return np.asarray(pc.fill_null(column.cast(pa.int64()), null).to_numpy(), dtype=np.int64)

    move16 = integers("bestMove16", 0)
    games, game_names = hcpe_game_parts(table.column("id")) if "id" in table.column_names else (None, ())
    return HcpeRows(hcps, ok, None if move16 is None else move16 & 0xFFFF, integers("gameResult", -1), games,
                    game_names)


def decode_hcp(array: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(hcps (N, 32) uint8, ok (N,) bool)`` of one Arrow array of HCPs: binary, large_binary,
    binary_view or fixed_size_binary(32), or a list, large_list or fixed_size_list(32) of integers.

    Vectorised: the rows are cut out of the array's buffers at its offsets, never converted one by
    one. A row that is null, not 32 bytes (or values) long, or holds a value outside 0-255 is not
    ``ok`` (and zeros). ValueError for a type that cannot hold HCPs (another fixed width, strings,
    floats)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n, kind = len(array), array.type
    if n == 0:
        return np.zeros((0, HCP_BYTES), dtype=np.uint8), np.zeros(0, dtype=bool)
    if pa.types.is_binary_view(kind):
        array = array.cast(pa.large_binary())
        kind = array.type
    lists = (pa.ListType, pa.LargeListType, pa.FixedSizeListType)
    if isinstance(kind, lists) and isinstance(kind.value_type, lists):
        return _nested_hcp(array)
    fixed = pa.types.is_fixed_size_binary(kind) or pa.types.is_fixed_size_list(kind)
    if fixed:
        width = kind.byte_width if pa.types.is_fixed_size_binary(kind) else kind.list_size
        if width != HCP_BYTES:
            raise ValueError(f"'hcp' is {kind}: not {HCP_BYTES} bytes a row")
        starts = (array.offset + np.arange(n, dtype=np.int64)) * HCP_BYTES
        lengths = np.full(n, HCP_BYTES, dtype=np.int64)
    elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or isinstance(kind, lists):
        large = pa.types.is_large_binary(kind) or pa.types.is_large_list(kind)
        offsets = np.frombuffer(array.buffers()[1], dtype=np.int64 if large else np.int32)
        offsets = offsets[array.offset:array.offset + n + 1].astype(np.int64)
        starts, lengths = offsets[:-1], np.diff(offsets)
    else:
        raise ValueError(f"'hcp' is {kind}: not binary or a list of bytes")
    values_ok: np.ndarray | None = None
    if isinstance(kind, lists):
        child = array.values
        if not pa.types.is_integer(child.type):
            raise ValueError(f"'hcp' is {kind}: not a list of integers")
        values = np.asarray(pc.fill_null(child, 0).to_numpy(zero_copy_only=False))
        values_ok = child.is_valid().to_numpy(zero_copy_only=False) & (values >= 0) & (values <= 255)
    else:
        data = array.buffers()[-1]
        values = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    ok = valid & (lengths == HCP_BYTES) & (starts >= 0) & (starts + HCP_BYTES <= len(values))
    hcps = np.zeros((n, HCP_BYTES), dtype=np.uint8)
    if ok.any():
        taken = starts[ok]
        rows = np.lib.stride_tricks.sliding_window_view(values, HCP_BYTES)[taken]
        if values_ok is not None:
            fine = np.lib.stride_tricks.sliding_window_view(values_ok, HCP_BYTES)[taken].all(axis=1)
            ok[np.flatnonzero(ok)[~fine]] = False
            rows = rows[fine]
        hcps[ok] = rows
    return hcps, ok


def _nested_hcp(array: Any) -> tuple[np.ndarray, np.ndarray]:
    """A list of lists of bytes (e.g. 4 x 8), read whole: 32 values a row or ValueError."""
    import pyarrow as pa

    values = array
    while isinstance(values.type, (pa.ListType, pa.LargeListType, pa.FixedSizeListType)):
        values = values.flatten()
    flat = values.to_numpy(zero_copy_only=False)
    if flat.size != len(array) * HCP_BYTES or array.null_count:
        raise ValueError(f"'hcp' column ({array.type}) is not {HCP_BYTES} bytes a row")
    return flat.reshape(len(array), HCP_BYTES).astype(np.uint8), np.ones(len(array), dtype=bool)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:200]


def iter_records(paths: Iterable[str | Path], stats: ReadStats | None = None,
                 files: list[Path] | None = None, detect_duplicates: bool = True) -> Iterator[GameRecord]:
    """Valid games of ``paths`` in order (files sorted within folders); skips are counted in ``stats``.

    ``files`` (from :func:`find_record_files`) saves searching the paths again. With
    ``detect_duplicates`` off, a game with the same start and moves as an earlier one is yielded
    too (a parallel build finds those across its shards: :func:`game_digest`).
    """
    stats = stats if stats is not None else ReadStats()
    reader = _Reader(stats, detect_duplicates)
    for path in files if files is not None else find_record_files(paths):
        stats.files += 1
        source = str(path)
        fmt = record_format(path)
        if fmt is None:
            stats.skip("unsupported file", source, "not .csa, .kif, .kifu (optionally .gz) or .feather")
            continue
        if fmt == "hcpe":
            yield from reader.hcpe(source, path)
            continue
        try:
            text = decode_text(_read_bytes(path))
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
            stats.skip("unreadable", source, _short(exc))
            continue
        yield from (reader.csa(source, text) if fmt == "csa" else reader.kif(source, text))


def game_digest(record: GameRecord) -> bytes:
    """16 bytes naming a game's start position and moves: equal for the games ``iter_records`` calls
    duplicates (HCPE rows are never duplicates: :attr:`GameRecord.hcpe_game` names their game)."""
    import hashlib

    sfen = record.sfen.encode()
    digest = hashlib.blake2b(len(sfen).to_bytes(4, "little") + sfen, digest_size=16)
    digest.update(np.asarray(record.moves, dtype=np.uint32).tobytes())
    return digest.digest()


def read_records(paths: Iterable[str | Path]) -> tuple[list[GameRecord], ReadStats]:
    """All valid games of ``paths`` and the read statistics."""
    stats = ReadStats()
    return list(iter_records(paths, stats)), stats


__all__ = ["FileScan", "GameRecord", "HCPE_COLUMNS", "HCPE_PLY_SUFFIX", "HcpeGame", "HcpeRows", "ReadStats",
           "RECORD_SUFFIXES", "decode_hcp", "decode_text", "find_record_files", "game_digest", "hcpe_game_key",
           "hcpe_game_parts", "iter_records", "read_hcpe_table", "read_records", "record_format", "replay",
           "scan_record_files", "split_csa_games"]
