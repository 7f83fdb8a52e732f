"""Phase two of a build: one partition of positions -> its Stage 2 and Stage 3 rows, sorted by id.

Every occurrence of a position is in the same partition (:mod:`maou.data.shards`), so each
partition deduplicates alone, exactly as one pass over the whole corpus would: per split (the
side of the occurrence's game, from the build's table of records: the rows of an HCPE game share
it), the unique positions in first-seen order; validation drops the ones also in train, at every
stage (no position is in both splits). Stage 2 rows are the kept positions, Stage 3 rows their
played occurrences with a result, aggregated
(:func:`maou.data.positions.aggregate_played`). Rows are sorted by id (stable), and partitions are
id ranges: written one after the other they are the sorted tables.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maou.data.positions import aggregate_played
from maou.data.shards import read_partition
from maou.data.writers import stage2_table, stage3_table
from maou.layout import SPLITS, stage_name
from maou.shogi.shapes import BOARD_SHAPE
from maou.stages import games_stages, resolve_reference

#: The build's table of records in the scratch folder (a game, or an HCPE row): 0 train, 1 validation,
#: -1 left out.
GAMES_FILE = "games.npy"


@dataclass(frozen=True)
class PartitionTask:
    number: int
    scratch: str
    #: Per shard, the number of the shard's first game among all games (``GAMES_FILE`` rows).
    game_base: tuple[int, ...]


@dataclass
class PartitionResult:
    """What the manifests count, per split (``train``, ``val``)."""

    number: int
    positions: dict[str, int] = field(default_factory=dict)
    unique: dict[str, int] = field(default_factory=dict)
    legal_moves: dict[str, int] = field(default_factory=dict)
    rows: dict[str, dict[str, int]] = field(
        default_factory=lambda: {stage_name(s.number): {} for s in games_stages()})
    val_dropped_seen_in_train: int = 0
    #: Stage 3 positions of validation games left out because train has them.
    stage3_val_dropped_seen_in_train: int = 0
    cpu_seconds: float = 0.0


def output_path(scratch: Path, stage_number: int, split: str, partition: int) -> Path:
    return scratch / "out" / f"stage{stage_number}-{split}-{partition:04d}.arrow"


class _Positions:
    """The partition's unique positions, each key once (any copy: equal keys are equal positions)."""

    def __init__(self, columns: dict[str, np.ndarray]) -> None:
        self.keys, first = np.unique(columns["key"], return_index=True)
        self.columns = {name: values[first] for name, values in columns.items()}

    def rows_of(self, keys: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.keys, keys)

    def ids(self, rows: np.ndarray) -> np.ndarray:
        return self.columns["id"][rows]

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(ids, hcps, boards (R, 9, 9), hands)`` of ``rows``."""
        c = self.columns
        return c["id"][rows], c["hcp"][rows], c["board"][rows].reshape(-1, *BOARD_SHAPE), c["hand"][rows]


def _first_seen(keys: np.ndarray) -> np.ndarray:
    """The distinct ``keys`` in order of first appearance."""
    _, first = np.unique(keys, return_index=True)
    return keys[np.sort(first)]


def _index_in(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each of ``values`` (all present in the distinct ``keys``), its index in ``keys``."""
    sorter = np.argsort(keys)
    return sorter[np.searchsorted(keys[sorter], values)]


def _write(path: Path, table: Any) -> int:
    import pyarrow as pa

    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.ipc.new_file(str(path), table.schema) as writer:
        writer.write_table(table)
    return table.num_rows


def build_partition(task: PartitionTask) -> PartitionResult:
    """Write the partition's four tables (Stage 2 and 3, train and val) into the scratch folder."""
    started = time.process_time()
    scratch = Path(task.scratch)
    result = PartitionResult(task.number)
    positions = _Positions(read_partition(scratch, task.number, "u")[0])
    occ, shard = read_partition(scratch, task.number, "o")
    games = np.asarray(task.game_base, dtype=np.int64)[shard] + occ["game"]
    side = np.load(scratch / GAMES_FILE, mmap_mode="r")[games]
    train_keys = np.zeros(0, dtype=np.uint64)
    for code, split in enumerate(SPLITS):
        mask = side == code
        keys = _first_seen(occ["key"][mask])
        rows = positions.rows_of(keys)
        result.positions[split] = int(np.count_nonzero(occ["played"][mask]))
        result.unique[split] = len(keys)
        result.legal_moves[split] = int(positions.columns["legal_count"][rows].sum(dtype=np.int64))
        keep = ~np.isin(keys, train_keys)  # all of train; validation drops positions seen in train
        result.val_dropped_seen_in_train += int(np.count_nonzero(~keep))
        part = PartitionSplit(positions, split, keys, rows, keep, {k: v[mask] for k, v in occ.items()}, train_keys,
                              result)
        for info in games_stages():
            assert info.dataset is not None
            table = resolve_reference(info.dataset.rows)(part)
            result.rows[stage_name(info.number)][split] = _write(output_path(scratch, info.number, split, task.number),
                                                               table)
        train_keys = keys
    result.cpu_seconds = time.process_time() - started
    return result


@dataclass
class PartitionSplit:
    """One split of one partition, as each games-built stage's ``dataset.rows`` function sees it."""

    positions: _Positions
    split: str
    #: The split's distinct position keys in first-seen order, and their rows in ``positions``.
    keys: np.ndarray
    rows: np.ndarray
    #: Which of them the split keeps (validation drops positions seen in train).
    keep: np.ndarray
    #: The split's occurrences (one per position played in a game of the split).
    occurrences: dict[str, np.ndarray]
    #: The train split's keys (empty while the train split itself is written).
    train_keys: np.ndarray
    result: PartitionResult


def stage2_rows(part: PartitionSplit) -> Any:
    """Stage 2: every kept distinct position with its legal moves, sorted by id."""
    positions, rows = part.positions, part.rows[part.keep]
    rows = rows[np.argsort(positions.ids(rows), kind="stable")]
    return stage2_table(*positions.take(rows), positions.columns["legal_bits"][rows])


def stage3_rows(part: PartitionSplit) -> Any:
    """Stage 3: the played occurrences with a result of the kept positions (validation drops those
    seen in train), aggregated per position, sorted by id."""
    occ, positions = part.occurrences, part.positions
    index = _index_in(part.keys, occ["key"])
    labelled = occ["label"] >= 0
    part.result.stage3_val_dropped_seen_in_train += len(np.unique(index[labelled & ~part.keep[index]]))
    labelled &= part.keep[index]
    agg = aggregate_played(index[labelled], occ["label"][labelled].astype(np.int64), occ["value"][labelled],
                           len(part.keys))
    rows = part.rows[agg.rows]
    order = np.argsort(positions.ids(rows), kind="stable")
    return stage3_table(*positions.take(rows[order]), agg.sparse_policy(order), agg.result_value()[order],
                        agg.count[order])


__all__ = ["GAMES_FILE", "PartitionResult", "PartitionSplit", "PartitionTask", "build_partition", "output_path",
           "stage2_rows", "stage3_rows"]
