"""Positions of game records, replayed once with cshogi, and everything computed from them at once.

The hot path replays each game once, keeping for each new position its raw pieces, hands and
legal moves in flat buffers; labels, masks, encodings and ids are then computed for all positions
at once with numpy (no per-row Python or pyarrow work). Stage 3 aggregates the played positions
by position: per-label play counts and win sums, as upstream's preprocessing does.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import cshogi
import numpy as np

from maou.data.games import GameRecord
from maou.layout import SPARSE_LABEL_DTYPE, SPARSE_WEIGHT_DTYPE, ranges_index
from maou.shogi import HAND_KINDS_NUM, HCP_BYTES, MOVE_LABELS_NUM, SQUARES_NUM, encode_raw, move_labels, position_ids

#: Stage 3 policy targets are stored as float16 (sums to 1 within 1e-3).
POLICY_DTYPE = SPARSE_WEIGHT_DTYPE
_LEGAL_DTYPE = np.dtype(f"u{array('I').itemsize}")
_WINNER_CODE = {"black": 0, "white": 1, "draw": 2}
_NO_RESULT = 3
_NAN = float("nan")


@dataclass
class Positions:
    """Unique positions of some games (first-seen order) and every position played in them.

    Unique (U rows): ``key`` cshogi ``zobrist_hash`` (dedup key), ``pieces`` (U, 81) cshogi piece
    ids by square, ``hands`` (U, 2, 7) cshogi hand counts by colour, ``turn`` (U,), ``hcp``
    (U, 32), ``legal`` flat cshogi legal moves with ``legal_counts`` (U,).
    Occurrences (O rows, in game order, then ply order): ``occ_row`` index into the unique rows,
    ``occ_game`` index of the game in the games given, ``occ_move`` the cshogi move played there
    (0: none, the start position of a record without moves), ``occ_value`` the game's result for
    the side to move (1 win, 0 loss, 0.5 draw; NaN: the game has no result).
    """

    key: np.ndarray
    pieces: np.ndarray
    hands: np.ndarray
    turn: np.ndarray
    hcp: np.ndarray
    legal: np.ndarray
    legal_counts: np.ndarray
    occ_row: np.ndarray
    occ_game: np.ndarray
    occ_move: np.ndarray
    occ_value: np.ndarray

    def __len__(self) -> int:
        return len(self.key)

    @property
    def positions(self) -> int:
        """Played positions (a move was made there), with or without a result."""
        return int(np.count_nonzero(self.occ_move))

    @property
    def labelled(self) -> np.ndarray:
        """Mask of the occurrences Stage 3 learns from: a move was played and the game has a result."""
        return (self.occ_move != 0) & ~np.isnan(self.occ_value)

    @property
    def row(self) -> np.ndarray:
        return self.occ_row[self.labelled]

    @property
    def move(self) -> np.ndarray:
        return self.occ_move[self.labelled]

    @property
    def value(self) -> np.ndarray:
        return self.occ_value[self.labelled]

    def played_labels(self) -> np.ndarray:
        """(O,) move label of each occurrence's played move, -1 where none was played."""
        played = self.occ_move != 0
        labels = np.full(len(self.occ_move), -1, dtype=np.int64)
        if played.any():
            labels[played] = move_labels(self.occ_move[played], self.turn[self.occ_row[played]])
        return labels


def extract_positions(games: Sequence[GameRecord], progress=None, task=None) -> Positions:
    """Replay ``games`` once with cshogi and collect their positions (see :class:`Positions`).

    A game's positions are the ones before each of its moves; a record without moves (an HCPE
    row without a best move) contributes its start position alone, as an occurrence without a move.
    """
    index: dict[int, int] = {}
    pieces, hands, turns = array("B"), array("B"), array("B")
    legal, legal_counts = array("I"), array("I")
    total = sum(max(len(g.moves), 1) for g in games)
    hcps = np.empty((total, HCP_BYTES), dtype=np.uint8)
    rows, game_numbers, moves, values = array("I"), array("I"), array("I"), array("f")
    board = cshogi.Board()
    for number, game in enumerate(games):
        board.set_sfen(game.sfen)
        code = _WINNER_CODE[game.winner] if game.winner is not None else _NO_RESULT
        for move in game.moves or (0,):
            key = board.zobrist_hash()
            row = index.get(key)
            if row is None:
                row = index[key] = len(index)
                pieces.extend(board.pieces)
                black_hand, white_hand = board.pieces_in_hand
                hands.extend(black_hand)
                hands.extend(white_hand)
                turns.append(board.turn)
                board.to_hcp(hcps[row])
                before = len(legal)
                legal.extend(board.legal_moves)
                legal_counts.append(len(legal) - before)
            rows.append(row)
            game_numbers.append(number)
            moves.append(move)
            values.append(_NAN if code == _NO_RESULT else 0.5 if code == 2 else float(code == board.turn))
            if move:
                board.push(move)
        if progress is not None:
            progress.advance(task)
    n = len(index)
    return Positions(
        key=np.fromiter(index.keys(), dtype=np.uint64, count=n),
        pieces=np.frombuffer(pieces, dtype=np.uint8).reshape(n, SQUARES_NUM),
        hands=np.frombuffer(hands, dtype=np.uint8).reshape(n, 2, HAND_KINDS_NUM),
        turn=np.frombuffer(turns, dtype=np.uint8),
        hcp=hcps[:n],
        legal=np.frombuffer(legal, dtype=_LEGAL_DTYPE),
        legal_counts=np.frombuffer(legal_counts, dtype=_LEGAL_DTYPE),
        occ_row=np.frombuffer(rows, dtype=_LEGAL_DTYPE).astype(np.intp),
        occ_game=np.frombuffer(game_numbers, dtype=_LEGAL_DTYPE).astype(np.intp),
        occ_move=np.frombuffer(moves, dtype=_LEGAL_DTYPE),
        occ_value=np.frombuffer(values, dtype=np.float32),
    )


def legal_masks(pos: Positions, rows: np.ndarray | None = None) -> np.ndarray:
    """(len(rows), 1496) uint8 legal-move masks of unique rows ``rows`` (default all), one scatter."""
    n = len(pos)
    counts = pos.legal_counts.astype(np.intp)
    owner = np.repeat(np.arange(n), counts)
    labels = move_labels(pos.legal, np.repeat(pos.turn, counts))
    if rows is None:
        out = np.zeros((n, MOVE_LABELS_NUM), dtype=np.uint8)
        out[owner, labels] = 1
        return out
    rows = np.asarray(rows, dtype=np.intp)
    target = np.full(n, -1, dtype=np.intp)
    target[rows] = np.arange(len(rows))
    keep = target[owner] >= 0
    out = np.zeros((len(rows), MOVE_LABELS_NUM), dtype=np.uint8)
    out[target[owner[keep]], labels[keep]] = 1
    return out


def encode_unique(pos: Positions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(board_id_positions (U, 9, 9), pieces_in_hand (U, 14), ids (U,) uint64)`` of the unique rows,
    vectorised (:func:`maou.shogi.encode_raw`, :func:`maou.shogi.position_ids`)."""
    boards, hands = encode_raw(pos.pieces, pos.hands, pos.turn)
    return boards, hands, position_ids(pos.pieces, pos.hands, pos.turn)


@dataclass
class Stage3Aggregate:
    """Positions grouped by unique row: ``rows`` (R,) unique-row indices, ``count`` and ``wins``
    (R,), and sparse per-label statistics ``pair_index`` (into ``rows``), ``pair_label``,
    ``pair_count``, ``pair_wins`` (upstream's move_label_values and move_win_values)."""

    rows: np.ndarray
    count: np.ndarray
    wins: np.ndarray
    pair_index: np.ndarray
    pair_label: np.ndarray
    pair_count: np.ndarray
    pair_wins: np.ndarray

    def policy(self) -> np.ndarray:
        """(R, 1496) POLICY_DTYPE move frequencies: play counts / count."""
        out = np.zeros((len(self.rows), MOVE_LABELS_NUM), dtype=POLICY_DTYPE)
        out[self.pair_index, self.pair_label] = self.pair_count / self.count[self.pair_index]
        return out

    def sparse_policy(self, order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The move frequencies of aggregated rows ``order``, sparse: ``(offsets (len(order) + 1,),
        labels, weights)``, each row's labels ascending; the weights equal :meth:`policy`'s values."""
        counts = np.bincount(self.pair_index, minlength=len(self.rows))
        starts = np.cumsum(counts) - counts  # pairs come grouped by row, labels ascending (np.unique)
        taken = counts[order]
        offsets = np.concatenate([[0], np.cumsum(taken)]).astype(np.int32)
        index = ranges_index(starts[order], taken)
        weights = (self.pair_count / self.count[self.pair_index]).astype(POLICY_DTYPE)
        return offsets, self.pair_label[index].astype(SPARSE_LABEL_DTYPE), weights[index]

    def result_value(self) -> np.ndarray:
        return (self.wins / self.count).astype(np.float32)


def aggregate_stage3(pos: Positions) -> Stage3Aggregate:
    """Group the played positions (with a result) by unique row, vectorised."""
    labelled = pos.labelled
    labels = pos.played_labels()[labelled]
    return aggregate_played(pos.occ_row[labelled], labels, pos.occ_value[labelled], len(pos))


def aggregate_played(row: np.ndarray, labels: np.ndarray, value: np.ndarray, n: int) -> Stage3Aggregate:
    """Group played positions by unique row (``row`` < ``n``): counts, win sums, per-label statistics."""
    row = np.asarray(row, dtype=np.intp)
    count_all = np.bincount(row, minlength=n)
    rows = np.flatnonzero(count_all)
    remap = np.full(n, -1, dtype=np.intp)
    remap[rows] = np.arange(len(rows))
    wins = np.bincount(row, weights=value, minlength=n)[rows]
    pair_keys, inverse, pair_count = np.unique(row.astype(np.int64) * MOVE_LABELS_NUM + labels,
                                               return_inverse=True, return_counts=True)
    pair_wins = np.bincount(inverse.ravel(), weights=value, minlength=len(pair_keys))
    return Stage3Aggregate(rows=rows, count=count_all[rows], wins=wins,
                           pair_index=remap[pair_keys // MOVE_LABELS_NUM],
                           pair_label=(pair_keys % MOVE_LABELS_NUM).astype(np.intp),
                           pair_count=pair_count, pair_wins=pair_wins)


__all__ = ["POLICY_DTYPE", "Positions", "Stage3Aggregate", "aggregate_played", "aggregate_stage3", "encode_unique",
           "extract_positions", "legal_masks"]
