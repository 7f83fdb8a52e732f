"""Move labels (docs/design.md, section 3): 1496 classes, always from the mover's point of view.

A move's label depends only on its 16-bit part (cshogi ``move16``: to-square in bits 0-6,
from-square in bits 7-13, promotion flag in bit 14; a drop has ``from = 81 + piece_type - 1``
with cshogi's piece types P L N S B R G = 1..7) and on the side to move. Both are folded into
one lookup table ``[turn, move & 0xFFFF]`` built once, so labelling a position is a C-speed
gather over cshogi's move list: no per-move Python work.
"""

from __future__ import annotations

from array import array
from functools import cache

import cshogi
import numpy as np

from maou.shogi.shapes import (
    BOARD_SHAPE,
    CATEGORY_COUNTS,
    CATEGORY_STARTS,
    DIRECTIONS,
    HAND_KINDS_NUM,
    HCP_BYTES,
    MOVE_LABELS_NUM,
    SQUARES_NUM,
)

#: Bits of cshogi's 16-bit move.
MOVE16_MASK = 0xFFFF
MOVE16_TO_MASK = 0x7F
MOVE16_FROM_SHIFT = 7
MOVE16_PROMOTE_BIT = 1 << 14
#: A drop's from-field is ``DROP_FROM_BASE + piece_type - 1`` (cshogi piece types P L N S B R G).
DROP_FROM_BASE = SQUARES_NUM

#: cshogi lists moves as C ints; ``array("I", ...)`` collects them without per-move Python objects.
_MOVES_DTYPE = np.dtype(f"u{array('I').itemsize}")
#: Table entry of a 16-bit move that has no label; out of range of any label-indexed array.
_NO_LABEL = 1 << 20
#: cshogi drop piece type - 1 (P L N S B R G) -> hand kind (P L N S G B R), the drop block order.
_DROP_PIECE_TO_HAND_KIND = (0, 1, 2, 3, 5, 6, 4)
_N_DIR = len(DIRECTIONS)
_KEIMA_LEFT, _KEIMA_RIGHT = DIRECTIONS.index("KEIMA_LEFT"), DIRECTIONS.index("KEIMA_RIGHT")


def _allowed_destinations() -> np.ndarray:
    """(27, 9, 9) bool over [category, x, y]: the destinations each category may label."""
    x, y = np.indices(BOARD_SHAPE)  # x = file index, y = rank index; sq = 9 * x + y
    left, right, top, bottom = x >= 1, x <= 7, y <= 7, y >= 1
    zone = y <= 2
    everywhere = np.ones(BOARD_SHAPE, dtype=bool)
    plain = [top, left & top, right & top, left, right, bottom, left & bottom, right & bottom,
             left & (y >= 2) & (y <= 6), right & (y >= 2) & (y <= 6)]
    promoting = [zone, left & zone, right & zone, left & zone, right & zone, bottom,
                 left & bottom & (y - x <= 2), right & bottom & (x + y <= 10), left & zone, right & zone]
    drops = [bottom, bottom, y >= 2] + [everywhere] * 4  # hand order P L N S G B R
    return np.stack(plain + promoting + drops)


def _direction(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Direction index (order of ``DIRECTIONS``) of board steps (dx, dy); "up" is dy < 0."""
    conditions = [(dx == 1) & (dy == -2), (dx == -1) & (dy == -2),
                  (dx == 0) & (dy < 0), (dx == 0) & (dy > 0), (dy == 0) & (dx > 0), (dy == 0) & (dx < 0),
                  (dx > 0) & (dy < 0), (dx < 0) & (dy < 0), (dx > 0) & (dy > 0), (dx < 0) & (dy > 0)]
    names = ["KEIMA_LEFT", "KEIMA_RIGHT", "UP", "DOWN", "LEFT", "RIGHT",
             "UP_LEFT", "UP_RIGHT", "DOWN_LEFT", "DOWN_RIGHT"]
    return np.select(conditions, [DIRECTIONS.index(n) for n in names], default=-1)


@cache
def _tables() -> tuple[np.ndarray, np.ndarray]:
    """Per side to move, a (65536,) int64 table from ``move & 0xFFFF`` to label (or ``_NO_LABEL``)."""
    allowed = _allowed_destinations().reshape(len(CATEGORY_COUNTS), SQUARES_NUM)
    counts = allowed.sum(axis=1)
    if tuple(counts) != CATEGORY_COUNTS:
        raise AssertionError(f"category sizes {counts.tolist()} differ from shapes.CATEGORY_COUNTS")
    # rank[c, sq]: label of destination sq in category c (its start + rank among allowed squares).
    rank = np.where(allowed, np.cumsum(allowed, axis=1) - 1 + np.array(CATEGORY_STARTS)[:, None], _NO_LABEL)

    frm, to = (a.ravel() for a in np.indices((SQUARES_NUM, SQUARES_NUM)))
    kinds = np.arange(HAND_KINDS_NUM)
    drop_to = np.repeat(np.arange(SQUARES_NUM), HAND_KINDS_NUM)
    drop_piece = np.tile(kinds, SQUARES_NUM)  # cshogi piece type - 1
    tables = []
    for turn in (cshogi.BLACK, cshogi.WHITE):
        table = np.full(MOVE16_MASK + 1, _NO_LABEL, dtype=np.int64)
        f, t = (frm, to) if turn == cshogi.BLACK else (SQUARES_NUM - 1 - frm, SQUARES_NUM - 1 - to)
        direction = _direction(t // 9 - f // 9, t % 9 - f % 9)
        moving = direction >= 0
        for promote in (0, 1):
            key = to | (frm << MOVE16_FROM_SHIFT) | (promote * MOVE16_PROMOTE_BIT)
            table[key[moving]] = rank[direction[moving] + promote * _N_DIR, t[moving]]
        dt = drop_to if turn == cshogi.BLACK else SQUARES_NUM - 1 - drop_to
        category = 2 * _N_DIR + np.array(_DROP_PIECE_TO_HAND_KIND)[drop_piece]
        table[drop_to | ((DROP_FROM_BASE + drop_piece) << MOVE16_FROM_SHIFT)] = rank[category, dt]
        table.flags.writeable = False
        tables.append(table)
    return tables[0], tables[1]


def label_table() -> np.ndarray:
    """(2, 65536) int64 read-only: label of ``[turn, move & 0xFFFF]``, -1 where there is none."""
    table = np.stack(_tables())
    table[table == _NO_LABEL] = -1
    table.flags.writeable = False
    return table


def move_label(move: int, turn: int) -> int:
    """Label of a cshogi move (full 32-bit or 16-bit) played with ``turn`` (0 Black, 1 White) to move."""
    label = int(_tables()[turn][move & MOVE16_MASK])
    if label == _NO_LABEL:
        raise ValueError(f"move {move:#x} has no label (not a board move or drop of cshogi's encoding)")
    return label


def move_labels(moves: np.ndarray, turn: int | np.ndarray) -> np.ndarray:
    """Vectorised :func:`move_label`: int64 labels of an integer array of cshogi moves.

    ``turn`` is one side to move for all moves or an array broadcast against ``moves``.
    """
    keys = np.asarray(moves).astype(np.int64, copy=False) & MOVE16_MASK
    black, white = _tables()
    if np.ndim(turn) == 0:
        labels = (white if int(turn) else black)[keys]
    else:
        labels = np.where(np.asarray(turn) != 0, white[keys], black[keys])
    if labels.size and labels.max() >= _NO_LABEL:
        bad = np.asarray(moves).ravel()[np.argmax(labels.ravel() >= _NO_LABEL)]
        raise ValueError(f"move {int(bad):#x} has no label")
    return labels


def legal_moves_mask(board: cshogi.Board, out: np.ndarray | None = None) -> np.ndarray:
    """(1496,) uint8 multi-hot of the labels of ``board.legal_moves`` (mover's perspective).

    ``out``, when given, is a zeroed (1496,) uint8 array to fill (for example a row of a batch).
    """
    if out is None:
        out = np.zeros(MOVE_LABELS_NUM, dtype=np.uint8)
    moves = np.frombuffer(array("I", board.legal_moves), dtype=_MOVES_DTYPE)
    out[_tables()[board.turn][moves & MOVE16_MASK]] = 1
    return out


def legal_moves_masks(hcps: np.ndarray) -> np.ndarray:
    """(N, 1496) uint8 legal-move masks of N positions given as cshogi HCPs ((N, HCP_BYTES) uint8)."""
    hcps = np.ascontiguousarray(hcps, dtype=np.uint8).reshape(-1, HCP_BYTES)
    out = np.zeros((len(hcps), MOVE_LABELS_NUM), dtype=np.uint8)
    board = cshogi.Board()
    for row, hcp in zip(out, hcps):
        board.set_hcp(hcp)
        legal_moves_mask(board, out=row)
    return out


__all__ = ["label_table", "legal_moves_mask", "legal_moves_masks", "move_label", "move_labels"]
