"""Stage 1 rows: counts, layout, targets (cross-checked against cshogi's move generator)."""

from __future__ import annotations

from collections import Counter

import cshogi
import numpy as np
import pytest

from maou.shogi import (
    BOARD_SHAPE,
    PIECES_IN_HAND_NUM,
    REACHABLE_SQUARES_NUM,
    STAGE1_POSITIVES_NUM,
    STAGE1_ROWS_NUM,
    Stage1Rows,
    stage1_rows,
)
from maou.shogi.shapes import STAGE1_BOARD_ROWS_NUM, STAGE1_HAND_ROWS_NUM

#: Board id -> cshogi piece type (P L N S G B R K +P +L +N +S horse dragon).
_ID_TO_CSHOGI = (0, 1, 2, 3, 4, 7, 5, 6, 8, 9, 10, 11, 12, 13, 14)


@pytest.fixture(scope="module")
def rows() -> Stage1Rows:
    return stage1_rows()


def _target_squares(row: np.ndarray) -> set[int]:
    return set(np.flatnonzero(row).tolist())


def test_shapes_and_caching(rows):
    assert STAGE1_ROWS_NUM == 1105 == STAGE1_BOARD_ROWS_NUM + STAGE1_HAND_ROWS_NUM
    assert rows.board_id_positions.shape == (STAGE1_ROWS_NUM, *BOARD_SHAPE)
    assert rows.pieces_in_hand.shape == (STAGE1_ROWS_NUM, PIECES_IN_HAND_NUM)
    assert rows.reachable_squares.shape == (STAGE1_ROWS_NUM, REACHABLE_SQUARES_NUM)
    for a in rows:
        assert a.dtype == np.uint8 and not a.flags.writeable
    assert stage1_rows() is rows


def test_row_counts_per_piece_type(rows):
    boards, hands = rows.board_id_positions, rows.pieces_in_hand
    on_board = boards.reshape(STAGE1_ROWS_NUM, -1)
    assert ((on_board != 0).sum(axis=1)[:STAGE1_BOARD_ROWS_NUM] == 1).all()
    assert not on_board[STAGE1_BOARD_ROWS_NUM:].any() and not hands[:STAGE1_BOARD_ROWS_NUM].any()
    counts = Counter(on_board[:STAGE1_BOARD_ROWS_NUM].max(axis=1).tolist())
    assert counts == {1: 72, 2: 72, 3: 63, **{piece: 81 for piece in range(4, 15)}}
    # Pawns and lances never on rank a, knights never on ranks a-b.
    for piece, min_rank in ((1, 1), (2, 1), (3, 2)):
        assert np.argwhere(boards == piece)[:, 1].min() == min_rank
    # One hand row per kind, the mover's: P L N S G B R.
    np.testing.assert_array_equal(hands[STAGE1_BOARD_ROWS_NUM:, :7], np.eye(7, dtype=np.uint8))
    assert not hands[:, 7:].any()


def test_targets(rows):
    targets = rows.reachable_squares
    assert set(np.unique(targets).tolist()) == {0, 1}
    positives = targets.sum(axis=1)
    assert (positives > 0).all()
    assert int(positives.sum()) == STAGE1_POSITIVES_NUM
    assert positives.mean() == pytest.approx(7.93, abs=0.005)
    # Drops: pawn and lance 72 squares, knight 63, the rest 81.
    assert positives[STAGE1_BOARD_ROWS_NUM:].tolist() == [72, 72, 63, 81, 81, 81, 81]
    boards = rows.board_id_positions.reshape(STAGE1_ROWS_NUM, -1)
    inputs = np.concatenate([boards, rows.pieces_in_hand], axis=1)
    assert len(np.unique(inputs, axis=0)) == STAGE1_ROWS_NUM


def _row_of(rows: Stage1Rows, piece: int, x: int, y: int) -> int:
    hits = np.flatnonzero(rows.board_id_positions[:, y, x] == piece)
    assert len(hits) == 1
    return int(hits[0])


def test_target_index_is_9x_plus_y(rows):
    """Targets use move-destination numbering ``9 * x + y``, not the board's ``[y][x]`` flattening."""
    sq = lambda x, y: 9 * x + y
    targets = rows.reachable_squares
    assert _target_squares(targets[_row_of(rows, 1, 4, 4)]) == {sq(4, 3)}  # pawn 5e -> 5d
    assert _target_squares(targets[_row_of(rows, 3, 4, 4)]) == {sq(3, 2), sq(5, 2)}  # knight 5e
    assert _target_squares(targets[_row_of(rows, 2, 8, 8)]) == {sq(8, y) for y in range(8)}  # lance 9i
    assert _target_squares(targets[_row_of(rows, 4, 0, 0)]) == {sq(1, 1)}  # silver 1a: only back diagonal
    dragon = _target_squares(targets[_row_of(rows, 14, 0, 0)])
    assert dragon == {sq(0, y) for y in range(1, 9)} | {sq(x, 0) for x in range(1, 9)} | {sq(1, 1)}
    assert len(_target_squares(targets[_row_of(rows, 13, 4, 4)])) == 16 + 4  # horse 5e


def test_targets_match_cshogi_pseudo_legal_moves(rows):
    """Every row's target = destinations cshogi generates for that one-piece position, Black to move."""
    board = cshogi.Board()
    empty_hand = [0] * 7
    for i in range(STAGE1_ROWS_NUM):
        pieces = [0] * REACHABLE_SQUARES_NUM
        for y, x in np.argwhere(rows.board_id_positions[i]):
            pieces[9 * x + y] = _ID_TO_CSHOGI[rows.board_id_positions[i, y, x]]
        board.set_pieces(pieces, ([int(v) for v in rows.pieces_in_hand[i, :7]], empty_hand))
        assert board.turn == cshogi.BLACK
        destinations = {cshogi.move_to(m) for m in board.pseudo_legal_moves}
        assert destinations == _target_squares(rows.reachable_squares[i]), i
