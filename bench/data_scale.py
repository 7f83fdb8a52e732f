"""Upstream-scale data: build >= 1M unique positions, then measure the compact datasets.

1. A corpus of random legal playouts (cshogi; seeded, cached under ``--work``): multi-game CSA
   files, nearly every position unique. Sizes for realism do not matter here, sizes do.
2. ``sweep data build`` with one process and with every core: positions/s and the speedup, and
   the peak memory (build process and its largest worker, sampled from /proc) for a quarter, a
   half and all of the corpus: bounded, not growing with the corpus.
3. Bytes per row of the Stage 2 and 3 files (on disk, and read by training), against the dense
   in-memory tensors; the time to open the training split (mapped: no per-row work).
4. Peak memory of 1 and of 4 concurrent training trials on the mapped Stage 2 data (each reads
   every training row once, as an epoch would, then trains): each trial's peak RSS, and the PSS
   of all of them together (shared file pages counted once); the same for the dense in-memory
   path on ``--dense-rows`` rows, whose every trial holds its own copy.
5. Training samples/s, compact (mapped) against dense (in memory) on the same rows, Stages 2 and
   3, and the share of step time spent waiting for data.

Timings on a shared machine are noisy: every timing is the best of ``--repeat`` runs.

    python bench/data_scale.py                       # about 10 minutes on 2 cores, ~3 GB of disk
    python bench/data_scale.py --positions 300000    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from proc_memory import MB, TreeMonitor, self_peak_rss  # noqa: E402

GAMES_PER_FILE = 200


def playout_csa(rng: random.Random, board) -> str:
    """One random legal game as CSA: ``max plies`` in 60..300, the side to move resigns at the end."""
    import cshogi

    board.reset()
    lines = ["V2", "PI", "+"]
    for _ in range(rng.randint(60, 300)):
        moves = list(board.legal_moves)
        if not moves:
            break
        move = moves[rng.randrange(len(moves))]
        lines.append(("+" if board.turn == cshogi.BLACK else "-") + cshogi.move_to_csa(move))
        board.push(move)
    lines.append("%TORYO")
    return "\n".join(lines)


def make_corpus(folder: Path, positions: int, seed: int = 0) -> Path:
    """Random playouts totalling about ``positions`` plies (reused when already there)."""
    import cshogi

    marker = folder / f"done-{positions}-{seed}"
    if marker.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng, board = random.Random(seed), cshogi.Board()
    plies = file_number = 0
    started = time.perf_counter()
    while plies < positions:
        games = [playout_csa(rng, board) for _ in range(GAMES_PER_FILE)]
        plies += sum(g.count("\n") - 3 for g in games)
        (folder / f"random-{file_number:04d}.csa").write_text("\n/\n".join(games) + "\n")
        file_number += 1
    marker.write_text("")
    print(f"corpus: {file_number} files, {plies:,} plies of random playouts in {time.perf_counter() - started:.1f} s")
    return folder


def run_child(args: list[str]) -> tuple[dict, Any, int]:
    """Run this script in a child mode: its JSON output, the memory of its process tree, its pid."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    monitor = TreeMonitor([proc.pid])
    out, _ = proc.communicate()
    sample = monitor.stop()
    if proc.returncode:
        raise SystemExit(f"child {args} failed ({proc.returncode})")
    return json.loads(out.strip().splitlines()[-1]), sample, proc.pid


def child_build(games: str, out: str, workers: int, fraction: float) -> dict:
    from maou.data.build import build_datasets

    files = sorted(Path(games).glob("*.csa"))
    files = files[: max(1, round(len(files) * fraction))]
    summary = build_datasets(files, out, progress=False, workers=workers)
    return {"seconds": summary.seconds, "positions": sum(summary.positions.values()), "workers": summary.workers,
            "cpu_seconds": summary.cpu_seconds,
            "unique": sum(summary.unique_positions.values()), "rows": summary.rows, "peak_rss": self_peak_rss()}


def _spin(seconds: float) -> int:
    """Pure-Python work for about ``seconds``; the loop count reached."""
    count, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(10_000):
            count += 1
    return count


def parallel_capacity(cores: int, seconds: float = 2.0) -> float:
    """How much more pure-Python work ``cores`` processes do than one, on this machine right now
    (below ``cores`` when other work shares the cores)."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(cores) as pool:
        one = pool.submit(_spin, seconds).result()
        together = sum(pool.map(_spin, [seconds] * cores))
    return together / one


def bench_build(corpus: Path, work: Path, repeat: int, cores: int) -> Path:
    print("\n## build (sweep data build)")
    capacity = parallel_capacity(cores)
    print(f"this machine's parallel capacity now: {capacity:.2f}x ({cores} busy processes against one; other "
          f"work on the machine lowers it)")
    out = work / "build"
    runs: dict[int, list[dict]] = {1: [], cores: []}
    for _ in range(repeat):  # interleaved: both see the same background load
        for workers in (1, cores):
            runs[workers].append(run_child(["--child-build", str(corpus), str(out), str(workers), "1.0"])[0])
    best = {workers: min(results, key=lambda r: r["seconds"]) for workers, results in runs.items()}
    for workers, result in best.items():
        seconds = ", ".join(f"{r['seconds']:.1f}" for r in runs[workers])
        print(f"{workers} process{'es' if workers > 1 else ''}: {result['positions']:,} positions "
              f"({result['unique']:,} unique) in {result['seconds']:.1f} s = "
              f"{result['positions'] / result['seconds']:,.0f} positions/s (runs: {seconds} s; "
              f"CPU {result['cpu_seconds']:.1f} s)")
    speedup = best[1]["seconds"] / best[cores]["seconds"]
    print(f"speedup on {cores} cores: {speedup:.2f}x (goal >= 1.7x on 2 cores); CPU work {cores} processes / 1: "
          f"{best[cores]['cpu_seconds'] / best[1]['cpu_seconds']:.2f}; the machine's capacity after the builds "
          f"{parallel_capacity(cores):.2f}x, before {capacity:.2f}x")
    print("memory by corpus size (every core): build process peak RSS / largest worker peak RSS / tree PSS peak")
    for fraction in (0.25, 0.5, 1.0):
        result, sample, root = run_child(["--child-build", str(corpus), str(work / "build-part"), str(cores),
                                          str(fraction)])
        others = [v for pid, v in sample.peak_by_pid.items() if pid != root]
        print(f"  {result['positions']:>10,} positions: {result['peak_rss'] / MB:7,.0f} MB / "
              f"{max(others, default=0) / MB:7,.0f} MB / {sample.pss / MB:7,.0f} MB")
    return out


def bench_layout(out: Path, repeat: int) -> None:
    import torch

    from maou.trainer.tensors import load_stage_data

    print("\n## bytes per row and open time")
    for number in (2, 3):
        opened = []
        for _ in range(repeat):
            started = time.perf_counter()
            data = load_stage_data(number, out)
            opened.append(time.perf_counter() - started)
        train = data.train
        file_bytes = (out / f"stage{number}" / "train.feather").stat().st_size
        dense = train.subset(torch.arange(min(256, len(train))))
        dense_row = sum(t[0].numel() * t.element_size() for t in (dense.board, dense.hand, *dense.targets.values()))
        print(f"stage {number}: {len(train):,} train rows; read by training {train.bytes_per_row():.1f} bytes/row "
              f"(goal <= 300; dense tensors {dense_row:,} bytes/row), file {file_bytes / len(train):.1f} bytes/row "
              f"(+ id, hcp, count); open {1e3 * min(opened):.1f} ms (goal < 1 s; zero copy {train.zero_copy})")


def touch(split: Any) -> int:
    """Read every byte training reads of a mapped split once (as an epoch would), without decoding."""
    arrays = getattr(split, "board", None)
    if not hasattr(arrays, "chunks"):
        return 0  # in memory already
    columns = [split.board, split.hand]
    for column in split.columns.values():
        columns += [getattr(column, name) for name in ("rows", "offsets") if hasattr(column, name)]
    chunks = [c for column in columns for c in column.chunks]
    for column in split.columns.values():
        chunks += getattr(column, "labels", []) + getattr(column, "weights", [])
    return sum(int(chunk.view(np.uint8).sum(dtype=np.uint64)) & 1 for chunk in chunks)


def child_trial(folder: str, storage: str, steps: int, max_rows: int | None) -> dict:
    import torch

    from maou.trainer.config import train_config_from_dict
    from maou.trainer.loop import train_stage
    from maou.trainer.tensors import load_stage_data

    torch.set_num_threads(1)
    data = load_stage_data(2, folder, max_rows=max_rows, storage=storage)  # type: ignore[arg-type]
    touch(data.train)
    config = train_config_from_dict({"stage": 2, "model": {"blocks": 2, "channels": 32}, "batch_size": 256,
                                     "budget": {"max_steps": steps, "eval_every": steps}, "eval_rows": 4096,
                                     "device": "cpu", "threads": 1})
    result = train_stage(config, data)
    return {"peak_rss": self_peak_rss(), "samples_per_s": result.samples_per_s, "rows": len(data.train)}


def concurrent_trials(out: Path, storage: str, count: int, steps: int, max_rows: int | None) -> tuple[list, Any]:
    args = ["--child-trial", str(out), storage, str(steps), str(max_rows or 0)]
    procs = [subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in range(count)]
    monitor = TreeMonitor([p.pid for p in procs], interval=0.2, mapped_suffix=".feather")
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    return results, monitor.stop()


def bench_trials(out: Path, steps: int, dense_rows: int) -> None:
    print("\n## memory of concurrent trials (stage 2, one node; PSS splits shared pages among processes)")
    for storage, max_rows in (("mapped", None), ("memory", dense_rows)):
        runs = {n: concurrent_trials(out, storage, n, steps, max_rows) for n in (1, 4)}
        (one,), alone = runs[1]
        four, together = runs[4]
        each = max(r["peak_rss"] for r in four)
        label = "compact, mapped" if storage == "mapped" else "dense, in memory"
        print(f"{label}, {one['rows']:,} rows: peak RSS of one trial alone {one['peak_rss'] / MB:,.0f} MB, of each of "
              f"4 concurrent trials at most {each / MB:,.0f} MB: ratio {each / one['peak_rss']:.2f} (goal <= 1.3)")
        print(f"    the trials together (peak of summed PSS): 1 trial {alone.pss / MB:,.0f} MB, 4 trials "
              f"{together.pss / MB:,.0f} MB: ratio {together.pss / alone.pss:.2f}; of which private (anon: torch "
              f"runtime, model, optimizer, batches{', the data copy' if storage == 'memory' else ''}) "
              f"{alone.pss_anon / MB:,.0f} -> {together.pss_anon / MB:,.0f} MB, shared files (libraries"
              f"{', the dataset' if storage == 'mapped' else ''}) {alone.pss_file / MB:,.0f} -> "
              f"{together.pss_file / MB:,.0f} MB: ratio {together.pss_file / max(alone.pss_file, 1):.2f}")
        if storage == "mapped":
            print(f"    the dataset's pages: {alone.data_rss / MB:,.0f} MB resident for one trial; for 4 trials "
                  f"{together.data_pss / MB:,.0f} MB (summed PSS: one copy), though summed RSS says "
                  f"{together.data_rss / MB:,.0f} MB (each trial counts all of it)")


def bench_throughput(out: Path, rows: int, steps: int, repeat: int) -> None:
    import torch

    from maou.trainer.config import train_config_from_dict
    from maou.trainer.loop import train_stage
    from maou.trainer.tensors import StageData, load_stage_data

    def small_val(data: StageData) -> StageData:  # what is timed is training; the final validation is not
        return StageData(data.stage, data.train, data.val.subset(torch.arange(min(4096, len(data.val)))),
                         data.content_hash)

    print(f"\n## training throughput, compact (mapped) vs dense (in memory), {rows:,} rows, CPU")
    torch.set_num_threads(1)
    for number in (2, 3):
        config = train_config_from_dict({"stage": number, "model": {"blocks": 2, "channels": 32}, "batch_size": 256,
                                         "budget": {"max_steps": steps, "eval_every": steps}, "eval_rows": 1024,
                                         "device": "cpu", "threads": 1, "eval_at_start": False})
        data = {s: small_val(load_stage_data(number, out, max_rows=rows, storage=s)) for s in ("mapped", "memory")}
        speed: dict[str, list[float]] = {"memory": [], "mapped": []}
        wait: dict[str, float] = {}
        for _ in range(repeat):  # interleaved: both see the same background load
            for storage in ("memory", "mapped"):
                result = train_stage(config, data[storage])
                speed[storage].append(result.samples_per_s)
                wait[storage] = min(wait.get(storage, 1.0), result.data_wait_share)
        best = {storage: max(values) for storage, values in speed.items()}
        paired = statistics.median(m / d for m, d in zip(speed["mapped"], speed["memory"]))
        print(f"stage {number}: dense {best['memory']:,.0f} samples/s, compact {best['mapped']:,.0f} samples/s: "
              f"ratio of the bests {best['mapped'] / best['memory']:.3f}, median of paired runs {paired:.3f} "
              f"(goal >= 0.95; runs dense {', '.join(f'{v:,.0f}' for v in speed['memory'])}, compact "
              f"{', '.join(f'{v:,.0f}' for v in speed['mapped'])}); data wait {100 * wait['mapped']:.2f}% of "
              f"step time compact, {100 * wait['memory']:.2f}% dense (goal < 5%)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child-build":
        print(json.dumps(child_build(argv[1], argv[2], int(argv[3]), float(argv[4]))))
        return 0
    if argv and argv[0] == "--child-trial":
        print(json.dumps(child_trial(argv[1], argv[2], int(argv[3]), int(argv[4]) or None)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--positions", type=int, default=1_200_000, help="plies of random playouts")
    parser.add_argument("--work", default="/tmp/maou-data-scale", help="corpus and builds go here")
    parser.add_argument("--repeat", type=int, default=3, help="timed builds and opens; the best counts")
    parser.add_argument("--trial-steps", type=int, default=100)
    parser.add_argument("--dense-rows", type=int, default=250_000, help="rows of the dense comparisons")
    parser.add_argument("--throughput-repeat", type=int, default=5, help="timed training runs of each path")
    args = parser.parse_args(argv)
    work = Path(args.work)
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores; timings are the best of {args.repeat} runs on a shared machine")
    corpus = make_corpus(work / "games", args.positions)
    out = bench_build(corpus, work, args.repeat, cores)
    bench_layout(out, args.repeat + 1)
    bench_trials(out, args.trial_steps, args.dense_rows)
    bench_throughput(out, args.dense_rows, 300, args.throughput_repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
