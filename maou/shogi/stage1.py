"""Stage 1 data (docs/design.md, section 4): the whole universe of one-piece patterns, 1,105 rows.

Rows, in this order:

* 1,098 boards with one of the mover's pieces on an otherwise empty board, by piece id
  (1 pawn ... 14 dragon, the ``board_id_positions`` ids) and then by square ``sq = 9 * x + y``
  ascending, at every square the piece may stand on (pawn and lance not on rank a, knight not on
  ranks a-b). Target: the squares it attacks on the empty board, moving up (toward y = 0);
  sliders run to the edge, horse and dragon add their one-step moves, promotion is ignored.
* 7 empty boards with one piece in the mover's hand (P L N S G B R). Target: its legal drop
  squares on the empty board (pawn and lance not on rank a, knight not on ranks a-b).

Target convention: ``reachable_squares[row, 9 * x + y]``, the square numbering of cshogi and of
move destinations (:mod:`maou.shogi.labels`), NOT the row-major flattening of
``board_id_positions`` (which is ``[y][x]``, i.e. ``9 * y + x``). The pieces are the mover's, so
there is no perspective flip. Targets have about 7.93 positives per row (exactly 8,759 / 1,105 = 7.927).
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import numpy as np

from maou.shogi.shapes import (
    BOARD_SHAPE,
    HAND_KINDS_NUM,
    PIECES_IN_HAND_NUM,
    REACHABLE_SQUARES_NUM,
    STAGE1_POSITIVES_NUM,
    STAGE1_ROWS_NUM,
)

_UP, _DOWN, _LEFT, _RIGHT = (0, -1), (0, 1), (1, 0), (-1, 0)
_ORTHOGONAL = (_UP, _DOWN, _LEFT, _RIGHT)
_DIAGONAL = ((1, -1), (-1, -1), (1, 1), (-1, 1))
_GOLD = (_UP, (1, -1), (-1, -1), _LEFT, _RIGHT, _DOWN)
#: Board id -> (one-step moves (dx, dy), sliding directions); "up" is dy < 0.
_MOVES: dict[int, tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]] = {
    1: ((_UP,), ()),  # pawn
    2: ((), (_UP,)),  # lance
    3: (((1, -2), (-1, -2)), ()),  # knight
    4: ((_UP,) + _DIAGONAL, ()),  # silver
    5: (_GOLD, ()),  # gold
    6: ((), _DIAGONAL),  # bishop
    7: ((), _ORTHOGONAL),  # rook
    8: (_ORTHOGONAL + _DIAGONAL, ()),  # king
    9: (_GOLD, ()), 10: (_GOLD, ()), 11: (_GOLD, ()), 12: (_GOLD, ()),  # promoted P L N S
    13: (_ORTHOGONAL, _DIAGONAL),  # horse
    14: (_DIAGONAL, _ORTHOGONAL),  # dragon
}
#: Lowest rank index a piece may stand on (and be dropped on): pawn, lance 1; knight 2.
_MIN_RANK = {1: 1, 2: 1, 3: 2}
#: Hand kind (P L N S G B R) -> board id of the same piece.
_HAND_KIND_TO_ID = (1, 2, 3, 4, 5, 6, 7)


class Stage1Rows(NamedTuple):
    """All Stage 1 rows as read-only arrays (see the module docstring for order and layout)."""

    board_id_positions: np.ndarray  # (1105, 9, 9) uint8, [y][x]
    pieces_in_hand: np.ndarray  # (1105, 14) uint8
    reachable_squares: np.ndarray  # (1105, 81) uint8, index 9 * x + y


def _attacks(piece_id: int, x: int, y: int) -> list[int]:
    steps, slides = _MOVES[piece_id]
    squares = []
    for dx, dy in steps:
        if 0 <= x + dx < 9 and 0 <= y + dy < 9:
            squares.append(9 * (x + dx) + y + dy)
    for dx, dy in slides:
        tx, ty = x + dx, y + dy
        while 0 <= tx < 9 and 0 <= ty < 9:
            squares.append(9 * tx + ty)
            tx, ty = tx + dx, ty + dy
    return squares


@cache
def stage1_rows() -> Stage1Rows:
    """The 1,105 Stage 1 rows (deterministic, built once and cached; arrays are read-only)."""
    boards = np.zeros((STAGE1_ROWS_NUM, *BOARD_SHAPE), dtype=np.uint8)
    hands = np.zeros((STAGE1_ROWS_NUM, PIECES_IN_HAND_NUM), dtype=np.uint8)
    targets = np.zeros((STAGE1_ROWS_NUM, REACHABLE_SQUARES_NUM), dtype=np.uint8)
    row = 0
    for piece_id in _MOVES:
        for sq in range(REACHABLE_SQUARES_NUM):
            x, y = divmod(sq, 9)
            if y < _MIN_RANK.get(piece_id, 0):
                continue
            boards[row, y, x] = piece_id
            targets[row, _attacks(piece_id, x, y)] = 1
            row += 1
    for kind in range(HAND_KINDS_NUM):
        hands[row, kind] = 1
        drop = np.arange(REACHABLE_SQUARES_NUM)
        targets[row, drop[drop % 9 >= _MIN_RANK.get(_HAND_KIND_TO_ID[kind], 0)]] = 1
        row += 1
    if row != STAGE1_ROWS_NUM or int(targets.sum()) != STAGE1_POSITIVES_NUM:
        raise AssertionError(f"stage 1: {row} rows, {int(targets.sum())} positives")
    for a in (boards, hands, targets):
        a.flags.writeable = False
    return Stage1Rows(boards, hands, targets)


__all__ = ["Stage1Rows", "stage1_rows"]
