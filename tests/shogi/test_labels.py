"""Move labels against the golden label table, golden positions and golden Stage 2 masks."""

from __future__ import annotations

from pathlib import Path

import cshogi
import numpy as np
import pytest

from maou.shogi import (
    MOVE_LABELS_NUM,
    SQUARES_NUM,
    label_table,
    legal_moves_mask,
    legal_moves_masks,
    move_label,
    move_labels,
)
from maou.shogi.shapes import CATEGORY_COUNTS, CATEGORY_STARTS


def _move16(frm: int, to: int, promote: int = 0) -> int:
    """cshogi's 16-bit move: to in bits 0-6, from in bits 7-13, promotion in bit 14."""
    return to | (frm << 7) | (promote << 14)


def _parse_positions(path: Path) -> list[dict]:
    blocks, block = [], None
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(" ")
        if key == "sfen":
            block = {"sfen": rest, "moves": {}}
        elif key in ("board", "hand"):
            block[key] = [int(v) for v in rest.split()]
        elif key == "moves":
            block["count"] = int(rest)
        elif key == "end":
            blocks.append(block)
        elif line:
            block["moves"][key] = int(rest)
    return blocks


@pytest.fixture(scope="module")
def stage2(golden_dir):
    with np.load(golden_dir / "stage2_golden.npz") as data:
        return {k: data[k] for k in data.files}


def test_category_table_matches_design():
    assert CATEGORY_STARTS[10:20] == (624, 651, 675, 699, 723, 747, 819, 868, 917, 941)
    assert CATEGORY_STARTS[20:] == (965, 1037, 1109, 1172, 1253, 1334, 1415)
    assert CATEGORY_STARTS[-1] + CATEGORY_COUNTS[-1] == MOVE_LABELS_NUM


def test_full_golden_label_table(golden_dir):
    """Every ``m FROM PROMO`` and ``d PIECE`` line: 81 labels by destination (Black to move)."""
    table = label_table()[cshogi.BLACK]
    lines = (golden_dir / "label_table_golden.txt").read_text().split("\n")
    assert lines[0].split() == ["labels_num", str(MOVE_LABELS_NUM)]
    seen, rows = set(), 0
    for line in filter(None, lines[1:]):
        kind, *fields = line.split()
        if kind == "m":
            frm, promote, expected = int(fields[0]), int(fields[1]), fields[2:]
            keys = [_move16(frm, to, promote) for to in range(SQUARES_NUM)]
        else:
            # d PIECE: PIECE is the move16 from-field minus 81 = cshogi piece type - 1 (P L N S B R G).
            assert kind == "d"
            piece, expected = int(fields[0]), fields[1:]
            keys = [_move16(SQUARES_NUM + piece, to) for to in range(SQUARES_NUM)]
        expected = np.array(expected, dtype=np.int64)
        np.testing.assert_array_equal(table[keys], expected, err_msg=line[:12])
        for key, label in zip(keys, expected):
            if label >= 0:
                assert move_label(key, cshogi.BLACK) == label
            else:
                with pytest.raises(ValueError):
                    move_label(key, cshogi.BLACK)
        seen.update(expected[expected >= 0].tolist())
        rows += 1
    assert rows == 2 * SQUARES_NUM + 7
    assert seen == set(range(MOVE_LABELS_NUM))


def test_move16_layout_matches_cshogi(golden_dir):
    """The bit layout the table is indexed by, checked against cshogi's accessors."""
    for block in _parse_positions(golden_dir / "positions_golden.txt"):
        for move in cshogi.Board(block["sfen"]).legal_moves:
            assert cshogi.move16(move) == move & 0xFFFF
            assert cshogi.move_to(move) == move & 0x7F
            assert cshogi.move_is_promotion(move) == bool(move & (1 << 14))
            frm = (move >> 7) & 0x7F
            if cshogi.move_is_drop(move):
                piece_type = cshogi.hand_piece_to_piece_type(cshogi.move_drop_hand_piece(move))
                assert frm == SQUARES_NUM + piece_type - 1
            else:
                assert cshogi.move_from(move) == frm


def test_golden_positions_every_legal_move(golden_dir):
    blocks = _parse_positions(golden_dir / "positions_golden.txt")
    assert len(blocks) == 10
    assert {cshogi.Board(b["sfen"]).turn for b in blocks} == {cshogi.BLACK, cshogi.WHITE}
    for block in blocks:
        board = cshogi.Board(block["sfen"])
        got = {cshogi.move_to_usi(m): move_label(m, board.turn) for m in board.legal_moves}
        assert len(got) == block["count"] == len(block["moves"])
        assert got == block["moves"], block["sfen"]
        expected = np.zeros(MOVE_LABELS_NUM, dtype=np.uint8)
        expected[list(block["moves"].values())] = 1
        np.testing.assert_array_equal(legal_moves_mask(board), expected)


def test_stage2_golden_masks(stage2):
    hcps, expected = stage2["hcps"], stage2["legal_moves_label"]
    assert expected.shape == (526, MOVE_LABELS_NUM)
    masks = legal_moves_masks(hcps)
    assert masks.dtype == np.uint8 and masks.shape == expected.shape
    np.testing.assert_array_equal(masks, expected)
    board = cshogi.Board()
    for i in range(0, len(hcps), 25):
        board.set_hcp(hcps[i])
        np.testing.assert_array_equal(legal_moves_mask(board), expected[i])
    assert 100 < expected.sum(axis=1).mean() < 125  # about 112 legal labels a position


@pytest.mark.parametrize(("sfen", "usi", "label"), [
    ("4k4/8G/9/9/9/9/9/9/4K4 b - 1", "1b1a", 0),
    (cshogi.STARTING_SFEN, "7g7f", 53),
    ("4k4/9/4P4/9/9/9/9/9/4K4 b G 1", "5c5b", 33),
    ("4k4/9/4P4/9/9/9/9/9/4K4 b G 1", "5c5b+", 637),
    ("4k4/9/4P4/9/9/9/9/9/4K4 b G 1", "G*1a", 1253),
    ("4k4/9/9/9/9/9/9/9/4K4 b R 1", "R*9i", 1495),
])
def test_worked_examples(sfen, usi, label):
    board = cshogi.Board(sfen)
    move = board.move_from_usi(usi)
    assert move in list(board.legal_moves)
    assert move_label(move, board.turn) == label
    assert legal_moves_mask(board)[label] == 1


def test_white_to_move_is_seen_from_the_mover(golden_dir):
    """A White-to-move position labels like its 180-degree, colour-swapped Black-to-move twin."""
    # White's 3b3c is, rotated, Black's 7h7g: UP to (x=6, y=6) -> label 6 * 8 + 6 = 54.
    board = cshogi.Board("4k4/6s2/9/9/9/9/9/9/4K4 w - 1")
    assert move_label(board.move_from_usi("3b3c"), cshogi.WHITE) == 54
    assert move_label(_move16(61, 60), cshogi.BLACK) == 54
    for block in _parse_positions(golden_dir / "positions_golden.txt"):
        board = cshogi.Board(block["sfen"])
        twin = cshogi.Board(cshogi.rotate_sfen(block["sfen"]))
        assert twin.turn != board.turn
        np.testing.assert_array_equal(legal_moves_mask(board), legal_moves_mask(twin))
        for move in board.legal_moves:
            rotated = cshogi.move_rotate(move)
            assert move_label(move, board.turn) == move_label(rotated, twin.turn)


def test_white_drop_and_promotion_examples():
    board = cshogi.Board("4k4/9/9/9/9/9/4p4/9/4K4 w g 1")
    assert move_label(board.move_from_usi("G*9i"), cshogi.WHITE) == 1253  # = Black's G*1a
    assert move_label(board.move_from_usi("5g5h+"), cshogi.WHITE) == 637  # = Black's 5c5b+


def test_move_labels_vectorised(golden_dir):
    for block in _parse_positions(golden_dir / "positions_golden.txt"):
        board = cshogi.Board(block["sfen"])
        moves = np.array(list(board.legal_moves), dtype=np.uint32)
        expected = [move_label(int(m), board.turn) for m in moves]
        np.testing.assert_array_equal(move_labels(moves, board.turn), expected)
        turns = np.full(len(moves), board.turn)
        np.testing.assert_array_equal(move_labels(moves.astype(np.int64), turns), expected)
    with pytest.raises(ValueError):
        move_labels(np.array([_move16(0, 1), _move16(5, 5)]), cshogi.BLACK)
    assert move_labels(np.array([], dtype=np.uint32), cshogi.BLACK).shape == (0,)
