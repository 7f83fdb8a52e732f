"""The build's pipeline: shards of record files -> partitions of positions -> the dataset files.

1. **Read** (:mod:`maou.data.shards`, one task per shard, on every core): records are read,
   validated and replayed; positions are spilled to partitions by id.
2. **Split**: in the build's process, the records of all shards in file order: duplicates (same
   start and moves as an earlier game) are left out and counted, exactly where a single reader
   would have found them; HCPE rows are gathered into their games (equal game keys, whichever
   files and shards hold them; a CSA or KIF record is a game of its own); then the seeded split
   by game (:func:`maou.data.sources.split_games`), over the games in order of first appearance.
3. **Aggregate** (:mod:`maou.data.partitions`, one task per partition, on every core).
4. **Concatenate**: the partitions' tables, in id order, into each games-built stage's folder
   (``stage2/``, ``stage3/``: the stages whose registry entry declares a ``dataset``).

Memory: a shard task holds one flush of positions, a partition task one partition (their number
grows with the corpus, :func:`plan_build`), the build's own process a few bytes per record (a
game, or an HCPE row).
Intermediate files live in ``OUT/.scratch`` and are removed at the end. The output does not
depend on the number of workers, shards or partitions.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maou.data.games import ReadStats
from maou.data.partitions import GAMES_FILE, PartitionResult, PartitionTask, build_partition, output_path
from maou.data.shards import ShardResult, ShardTask, read_shard
from maou.data.sources import split_games
from maou.data.writers import DatasetFile
from maou.layout import SPLITS, split_path, stage_name
from maou.stages import games_stages, resolve_reference

#: Shards hold about this many bytes of record files (fewer, larger ones for big corpora) ...
SHARD_BYTES = (256 << 10, 8 << 20)
#: ... and a partition about the positions of this many bytes of records (terse CSA, about 8
#: bytes a move: 130k positions, some 200 MB for the task that aggregates it).
PARTITION_SOURCE_BYTES = 1 << 20
MAX_PARTITION_BITS = 10
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
    """Shards of consecutive files (about eight per worker, within ``SHARD_BYTES``) and a power of
    two of partitions (one per ``PARTITION_SOURCE_BYTES`` of records, at least one per worker).

    ``workers`` (default: every core this process may use) caps the processes; with one worker,
    or one shard, everything runs in this process."""
    sizes = [f.stat().st_size for f in files]
    total = sum(sizes)
    wanted = max(1, workers if workers is not None else available_cpus())
    shard_bytes = min(max(total // (8 * wanted), SHARD_BYTES[0]), SHARD_BYTES[1])
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
    """Every valid record of the build in file order (a CSA or KIF game, or an HCPE row) and its
    side: 0 train, 1 val, -1 left out; the rows of one HCPE game share their game's side."""

    stats: ReadStats
    file: np.ndarray
    record: np.ndarray
    side: np.ndarray
    base: tuple[int, ...]
    #: Every game in order of first appearance: its first record, its side, and (HCPE games, by
    #: first record) its name in ``split.json`` (a CSA or KIF game is ``file#index``).
    game_first: np.ndarray
    game_side: np.ndarray
    game_names: dict[int, str]
    #: CPU time of the reading tasks.
    cpu_seconds: float = 0.0

    def count(self, split: str) -> int:
        """The games of ``split``."""
        return int(np.count_nonzero(self.game_side == SPLITS.index(split)))


#: ``prctl`` option: the signal this process gets when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1
#: Seconds between a worker's looks at the build's process.
WATCH_S = 0.5


def _parent_death_signal(signum: int) -> None:
    """Ask the kernel for ``signum`` when this process's parent dies (Linux; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        except (OSError, AttributeError):
            pass


def _started(pid: int) -> str | None:
    """When process ``pid`` started (/proc, in clock ticks since boot: with the pid, an identity no
    later process shares), or None where it cannot be read; "Z" for a process that has ended."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return "Z" if fields[0] in ("Z", "X") else fields[19]


def _alive(pid: int, started: str | None) -> bool:
    if started is not None:
        return _started(pid) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass
    return True


def _watch_the_build(build: int, started: str | None) -> None:
    while _alive(build, started):
        time.sleep(WATCH_S)
    os._exit(1)


def _exit_with_the_build(build: int, started: str | None) -> None:
    """Every worker's initializer: the worker exits when the build's process dies, ``kill -9``
    included (nothing shuts the pool down then, and a worker would wait on its task queue for ever,
    holding its memory).

    * A forked worker's parent is the build's process: the kernel kills it at once when that dies
      (``PR_SET_PDEATHSIG`` with SIGKILL, which no Python handler inherited from the CLI turns into an
      exception the worker's loop would catch).
    * A fork server's worker's parent is the fork server, which outlives the build: every worker
      holds the end of the pipe whose closing would stop it. So each worker also watches the build's
      process itself (its pid and start time, so a reused pid is not mistaken for it) from a daemon
      thread and exits within :data:`WATCH_S` of its death; with its last worker gone, the fork
      server sees the pipe close and exits too, as does the resource tracker."""
    _parent_death_signal(signal.SIGKILL)
    threading.Thread(target=_watch_the_build, args=(build, started), name="maou-watch-build", daemon=True).start()


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[Executor | None]:
    """``workers`` processes, started now (None for one: the build runs in this process); each one
    exits when the build's process dies, however it dies (:func:`_exit_with_the_build`).

    A process with a single thread forks them (fast, and nothing is imported again); otherwise
    (a progress bar's thread, a Ray worker) they come from a fork server, which imports the main
    module again as every ``multiprocessing`` program does."""
    if workers <= 1:
        yield None
        return
    import multiprocessing

    tasks = Path("/proc/self/task")
    single = tasks.is_dir() and len(os.listdir(tasks)) == 1
    context = multiprocessing.get_context("fork" if single else "forkserver")
    if not single:
        context.set_forkserver_preload(["maou.data.shards", "maou.data.partitions"])
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_exit_with_the_build,
                               initargs=(os.getpid(), _started(os.getpid())))
    try:
        for started in [pool.submit(os.getpid) for _ in range(workers)]:  # every worker, before any thread
            started.result()
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)


def _completed(pool: Executor | None, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[tuple[int, Any]]:
    """``(index, fn(task))`` of every task as it finishes (in order, in this process, without a pool)."""
    if pool is None:
        for i, task in enumerate(tasks):
            yield i, fn(task)
        return
    futures = {pool.submit(fn, task): i for i, task in enumerate(tasks)}
    for future in as_completed(futures):
        yield futures[future], future.result()


def _run(pool: Executor | None, fn: Callable[[Any], Any], tasks: Sequence[Any], bar: Any, title: str,
         on_result: Callable[[int, Any], None] | None = None) -> list:
    """``fn`` of every task, in task order; ``on_result(index, result)`` as each one finishes."""
    progress = bar.add_task(title, total=len(tasks))
    results: list[Any] = [None] * len(tasks)
    for i, result in _completed(pool, fn, tasks):
        results[i] = result
        if on_result is not None:
            on_result(i, result)
        bar.advance(progress)
    return results


def _first_of_equal(keys: np.ndarray, members: np.ndarray) -> np.ndarray:
    """For each of ``members`` (ascending record numbers), the first member with the same key."""
    _, first, inverse = np.unique(keys[members], return_index=True, return_inverse=True)
    return members[first[inverse.ravel()]]


def _resolve_games(plan: BuildPlan, shards: list[ShardResult], val_fraction: float, split_seed: int) -> Games:
    """Merge the shards' statistics, leave out duplicate games as one reader would, gather HCPE rows
    into their games, split by game (the games in order of first appearance)."""
    stats = ReadStats()
    for result in shards:
        stats.merge(result.stats)
    g = [result.games for result in shards]
    file, record, moves, no_result = (np.concatenate([getattr(x, n) for x in g]) for n in
                                      ("file", "record", "moves", "no_result"))
    whole = np.concatenate([x.whole_game for x in g])
    keys = np.ascontiguousarray(np.concatenate([x.digest for x in g])).view("V16").ravel()
    side = np.zeros(len(file), dtype=np.int8)
    candidates = np.flatnonzero(whole)
    if len(candidates):
        original = _first_of_equal(keys, candidates)
        for game, earlier in zip(candidates[original != candidates], original[original != candidates]):
            stats.skip("duplicate game", f"{plan.files[file[game]]}#{record[game]}",
                       f"same moves as {plan.files[file[earlier]]}#{record[earlier]}")
            stats.positions -= int(moves[game])
            side[game] = -1
    kept = np.flatnonzero(side == 0)
    # each kept record's game, named by its first record: a CSA or KIF game its own, an HCPE row
    # the first row of its game (the rows of a game can be in several files and shards)
    first = kept.copy()
    rows = ~whole[kept]
    if rows.any():
        first[rows] = _first_of_equal(keys, kept[rows])
    games, number = np.unique(first, return_inverse=True)  # games in order of first appearance
    number = number.ravel()
    game_side = split_games(len(games), val_fraction, split_seed).astype(np.int8)
    side[kept] = game_side[number]
    names: dict[bytes, str] = {}
    for x in g:  # the name first seen in the first shard that read the game: its first record's
        for key, name in x.names.items():
            names.setdefault(key, name)
    game_names = {int(r): names[keys[r].tobytes()] for r in games[~whole[games]]}
    with_result = np.zeros(len(games), dtype=bool)
    with_result[number[~no_result[kept]]] = True
    # games (not rows) for HCPE, each counted once whichever shards read its rows; as one reader counts
    stats.games, stats.no_result = len(games), int(np.count_nonzero(~with_result))
    base = tuple(int(b) for b in np.cumsum([0] + [len(x) for x in g])[:-1])
    return Games(stats, file, record, side, base, games, game_side, game_names,
                 sum(result.cpu_seconds for result in shards))


def read_games(plan: BuildPlan, pool: Executor | None, bar: Any, val_fraction: float, split_seed: int) -> Games:
    """Phases 1 and 2: read every shard, spill its positions, then split the games."""
    shutil.rmtree(plan.scratch, ignore_errors=True)
    plan.scratch.mkdir(parents=True)
    shards = _run(pool, read_shard, plan.shards, bar, f"reading game records ({len(plan.files)} files)")
    games = _resolve_games(plan, shards, val_fraction, split_seed)
    np.save(plan.scratch / GAMES_FILE, games.side)
    return games


def write_split(path: Path, plan: BuildPlan, games: Games) -> None:
    """``split.json``: the games of each split (``json.dumps(..., indent=0)``), streamed, in order of
    first appearance: a CSA or KIF game as ``file#index``, an HCPE game by its name
    (:attr:`maou.data.games.HcpeGame.name`: ``file#game``, or ``file`` for rows without an id)."""
    names = games.game_names
    with open(path, "w") as f:
        f.write("{\n")
        for code, name in enumerate(SPLITS):
            members = games.game_first[games.game_side == code]
            f.write(f"{json.dumps(name)}: " + ("[\n" if len(members) else "[]"))
            for start in range(0, len(members), 10_000):
                chunk = members[start:start + 10_000].tolist()
                f.write((",\n" if start else "") + ",\n".join(
                    json.dumps(names.get(g) or f"{plan.files[games.file[g]]}#{games.record[g]}") for g in chunk))
            f.write(("\n]" if len(members) else "") + (",\n" if code + 1 < len(SPLITS) else "\n"))
        f.write("}\n")


class _InOrder:
    """Appends each partition's tables to the dataset files as soon as every earlier one is in, so
    the files fill while later partitions are still being aggregated."""

    def __init__(self, plan: BuildPlan, out: Path) -> None:
        self.plan, self.next = plan, 0
        self.ready: set[int] = set()
        self.files = {(info.number, split): DatasetFile(split_path(out, info.number, split),
                                                        resolve_reference(info.dataset.schema)())
                      for info in games_stages() if info.dataset is not None for split in SPLITS}

    def __call__(self, partition: int, _result: Any) -> None:
        import pyarrow as pa

        self.ready.add(partition)
        while self.next in self.ready:
            for (number, split), target in self.files.items():
                source = pa.memory_map(str(output_path(self.plan.scratch, number, split, self.next)))
                target.write(pa.ipc.open_file(source).read_all())  # zero copy: the writer copies once
                source.close()
            self.ready.discard(self.next)
            self.next += 1

    def close(self) -> dict[str, dict]:
        entries = {key: target.close() for key, target in self.files.items()}
        return {stage_name(n): {"rows": {s: entries[n, s]["rows"] for s in SPLITS},
                              "files": {s: entries[n, s] for s in SPLITS}} for n in {n for n, _ in entries}}


@dataclass
class Written:
    """What phases 3 and 4 wrote: the Stage 2 and 3 manifest sections, the counts per split, and
    the CPU time of every task of the build."""

    stages: dict[str, dict]
    positions: dict[str, int]
    unique_positions: dict[str, int]
    task_cpu_seconds: float


def write_datasets(plan: BuildPlan, pool: Executor | None, bar: Any, games: Games, out: Path) -> Written:
    """Phases 3 and 4: every partition's rows, appended in id order to the Stage 2 and 3 files."""
    tasks = [PartitionTask(p, str(plan.scratch), games.base) for p in range(plan.partitions)]
    files = _InOrder(plan, out)
    parts: list[PartitionResult] = _run(pool, build_partition, tasks, bar, f"aggregating ({len(tasks)} partitions)",
                                        on_result=files)
    stages = files.close()
    unique = {split: sum(p.unique[split] for p in parts) for split in SPLITS}
    legal = {split: sum(p.legal_moves[split] for p in parts) for split in SPLITS}
    stages["stage2"].update(val_dropped_seen_in_train=sum(p.val_dropped_seen_in_train for p in parts),
                            mean_legal_moves={s: legal[s] / unique[s] if unique[s] else 0.0 for s in SPLITS})
    stages["stage3"].update(val_dropped_seen_in_train=sum(p.stage3_val_dropped_seen_in_train for p in parts))
    return Written(stages, {split: sum(p.positions[split] for p in parts) for split in SPLITS}, unique,
                   games.cpu_seconds + sum(p.cpu_seconds for p in parts))


def run_pipeline(plan: BuildPlan, pool: Executor | None, bar: Any, val_fraction: float, split_seed: int, out: Path,
                 on_games: Callable[[Games], None]) -> tuple[Games, Written]:
    """All four phases on ``pool`` (:func:`worker_pool`); ``on_games`` sees the games before the
    writing starts (the build refuses an empty corpus there). The scratch folder is removed."""
    try:
        games = read_games(plan, pool, bar, val_fraction, split_seed)
        on_games(games)
        write_split(out / "split.json", plan, games)
        return games, write_datasets(plan, pool, bar, games, out)
    finally:
        shutil.rmtree(plan.scratch, ignore_errors=True)


__all__ = ["BuildPlan", "Games", "PARTITION_SOURCE_BYTES", "SHARD_BYTES", "Written", "available_cpus", "plan_build",
           "run_pipeline", "worker_pool", "write_split"]
