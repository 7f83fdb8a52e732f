"""Board and hand encoding (mover's perspective) and upstream-compatible position ids."""

from __future__ import annotations

import cshogi
import numpy as np
import pytest

from maou.shogi import (
    BOARD_SHAPE,
    PIECE_IDS_NUM,
    PIECES_IN_HAND_NUM,
    encode_position,
    encode_positions,
    position_id,
)


@pytest.fixture(scope="module")
def stage2(golden_dir):
    with np.load(golden_dir / "stage2_golden.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def golden_positions(golden_dir):
    """(sfen, board line, hand line) of each block of positions_golden.txt."""
    blocks, sfen, fields = [], None, {}
    for line in (golden_dir / "positions_golden.txt").read_text().splitlines():
        key, _, rest = line.partition(" ")
        if key == "sfen":
            sfen = rest
        elif key in ("board", "hand"):
            fields[key] = [int(v) for v in rest.split()]
        elif key == "end":
            blocks.append((sfen, fields["board"], fields["hand"]))
    assert len(blocks) == 10
    return blocks


def test_starting_position_ids():
    board_ids, hand = encode_position(cshogi.Board())
    assert board_ids.shape == BOARD_SHAPE and board_ids.dtype == np.uint8 and board_ids.flags.c_contiguous
    assert hand.shape == (PIECES_IN_HAND_NUM,) and hand.dtype == np.uint8 and not hand.any()
    # [rank y][file x], x = 0 is file 1: Black's king 5i, gold 4i, bishop 8h, rook 2h; White's rook 8b.
    assert board_ids[8, 4] == 8 and board_ids[8, 3] == 5
    assert board_ids[7, 7] == 6 and board_ids[7, 1] == 7
    assert board_ids[0, 4] == 8 + 14 and board_ids[1, 7] == 7 + 14 and board_ids[1, 1] == 6 + 14
    assert board_ids.max() < PIECE_IDS_NUM
    assert (board_ids[6] == 1).all() and (board_ids[2] == 1 + 14).all()


def test_every_piece_type_id():
    # One Black piece of each cshogi type on rank e; ids follow P L N S G B R K +P +L +N +S horse dragon.
    sfen = "4k4/9/9/9/PLNSGBRK1/9/+P+L+N+S+B+R3/9/9 b - 1"
    board_ids, _ = encode_position(cshogi.Board(sfen))
    # SFEN lists files 9..1, so file 9 (x = 8) comes first.
    assert board_ids[4, ::-1][:8].tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert board_ids[6, ::-1][:6].tolist() == [9, 10, 11, 12, 13, 14]


def test_white_to_move_rotates_and_swaps_colours():
    board_ids, hand = encode_position(cshogi.Board("4k4/9/9/9/9/9/9/9/4K4 w 2Pgr 1"))
    # White's king (5a, x=4 y=0) becomes the mover's king at the rotated square (x=4, y=8).
    assert board_ids[8, 4] == 8 and board_ids[0, 4] == 8 + 14
    # Mover (White): gold and rook; opponent (Black): two pawns.
    assert hand.tolist() == [0, 0, 0, 0, 1, 0, 1] + [2, 0, 0, 0, 0, 0, 0]
    board_ids, _ = encode_position(cshogi.Board("8k/9/9/9/9/9/9/9/K8 w - 1"))
    # White's king on 1a (x=0, y=0) -> (x=8, y=8); Black's king on 9i -> (0, 0).
    assert board_ids[8, 8] == 8 and board_ids[0, 0] == 22


def test_golden_position_lines(golden_positions):
    for sfen, board_line, hand_line in golden_positions:
        board_ids, hand = encode_position(cshogi.Board(sfen))
        assert board_ids.ravel().tolist() == board_line, sfen
        assert hand.tolist() == hand_line, sfen


def test_rotated_twin_encodes_identically(golden_positions):
    for sfen, _, _ in golden_positions:
        a = encode_position(cshogi.Board(sfen))
        b = encode_position(cshogi.Board(cshogi.rotate_sfen(sfen)))
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_stage2_golden_boards_and_hands(stage2):
    boards, hands = encode_positions(stage2["hcps"])
    np.testing.assert_array_equal(boards, stage2["board_id_positions"])
    np.testing.assert_array_equal(hands, stage2["pieces_in_hand"])
    board = cshogi.Board()
    turns = set()
    for i in range(0, len(stage2["hcps"]), 25):
        board.set_hcp(stage2["hcps"][i])
        turns.add(board.turn)
        board_ids, hand = encode_position(board)
        np.testing.assert_array_equal(board_ids, stage2["board_id_positions"][i])
        np.testing.assert_array_equal(hand, stage2["pieces_in_hand"][i])
    assert turns == {cshogi.BLACK, cshogi.WHITE}


def test_golden_ids_are_upstream_zobrist_keys(stage2):
    """``ids`` are upstream maou's own 64-bit Zobrist keys, not cshogi's ``zobrist_hash()``."""
    board = cshogi.Board()
    ids, cshogi_hashes = [], []
    for hcp in stage2["hcps"]:
        board.set_hcp(hcp)
        ids.append(position_id(board))
        cshogi_hashes.append(board.zobrist_hash())
    np.testing.assert_array_equal(np.array(ids, dtype=np.uint64), stage2["ids"])
    assert not set(cshogi_hashes) & set(ids)
    assert len(set(ids)) == len(ids)


def test_position_id_depends_on_side_to_move_and_hand():
    base = position_id(cshogi.Board("4k4/9/9/9/9/9/9/9/4K4 b P 1"))
    assert base != position_id(cshogi.Board("4k4/9/9/9/9/9/9/9/4K4 w P 1"))
    assert base != position_id(cshogi.Board("4k4/9/9/9/9/9/9/9/4K4 b 2P 1"))
    assert base != position_id(cshogi.Board("4k4/9/9/9/9/9/9/9/4K4 b p 1"))
    assert base == position_id(cshogi.Board("4k4/9/9/9/9/9/9/9/4K4 b P 99"))
    assert 0 <= base < 2**64
