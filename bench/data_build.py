"""Dataset build throughput on one CPU core: Stage 2 masks and Stage 3 aggregation, positions/s.

Corpus: ``../shared/data/engine-games`` (600 engine games, about 77k positions) when present,
else the bundled ``data/games``; or ``--games PATH ...``. The process is pinned to one core.

* Stage 2 masks: replay every game with cshogi collecting each new position's pieces, hands and
  legal moves (``extract_positions``), then the 1496-label masks (``legal_masks``) and the board
  encodings and ids (``encode_unique``): everything ``stage2/*.feather`` holds, in memory.
* Stage 3 aggregation: grouping the played positions by id (counts, win sums, per-label play
  counts) and the dense float16 policy targets and values (``aggregate_stage3``), on the
  positions extracted above.
* End to end: ``build_datasets`` (read, split, all three stages, Arrow files, manifests, hashes).

Goal: >= 50,000 positions/s for Stage 2 masks. Prints the best of ``--repeat`` runs.

    python bench/data_build.py
    python bench/data_build.py --games data/games --repeat 5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from maou.data.build import build_datasets  # noqa: E402
from maou.data.positions import aggregate_stage3, encode_unique, extract_positions, legal_masks  # noqa: E402
from maou.data.sources import read_records  # noqa: E402

GOAL_STAGE2 = 50_000
SHARED_GAMES = Path(os.environ.get("MAOU_SHARED", REPO.parent / "shared")) / "data" / "engine-games"


def best_of(repeat: int, fn):
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", nargs="+", default=None, help="record files or folders")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    games = args.games or [str(SHARED_GAMES if SHARED_GAMES.is_dir() else REPO / "data" / "games")]
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    read_s, (records, stats) = best_of(1, lambda: read_records(games))
    positions = stats.positions
    print(f"corpus: {', '.join(games)}: {stats.files} files, {stats.games} games, {positions:,} positions "
          f"({stats.games_skipped} skipped)")
    print(f"read + validate (parse, replay)  {positions / read_s:>12,.0f} positions/s")

    def stage2():
        pos = extract_positions(records)
        legal_masks(pos)
        encode_unique(pos)
        return pos

    s2, pos = best_of(args.repeat, stage2)
    extract_s, _ = best_of(args.repeat, lambda: extract_positions(records))
    masks_s, _ = best_of(args.repeat, lambda: legal_masks(pos))
    print(f"  replay + collect                {positions / extract_s:>12,.0f} positions/s")
    print(f"  masks (vectorised labels)       {positions / masks_s:>12,.0f} positions/s")
    rate2 = positions / s2
    print(f"Stage 2 masks (all of the above)  {rate2:>12,.0f} positions/s  "
          f"({len(pos):,} unique; goal {GOAL_STAGE2:,}: ratio {rate2 / GOAL_STAGE2:.2f})")

    def stage3():
        agg = aggregate_stage3(pos)
        return agg.policy(), agg.result_value()

    s3, (policy, _) = best_of(args.repeat, stage3)
    print(f"Stage 3 aggregation               {positions / s3:>12,.0f} positions/s  ({len(policy):,} rows)")

    with tempfile.TemporaryDirectory() as tmp:
        total_s, summary = best_of(1, lambda: build_datasets(games, tmp, progress=False))
        rows2 = summary.rows["stage2"]
        print(f"end to end build_datasets        {positions / total_s:>12,.0f} positions/s  "
              f"({total_s:.2f} s; stage 2 rows train {rows2['train']:,} val {rows2['val']:,})")
    return 0 if rate2 >= GOAL_STAGE2 else 1


if __name__ == "__main__":
    sys.exit(main())
