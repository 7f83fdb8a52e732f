"""Shogi encoding shared with the upstream ``maou`` trainer (docs/design.md, sections 3 and 4).

Boards and legal moves come from cshogi; this package only maps them to the network's inputs
(:func:`encode_position`), move labels (:func:`move_label`, :func:`legal_moves_mask`) and the
synthetic Stage 1 rows (:func:`stage1_rows`). Counts and shapes live in :mod:`maou.shogi.shapes`.
"""

from maou.shogi.features import encode_position, encode_positions, encode_raw, position_id, position_ids
from maou.shogi.labels import label_table, legal_moves_mask, legal_moves_masks, move_label, move_labels
from maou.shogi.shapes import (
    BOARD_SHAPE,
    HAND_KINDS_NUM,
    HCP_BYTES,
    MOVE_LABELS_NUM,
    MOVE_LABELS_PACKED_BYTES,
    PIECE_IDS_NUM,
    PIECE_TYPES_NUM,
    PIECES_IN_HAND_NUM,
    REACHABLE_SQUARES_NUM,
    SQUARES_NUM,
    STAGE1_POSITIVES_NUM,
    STAGE1_ROWS_NUM,
)
from maou.shogi.stage1 import Stage1Rows, stage1_rows

__all__ = [
    "BOARD_SHAPE", "HAND_KINDS_NUM", "HCP_BYTES", "MOVE_LABELS_NUM", "MOVE_LABELS_PACKED_BYTES", "PIECE_IDS_NUM",
    "PIECE_TYPES_NUM",
    "PIECES_IN_HAND_NUM", "REACHABLE_SQUARES_NUM", "SQUARES_NUM", "STAGE1_POSITIVES_NUM", "STAGE1_ROWS_NUM",
    "Stage1Rows", "encode_position", "encode_positions", "encode_raw", "label_table", "legal_moves_mask",
    "legal_moves_masks", "move_label", "move_labels", "position_id", "position_ids", "stage1_rows",
]
