"""Reading HCPE ``.feather`` files (upstream ``maou`` data) into one-position
:class:`~maou.data.games.GameRecord` s, each row's game named by its ``id``.

HCPE ``.feather`` files (upstream ``maou`` data: a 32-byte ``hcp`` column, optionally
``bestMove16``, ``gameResult`` and ``id``; ``eval``, ``ratings`` and the like are not read) are a
position source: each row becomes a one-position record (``moves`` holds ``bestMove16`` when
present and one of the position's legal moves, else nothing; ``winner`` from ``gameResult``, which
upstream's converter fills with cshogi's ``win``: 0 draw, 1 Black, 2 White) with ``fmt == "hcpe"``
and ``index`` = the row. Every form upstream writes is read (:func:`read_hcpe_table`); a row whose
``hcp`` is not 32 bytes is counted as malformed.

The rows of one game share a :attr:`~maou.data.games.GameRecord.hcpe_game`
(:class:`~maou.data.games.HcpeGame`), so the by-game split keeps a game's positions on one side:
upstream's ``id`` is ``<game>_<ply>`` (``floodgate2025_toryo.hcpe_17``), and rows with the same
game part (the id without its trailing ``_<digits>``; an id without one is its own game part) are
one game, in whichever file or files they are. A row without an id (no ``id`` column, a null or
empty one) belongs to its file's game (upstream writes one file per game).
:class:`~maou.data.games.ReadStats` counts HCPE games (``games``, and ``no_result``: games none of
whose rows has a result) and their rows (``positions``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import cshogi
import numpy as np

from maou.data.games import GameRecord, HcpeGame, ReadStats, short_error, winner_from_cshogi
from maou.shogi.shapes import HCP_BYTES


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


class HcpeReader:
    """Stateful reader of HCPE files: counts each HCPE game once, in whichever files its rows are,
    in a :class:`~maou.data.games.ReadStats`."""

    def __init__(self, stats: ReadStats):
        self.stats = stats
        #: The HCPE games read (their :attr:`HcpeGame.key`), and whether one of their rows had a result.
        self.hcpe_games: dict[bytes, bool] = {}

    def read(self, source: str, path: Path) -> Iterator[GameRecord]:
        """The one-position records of the HCPE file ``path``, named ``source``; a bad file or row is counted."""
        try:
            table = read_hcpe_table(path)
        except Exception as exc:  # noqa: BLE001 - a bad file is counted, never fatal
            self.stats.skip("malformed", source, short_error(exc))
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
                self.stats.skip("malformed", where, f"bad hcp: {short_error(exc)}")
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
            winner = winner_from_cshogi(int(results[row])) if results is not None else None
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


__all__ = ["HCPE_COLUMNS", "HCPE_PLY_SUFFIX", "HcpeReader", "HcpeRows", "decode_hcp", "hcpe_game_key",
           "hcpe_game_parts", "read_hcpe_table"]
