"""The build's pipeline: shards of record files -> partitions of positions -> the dataset files.

1. **Read** (:mod:`maou.data.shards`, one task per shard, on every core): records are read,
   validated and replayed; positions are spilled to partitions by id.
2. **Split**: in the build's process, the games of all shards in file order: duplicates (same
   start and moves as an earlier game) are left out and counted, exactly where a single reader
   would have found them, then the seeded split by game (:func:`maou.data.sources.split_games`).
3. **Aggregate** (:mod:`maou.data.partitions`, one task per partition, on every core).
4. **Concatenate**: the partitions' tables, in id order, into ``stage2/`` and ``stage3/``.

Memory: a shard task holds one flush of positions, a partition task one partition (their number
grows with the corpus, :func:`plan_build`), the build's own process a few bytes per game.
Intermediate files live in ``OUT/.scratch`` and are removed at the end. The output does not
depend on the number of workers, shards or partitions.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maou.data.partitions import GAMES_FILE, PartitionResult, PartitionTask, build_partition, output_path
from maou.data.records import ReadStats
from maou.data.shards import ShardResult, ShardTask, read_shard
from maou.data.sources import split_games
from maou.data.writers import SPLITS, DatasetFile, stage2_schema, stage3_schema

#: Shards hold about this many bytes of record files (fewer, larger ones for big corpora) ...
SHARD_BYTES = (256 << 10, 8 << 20)
#: ... and a partition about the positions of this many bytes of records.
PARTITION_SOURCE_BYTES = 8 << 20
MAX_PARTITION_BITS = 12
SCRATCH = ".scratch"


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass
class BuildPlan:
    files: list[Path]
    scratch: Path
    shards: list[ShardTask]
    partition_bits: int
    workers: int

    @property
    def partitions(self) -> int:
        return 2 ** self.partition_bits


def plan_build(files: Sequence[Path], out: Path, workers: int | None = None) -> BuildPlan:
    """Shards of consecutive files (about four per worker, within ``SHARD_BYTES``) and a power of
    two of partitions (one per ``PARTITION_SOURCE_BYTES`` of records, at least one per worker).

    ``workers`` (default: every core this process may use) caps the processes; with one worker,
    or one shard, everything runs in this process."""
    sizes = [f.stat().st_size for f in files]
    total = sum(sizes)
    wanted = max(1, workers if workers is not None else available_cpus())
    shard_bytes = min(max(total // (4 * wanted), SHARD_BYTES[0]), SHARD_BYTES[1])
    scratch = out / SCRATCH
    groups: list[list[int]] = [[]]
    held = 0
    for i, size in enumerate(sizes):
        if groups[-1] and held + size > shard_bytes:
            groups.append([])
            held = 0
        groups[-1].append(i)
        held += size
    workers = min(wanted, len(groups))
    partitions = max(workers, math.ceil(total / PARTITION_SOURCE_BYTES))
    bits = min(MAX_PARTITION_BITS, max(0, math.ceil(math.log2(partitions))))
    shards = [ShardTask(n, tuple(str(files[i]) for i in group), group[0], str(scratch), bits)
              for n, group in enumerate(groups) if group]
    return BuildPlan(list(files), scratch, shards, bits, workers)


@dataclass
class Games:
    """Every valid game of the build in file order and its side: 0 train, 1 val, -1 left out."""

    stats: ReadStats
    file: np.ndarray
    record: np.ndarray
    side: np.ndarray
    base: tuple[int, ...]

    def count(self, split: str) -> int:
        return int(np.count_nonzero(self.side == SPLITS.index(split)))


def _pool(workers: int) -> Executor | None:
    if workers <= 1:
        return None
    import multiprocessing

    context = multiprocessing.get_context("forkserver")  # no fork of a process that may run threads
    context.set_forkserver_preload(["maou.data.shards", "maou.data.partitions"])
    return ProcessPoolExecutor(max_workers=workers, mp_context=context)


def _run(pool: Executor | None, fn: Callable[[Any], Any], tasks: Sequence[Any], bar: Any, title: str) -> list:
    """``fn`` of every task, in task order (in this process without a pool)."""
    progress = bar.add_task(title, total=len(tasks))
    results: list[Any] = [None] * len(tasks)
    if pool is None:
        for i, task in enumerate(tasks):
            results[i] = fn(task)
            bar.advance(progress)
        return results
    futures = {pool.submit(fn, task): i for i, task in enumerate(tasks)}
    for future in as_completed(futures):
        results[futures[future]] = future.result()
        bar.advance(progress)
    return results


def _resolve_games(plan: BuildPlan, shards: list[ShardResult], val_fraction: float, split_seed: int) -> Games:
    """Merge the shards' statistics, leave out duplicate games as one reader would, split by game."""
    stats = ReadStats()
    for result in shards:
        stats.merge(result.stats)
    g = [result.games for result in shards]
    file, record, moves, no_result = (np.concatenate([getattr(x, n) for x in g]) for n in
                                      ("file", "record", "moves", "no_result"))
    digest, hashed = np.concatenate([x.digest for x in g]), np.concatenate([x.has_digest for x in g])
    side = np.zeros(len(file), dtype=np.int8)
    candidates = np.flatnonzero(hashed)
    if len(candidates):
        _, first, inverse = np.unique(np.ascontiguousarray(digest[candidates]).view("V16").ravel(),
                                      return_index=True, return_inverse=True)
        original = candidates[first[inverse.ravel()]]
        for game, earlier in zip(candidates[original != candidates], original[original != candidates]):
            stats.skip("duplicate game", f"{plan.files[file[game]]}#{record[game]}",
                       f"same moves as {plan.files[file[earlier]]}#{record[earlier]}")
            stats.games -= 1
            stats.positions -= int(moves[game])
            stats.no_result -= int(no_result[game])
            side[game] = -1
    kept = np.flatnonzero(side == 0)
    side[kept] = split_games(len(kept), val_fraction, split_seed)
    base = tuple(int(b) for b in np.cumsum([0] + [len(x) for x in g])[:-1])
    return Games(stats, file, record, side, base)


def read_games(plan: BuildPlan, pool: Executor | None, bar: Any, val_fraction: float, split_seed: int) -> Games:
    """Phases 1 and 2: read every shard, spill its positions, then split the games."""
    shutil.rmtree(plan.scratch, ignore_errors=True)
    plan.scratch.mkdir(parents=True)
    shards = _run(pool, read_shard, plan.shards, bar, f"reading game records ({len(plan.files)} files)")
    games = _resolve_games(plan, shards, val_fraction, split_seed)
    np.save(plan.scratch / GAMES_FILE, games.side)
    return games


def write_split(path: Path, plan: BuildPlan, games: Games) -> None:
    """``split.json``: the game ids of each split (``json.dumps(..., indent=0)``), streamed."""
    with open(path, "w") as f:
        f.write("{\n")
        for code, name in enumerate(SPLITS):
            members = np.flatnonzero(games.side == code)
            f.write(f"{json.dumps(name)}: " + ("[\n" if len(members) else "[]"))
            for start in range(0, len(members), 10_000):
                chunk = members[start:start + 10_000]
                f.write((",\n" if start else "") + ",\n".join(
                    json.dumps(f"{plan.files[games.file[g]]}#{games.record[g]}") for g in chunk))
            f.write(("\n]" if len(members) else "") + (",\n" if code + 1 < len(SPLITS) else "\n"))
        f.write("}\n")


def write_datasets(plan: BuildPlan, pool: Executor | None, bar: Any, games: Games, out: Path) -> dict[str, dict]:
    """Phases 3 and 4: every partition's rows, then the Stage 2 and 3 files; their manifest sections."""
    tasks = [PartitionTask(p, str(plan.scratch), games.base) for p in range(plan.partitions)]
    parts: list[PartitionResult] = _run(pool, build_partition, tasks, bar, f"aggregating ({len(tasks)} partitions)")
    stages: dict[str, dict] = {}
    for number, schema in ((2, stage2_schema()), (3, stage3_schema())):
        files = {split: _concatenate(plan, number, split, schema, out / f"stage{number}" / f"{split}.feather")
                 for split in SPLITS}
        stages[f"stage{number}"] = {"rows": {split: entry["rows"] for split, entry in files.items()}, "files": files}
    unique = {split: sum(p.unique[split] for p in parts) for split in SPLITS}
    legal = {split: sum(p.legal_moves[split] for p in parts) for split in SPLITS}
    stages["stage2"].update(val_dropped_seen_in_train=sum(p.val_dropped_seen_in_train for p in parts),
                            mean_legal_moves={s: legal[s] / unique[s] if unique[s] else 0.0 for s in SPLITS})
    stages["stage3"].update(val_rows_also_in_train=sum(p.val_rows_also_in_train for p in parts))
    stages["positions"] = {split: sum(p.positions[split] for p in parts) for split in SPLITS}
    stages["unique_positions"] = unique
    return stages


def _concatenate(plan: BuildPlan, number: int, split: str, schema: Any, path: Path) -> dict:
    import pyarrow as pa

    target = DatasetFile(path, schema)
    for partition in range(plan.partitions):
        with pa.OSFile(str(output_path(plan.scratch, number, split, partition))) as source:
            target.write(pa.ipc.open_file(source).read_all())
    return target.close()


def run_pipeline(plan: BuildPlan, bar: Any, val_fraction: float, split_seed: int, out: Path,
                 on_games: Callable[[Games], None]) -> tuple[Games, dict[str, dict]]:
    """All four phases with one pool of workers; ``on_games`` sees the games before the writing
    starts (the build refuses an empty corpus there). The scratch folder is removed at the end."""
    pool = _pool(plan.workers)
    try:
        games = read_games(plan, pool, bar, val_fraction, split_seed)
        on_games(games)
        write_split(out / "split.json", plan, games)
        return games, write_datasets(plan, pool, bar, games, out)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        shutil.rmtree(plan.scratch, ignore_errors=True)


__all__ = ["BuildPlan", "Games", "PARTITION_SOURCE_BYTES", "SHARD_BYTES", "available_cpus", "plan_build",
           "run_pipeline", "write_split"]
