"""Position features (docs/design.md, section 3): board ids and hand counts from the mover's view.

``board_id_positions`` is (9, 9) uint8 laid out ``[rank y][file x]`` (x = 0 is file 1, y = 0 is
rank a); with White to move the board is rotated 180 degrees (``sq -> 80 - sq``) and colours are
swapped, so the mover's pieces are always 1-14 and the opponent's 15-28:
0 empty, 1 pawn, 2 lance, 3 knight, 4 silver, 5 gold, 6 bishop, 7 rook, 8 king, 9 +pawn,
10 +lance, 11 +knight, 12 +silver, 13 horse, 14 dragon (gold is 5, unlike cshogi's numbering).
``pieces_in_hand`` is (14,) uint8: the mover's P L N S G B R counts, then the opponent's.

Both come from lookup tables over cshogi's ``board.pieces`` (cshogi piece ids: Black 1-14 in the
order P L N S B R G K +P +L +N +S +B +R, White = Black + 16), one gather per position.
"""

from __future__ import annotations

from functools import cache

import cshogi
import numpy as np

from maou.shogi.shapes import (
    BOARD_SHAPE,
    HAND_KINDS_NUM,
    HCP_BYTES,
    PIECE_TYPES_NUM,
    PIECES_IN_HAND_NUM,
    SQUARES_NUM,
)

#: cshogi piece type (1-14: P L N S B R G K +P +L +N +S +B +R) -> board id (P L N S G B R K ...).
_CSHOGI_TYPE_TO_ID = (0, 1, 2, 3, 4, 6, 7, 5, 8, 9, 10, 11, 12, 13, 14)
_CSHOGI_WHITE_OFFSET = 16
_CSHOGI_PIECE_IDS_NUM = 2 * _CSHOGI_WHITE_OFFSET


@cache
def _tables() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Per side to move: cshogi piece id -> board id, and flat source squares in output order."""
    ids = []
    for turn in (cshogi.BLACK, cshogi.WHITE):
        lut = np.zeros(_CSHOGI_PIECE_IDS_NUM, dtype=np.uint8)
        for piece_type, board_id in enumerate(_CSHOGI_TYPE_TO_ID[1:], start=1):
            own, other = board_id, board_id + PIECE_TYPES_NUM
            lut[piece_type] = own if turn == cshogi.BLACK else other
            lut[piece_type + _CSHOGI_WHITE_OFFSET] = other if turn == cshogi.BLACK else own
        lut.flags.writeable = False
        ids.append(lut)
    y, x = np.indices(BOARD_SHAPE)
    sq = (9 * x + y).ravel()  # output cell [y][x] reads cshogi square 9x + y ...
    order = (sq, SQUARES_NUM - 1 - sq)  # ... or its 180-degree rotation when White is to move
    for a in order:
        a.flags.writeable = False
    return (ids[0], ids[1]), order


def encode_raw(pieces: np.ndarray, hands: np.ndarray, turn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised encoding of N positions given as cshogi's raw arrays: ``pieces`` (N, 81) cshogi
    piece ids by square, ``hands`` (N, 2, 7) hand counts by colour, ``turn`` (N,) side to move.
    Returns ``board_id_positions`` (N, 9, 9) and ``pieces_in_hand`` (N, 14), uint8, mover's view."""
    n = len(turn)
    white = np.asarray(turn).astype(bool)
    (lut_black, lut_white), order = _tables()
    boards = np.empty((n, SQUARES_NUM), dtype=np.uint8)
    boards[~white] = lut_black[pieces[~white][:, order[0]]]
    boards[white] = lut_white[pieces[white][:, order[1]]]
    hand = np.where(white[:, None], hands[:, ::-1].reshape(n, PIECES_IN_HAND_NUM),
                    hands.reshape(n, PIECES_IN_HAND_NUM)).astype(np.uint8)
    return boards.reshape(n, *BOARD_SHAPE), hand


def _raw(board: cshogi.Board) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One board as the (1, ...) raw arrays of :func:`encode_raw` and :func:`position_ids`."""
    pieces = np.array(board.pieces, dtype=np.uint8).reshape(1, SQUARES_NUM)
    hands = np.array(board.pieces_in_hand, dtype=np.uint8).reshape(1, 2, HAND_KINDS_NUM)
    return pieces, hands, np.array([board.turn], dtype=np.uint8)


def encode_position(board: cshogi.Board) -> tuple[np.ndarray, np.ndarray]:
    """``(board_id_positions (9, 9) uint8, pieces_in_hand (14,) uint8)`` from the mover's view."""
    boards, hands = encode_raw(*_raw(board))
    return boards[0], hands[0]


def encode_positions(hcps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batch :func:`encode_position` over cshogi HCPs ((N, HCP_BYTES) uint8): (N, 9, 9) and (N, 14) uint8."""
    hcps = np.ascontiguousarray(hcps, dtype=np.uint8).reshape(-1, HCP_BYTES)
    boards = np.empty((len(hcps), *BOARD_SHAPE), dtype=np.uint8)
    hands = np.empty((len(hcps), PIECES_IN_HAND_NUM), dtype=np.uint8)
    board = cshogi.Board()
    for i, hcp in enumerate(hcps):
        board.set_hcp(hcp)
        boards[i], hands[i] = encode_position(board)
    return boards, hands


# --- position id: upstream maou's 64-bit Zobrist key (the ``ids`` of its data files) ---------------

_ZOBRIST_SEED = 0x5D588B656C078965
_ZOBRIST_HAND_STATES = 19  # counts 0..18 per hand kind
_U64 = (1 << 64) - 1


@cache
def _zobrist_keys() -> tuple[np.ndarray, np.ndarray, int]:
    """Upstream's keys: xorshift64 (13, 7, 17) from a fixed seed, drawn as turn, board, hand."""
    state = _ZOBRIST_SEED

    def draw() -> int:
        nonlocal state
        state ^= (state << 13) & _U64
        state ^= state >> 7
        state ^= (state << 17) & _U64
        return state

    turn_key = draw()
    # [colour * 14 + cshogi piece type - 1][sq], re-indexed here by cshogi piece id (0 = empty).
    board = np.zeros((_CSHOGI_PIECE_IDS_NUM, SQUARES_NUM), dtype=np.uint64)
    for colour in (cshogi.BLACK, cshogi.WHITE):
        for piece_type in range(1, PIECE_TYPES_NUM + 1):
            board[piece_type + colour * _CSHOGI_WHITE_OFFSET] = [draw() for _ in range(SQUARES_NUM)]
    hand = np.array([draw() for _ in range(2 * HAND_KINDS_NUM * _ZOBRIST_HAND_STATES)], dtype=np.uint64)
    hand = hand.reshape(2, HAND_KINDS_NUM, _ZOBRIST_HAND_STATES)
    hand[:, :, 0] = 0  # an empty hand kind contributes nothing
    board.flags.writeable = hand.flags.writeable = False
    return board, hand, turn_key


_SQUARES = np.arange(SQUARES_NUM)
_HAND_COLOURS = np.repeat(np.arange(2), HAND_KINDS_NUM)
_HAND_KINDS = np.tile(np.arange(HAND_KINDS_NUM), 2)


def position_ids(pieces: np.ndarray, hands: np.ndarray, turn: np.ndarray) -> np.ndarray:
    """Vectorised :func:`position_id` over the raw arrays of :func:`encode_raw`: (N,) uint64."""
    n = len(turn)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    keys, hand_keys, turn_key = _zobrist_keys()
    ids = np.bitwise_xor.reduce(keys[pieces, _SQUARES], axis=1)
    ids ^= np.bitwise_xor.reduce(hand_keys[_HAND_COLOURS, _HAND_KINDS, hands.reshape(n, -1).astype(np.intp)], axis=1)
    ids ^= np.where(np.asarray(turn).astype(bool), np.uint64(turn_key), np.uint64(0))
    return ids.astype(np.uint64)


def position_id(board: cshogi.Board) -> int:
    """64-bit Zobrist id of the absolute position, equal to upstream maou's ``id`` column.

    Not cshogi's ``zobrist_hash()``: upstream's Rust board draws its own keys. Used to
    deduplicate positions compatibly with upstream data (``stage2_golden.npz`` ``ids``).
    """
    return int(position_ids(*_raw(board))[0])


__all__ = ["encode_position", "encode_positions", "encode_raw", "position_id", "position_ids"]
