"""Phase one of a build: read a shard of record files, replay its games, spill positions to partitions.

A shard is a run of consecutive record files. Its worker reads and validates the records
(duplicates are left to the build, which sees every shard), replays the games a few thousand
positions at a time (:func:`maou.data.positions.extract_positions`), computes everything a
position's rows need while the board data is at hand (encodings, ids, bit-packed legal-move
flags, the played move's label), and appends the results to the partition files of the build's
scratch folder. A position goes to partition ``id >> (64 - bits)``: the same position always
lands in the same partition, and partitions in order are ids in order. A worker's memory is one
flush of positions, whatever the size of the corpus.

Per partition and shard, two Arrow IPC streams: ``u-SHARD`` (the shard's unique positions: key,
id, board, hand, hcp, legal bits, legal-move count) and ``o-SHARD`` (every occurrence: key, the
record's number within the shard (a game, or an HCPE row: :class:`ShardGames`), the played
move's label where Stage 3 learns from it (a move and a result) else -1, the result for the side
to move or NaN, whether a move was played). Occurrences keep record order, then ply order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maou.data.games import GameRecord, ReadStats, game_digest
from maou.data.positions import encode_unique, extract_positions, legal_masks
from maou.data.sources import iter_records
from maou.layout import fixed_list, pack_flags
from maou.shogi.shapes import BOARD_SHAPE, HCP_BYTES, MOVE_LABELS_PACKED_BYTES, PIECES_IN_HAND_NUM

#: Positions replayed between two spills to the partitions (bounds a worker's memory).
FLUSH_POSITIONS = 32_768
_DIGEST_BYTES = 16
#: Columns of the partition streams: name -> (dtype, values a row; 0 for a scalar).
UNIQUE_COLUMNS: dict[str, tuple[type, int]] = {
    "key": (np.uint64, 0), "id": (np.uint64, 0), "board": (np.uint8, BOARD_SHAPE[0] * BOARD_SHAPE[1]),
    "hand": (np.uint8, PIECES_IN_HAND_NUM), "hcp": (np.uint8, HCP_BYTES),
    "legal_bits": (np.uint8, MOVE_LABELS_PACKED_BYTES), "legal_count": (np.uint16, 0)}
OCCURRENCE_COLUMNS: dict[str, tuple[type, int]] = {
    "key": (np.uint64, 0), "game": (np.int64, 0), "label": (np.int16, 0), "value": (np.float32, 0),
    "played": (np.bool_, 0)}


def partition_folder(scratch: Path, partition: int) -> Path:
    return scratch / f"p{partition:04d}"


def partition_of(ids: np.ndarray, bits: int) -> np.ndarray:
    """The partition of each position id: its top ``bits`` bits (0 for every id when ``bits`` is 0)."""
    ids = np.asarray(ids, dtype=np.uint64)
    if bits == 0:
        return np.zeros(len(ids), dtype=np.int64)
    return (ids >> np.uint64(64 - bits)).astype(np.int64)


@dataclass(frozen=True)
class ShardTask:
    number: int
    #: The shard's record files, in build order; ``first_file`` is the index of the first among all.
    files: tuple[str, ...]
    first_file: int
    scratch: str
    partition_bits: int


@dataclass
class ShardGames:
    """The shard's valid records in order (a CSA or KIF game, or an HCPE row): their file (index
    among the build's files), record index in that file, number of moves, whether they have no
    result, and the 16 bytes naming their game (``digest``).

    A ``whole_game`` record (CSA, KIF) is a game of its own, its digest that of its start and moves
    (:func:`~maou.data.games.game_digest`): an equal one later is a duplicate. An HCPE row's
    digest is its game's key (:attr:`~maou.data.games.GameRecord.hcpe_game`): the rows with an
    equal one, in any shard, are one game, which ``split.json`` lists as ``names[digest]`` (the
    name first seen in the shard)."""

    file: np.ndarray
    record: np.ndarray
    moves: np.ndarray
    no_result: np.ndarray
    digest: np.ndarray
    whole_game: np.ndarray
    names: dict[bytes, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.file)


@dataclass
class ShardResult:
    number: int
    stats: ReadStats
    games: ShardGames
    #: CPU time the task took (its process's, wherever it ran).
    cpu_seconds: float = 0.0


class _GameLog:
    def __init__(self, files: tuple[str, ...], first_file: int) -> None:
        self.file_index = {str(Path(f)): first_file + i for i, f in enumerate(files)}
        self.columns: tuple[list[int], ...] = ([], [], [], [])
        self.digests: list[bytes] = []
        self.whole_game: list[bool] = []
        self.names: dict[bytes, str] = {}

    def add(self, record: GameRecord) -> None:
        for column, value in zip(self.columns, (self.file_index[record.source], record.index, len(record.moves),
                                                record.winner is None)):
            column.append(int(value))
        game = record.hcpe_game
        self.whole_game.append(game is None)
        if game is None:
            self.digests.append(game_digest(record))
        else:
            self.digests.append(game.key)
            self.names.setdefault(game.key, game.name)

    def games(self) -> ShardGames:
        file, record, moves, no_result = (np.asarray(c, dtype=np.int64) for c in self.columns)
        digest = np.frombuffer(b"".join(self.digests), dtype=np.uint8).reshape(-1, _DIGEST_BYTES)
        return ShardGames(file, record, moves, no_result.astype(bool), digest, np.asarray(self.whole_game, bool),
                          self.names)


class _PartitionSink:
    """Appends a shard's flushes to its partition streams (opened on first use)."""

    def __init__(self, scratch: Path, shard: int, bits: int) -> None:
        self.scratch, self.shard, self.bits = scratch, shard, bits
        self.writers: dict[tuple[int, str], Any] = {}

    def _write(self, partition: int, kind: str, table: Any) -> None:
        import pyarrow as pa

        key = (partition, kind)
        if key not in self.writers:
            folder = partition_folder(self.scratch, partition)
            folder.mkdir(parents=True, exist_ok=True)
            self.writers[key] = pa.ipc.new_stream(str(folder / f"{kind}-{self.shard:05d}.arrow"), table.schema)
        self.writers[key].write_table(table)

    def spill(self, games: list[GameRecord], first_game: int) -> None:
        import pyarrow as pa

        pos = extract_positions(games)
        boards, hands, ids = encode_unique(pos)
        unique = {"key": pos.key, "id": ids, "board": boards, "hand": hands, "hcp": pos.hcp,
                  "legal_bits": pack_flags(legal_masks(pos)), "legal_count": pos.legal_counts}
        occurrences = {"key": pos.key[pos.occ_row], "game": first_game + pos.occ_game,
                       "label": np.where(pos.labelled, pos.played_labels(), -1), "value": pos.occ_value,
                       "played": pos.occ_move != 0}
        for kind, columns, spec, part in (
                ("u", unique, UNIQUE_COLUMNS, partition_of(ids, self.bits)),
                ("o", occurrences, OCCURRENCE_COLUMNS, partition_of(ids[pos.occ_row], self.bits))):
            table = _table(columns, spec)
            order = np.argsort(part, kind="stable")
            bounds = np.searchsorted(part[order], np.arange(2 ** self.bits + 1))
            table = table.take(pa.array(order))
            for partition in np.flatnonzero(np.diff(bounds)):
                start, stop = bounds[partition], bounds[partition + 1]
                self._write(int(partition), kind, table.slice(start, stop - start))

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def _table(columns: dict[str, np.ndarray], spec: dict[str, tuple[type, int]]) -> Any:
    import pyarrow as pa

    arrays = {}
    for name, (dtype, width) in spec.items():
        array: np.ndarray = np.asarray(columns[name], dtype=dtype)
        arrays[name] = fixed_list(array, width) if width else pa.array(array)
    return pa.table(arrays)


def read_partition(scratch: Path, partition: int, kind: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every shard's ``kind`` (``u`` or ``o``) stream of a partition, concatenated in shard order
    (numpy columns), and the shard of each row."""
    import pyarrow as pa

    spec = UNIQUE_COLUMNS if kind == "u" else OCCURRENCE_COLUMNS
    tables, shards = [], []
    for path in sorted(partition_folder(scratch, partition).glob(f"{kind}-*.arrow")):
        with pa.ipc.open_stream(str(path)) as reader:
            tables.append(reader.read_all())
        shards.append(np.full(tables[-1].num_rows, int(path.stem.split("-")[1]), dtype=np.int64))
    columns = {}
    for name, (dtype, width) in spec.items():
        chunks = [chunk for table in tables for chunk in table.column(name).chunks]
        if width:
            chunks = [chunk.flatten() for chunk in chunks]
        values = [chunk.to_numpy(zero_copy_only=False) for chunk in chunks]
        flat = np.concatenate(values) if values else np.zeros(0, dtype=dtype)
        columns[name] = flat.reshape(-1, width) if width else flat
    return columns, np.concatenate(shards) if shards else np.zeros(0, dtype=np.int64)


def read_shard(task: ShardTask) -> ShardResult:
    """Read, validate and replay the shard's games; spill their positions (runs in a worker process)."""
    started = time.process_time()
    stats = ReadStats()
    log = _GameLog(task.files, task.first_file)
    sink = _PartitionSink(Path(task.scratch), task.number, task.partition_bits)
    pending: list[GameRecord] = []
    size = first = 0
    for record in iter_records([], stats, files=[Path(f) for f in task.files], detect_duplicates=False):
        log.add(record)
        pending.append(record)
        size += max(1, len(record.moves))
        if size >= FLUSH_POSITIONS:
            sink.spill(pending, first)
            first, pending, size = first + len(pending), [], 0
    if pending:
        sink.spill(pending, first)
    sink.close()
    return ShardResult(task.number, stats, log.games(), time.process_time() - started)


__all__ = ["FLUSH_POSITIONS", "OCCURRENCE_COLUMNS", "ShardGames", "ShardResult", "ShardTask", "UNIQUE_COLUMNS",
           "partition_folder", "partition_of", "read_partition", "read_shard"]
