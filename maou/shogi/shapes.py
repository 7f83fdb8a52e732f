"""Every count and array shape of the shogi encoding (docs/design.md, sections 3 and 4), in one place.

Other modules import these names; no other module spells out 1496, 81, 14, 29 or 1105.
"""

from __future__ import annotations

#: Board squares; ``sq = 9 * x + y`` (x = file index, 0 = file 1; y = rank index, 0 = rank a).
SQUARES_NUM = 81
#: ``board_id_positions`` of one position: ``[rank y][file x]``.
BOARD_SHAPE = (9, 9)
#: Piece kinds that can be held in hand, in cshogi's hand order: P, L, N, S, G, B, R.
HAND_KINDS_NUM = 7
#: ``pieces_in_hand``: the mover's seven counts, then the opponent's.
PIECES_IN_HAND_NUM = 2 * HAND_KINDS_NUM
#: Piece types on the board: P L N S G B R K +P +L +N +S horse dragon (ids 1-14).
PIECE_TYPES_NUM = 14
#: Board ids: 0 empty, 1-14 the mover's pieces, 15-28 the opponent's.
PIECE_IDS_NUM = 1 + 2 * PIECE_TYPES_NUM

#: cshogi HuffmanCodedPos (HCP): one position in 32 bytes.
HCP_BYTES = 32

#: Move label space (direction categories x allowed destinations, then drops).
MOVE_LABELS_NUM = 1496
#: A multi-hot over the move labels packed eight flags a byte (the compact Stage 2 target).
MOVE_LABELS_PACKED_BYTES = MOVE_LABELS_NUM // 8

#: Stage 1 target: one flag per square, indexed like move destinations (``sq = 9 * x + y``).
REACHABLE_SQUARES_NUM = SQUARES_NUM
#: Stage 1 one-piece boards: pawn, lance 72 each, knight 63, eleven other types 81 each.
STAGE1_BOARD_ROWS_NUM = 72 + 72 + 63 + 11 * 81
#: Stage 1 one-piece hands: one row per hand kind.
STAGE1_HAND_ROWS_NUM = HAND_KINDS_NUM
#: All Stage 1 rows.
STAGE1_ROWS_NUM = STAGE1_BOARD_ROWS_NUM + STAGE1_HAND_ROWS_NUM
#: Positive target flags over all Stage 1 rows: 8,228 on boards + 531 drops (mean 7.927 a row).
STAGE1_POSITIVES_NUM = 8759

#: Move-label categories in label order: ten directions, the same ten promoting, seven drops.
DIRECTIONS = ("UP", "UP_LEFT", "UP_RIGHT", "LEFT", "RIGHT", "DOWN", "DOWN_LEFT", "DOWN_RIGHT",
              "KEIMA_LEFT", "KEIMA_RIGHT")
DROP_KINDS = ("PAWN", "LANCE", "KNIGHT", "SILVER", "GOLD", "BISHOP", "ROOK")
CATEGORIES = DIRECTIONS + tuple(f"{d}_PROMOTE" for d in DIRECTIONS) + tuple(f"DROP_{k}" for k in DROP_KINDS)
#: Number of labels of each category (its allowed destination squares).
CATEGORY_COUNTS = (72, 64, 64, 72, 72, 72, 64, 64, 40, 40,
                   27, 24, 24, 24, 24, 72, 49, 49, 24, 24,
                   72, 72, 63, 81, 81, 81, 81)
#: First label of each category.
CATEGORY_STARTS = tuple(sum(CATEGORY_COUNTS[:i]) for i in range(len(CATEGORY_COUNTS)))
#: Categories of promoting moves start here; drops at ``DROP_LABELS_START``.
PROMOTION_LABELS_START = CATEGORY_STARTS[len(DIRECTIONS)]
DROP_LABELS_START = CATEGORY_STARTS[2 * len(DIRECTIONS)]

assert len(CATEGORIES) == len(CATEGORY_COUNTS) == 27
assert sum(CATEGORY_COUNTS) == MOVE_LABELS_NUM
assert MOVE_LABELS_PACKED_BYTES * 8 == MOVE_LABELS_NUM
assert (PROMOTION_LABELS_START, DROP_LABELS_START) == (624, 965)
assert STAGE1_ROWS_NUM == 1105

__all__ = [
    "BOARD_SHAPE", "CATEGORIES", "CATEGORY_COUNTS", "CATEGORY_STARTS", "DIRECTIONS", "DROP_KINDS",
    "DROP_LABELS_START", "HAND_KINDS_NUM", "HCP_BYTES", "MOVE_LABELS_NUM", "MOVE_LABELS_PACKED_BYTES",
    "PIECES_IN_HAND_NUM", "PIECE_IDS_NUM", "PIECE_TYPES_NUM", "PROMOTION_LABELS_START", "REACHABLE_SQUARES_NUM",
    "SQUARES_NUM",
    "STAGE1_BOARD_ROWS_NUM", "STAGE1_HAND_ROWS_NUM", "STAGE1_POSITIVES_NUM", "STAGE1_ROWS_NUM",
]
