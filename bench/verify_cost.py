"""What proving a dataset costs before a sweep trains on it (:mod:`maou.data.verify`), on ~1M Stage 2 rows.

The dataset: ``--dataset DIR``, a folder ``sweep data build`` wrote (e.g. ``bench/data_scale.py``'s
``/tmp/maou-data-scale/build``), or by default a synthetic one: ``--rows`` random rows (90 % train,
10 % val) written with the build's own writer (:class:`maou.data.writers.DatasetFile`, the Stage 2
schema, uncompressed Arrow IPC, the same bytes per row as a real build) and a manifest as the build
writes it, under ``--work`` (reused when there). Hashing cost depends on bytes alone, so synthetic
rows time the same as built ones.

Measured on the stage's files, each the best of ``--repeat`` runs:

* full check, page cache warm: SHA-256 of every file (no ``.verified.json``), MB/s and s per
  million rows: CPU-bound hashing;
* full check, from disk: the same after ``posix_fadvise(DONTNEED)`` on the dataset's own files (its
  pages leave the page cache; nothing else is touched), where the disk allows;
* size-only check (every trial's load);
* full check of an untouched dataset (``.verified.json`` current: a resumed ``sweep run``).

    python bench/verify_cost.py                    # 1M synthetic rows, ~330 MB under /tmp
    python bench/verify_cost.py --dataset /tmp/maou-data-scale/build
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from maou.data.verify import VERIFIED, record_verified, verify_dataset  # noqa: E402
from maou.layout import content_hash_of  # noqa: E402

STAGE = 2
CHUNK_ROWS = 100_000


def synthetic_dataset(out: Path, rows: int, seed: int = 0) -> Path:
    """``rows`` random Stage 2 rows (train 90 %, val 10 %) as the build writes them, with manifests."""
    from maou.data.writers import DatasetFile, stage2_schema, stage2_table
    from maou.layout import RECORD_BATCH_ROWS
    from maou.shogi import BOARD_SHAPE, HCP_BYTES, PIECES_IN_HAND_NUM
    from maou.shogi.shapes import MOVE_LABELS_PACKED_BYTES

    marker = out / f"synthetic-{rows}-{seed}"
    if marker.is_file() and (out / "manifest.json").is_file():
        return out
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    counts = {"train": rows - rows // 10, "val": rows // 10}
    files: dict[str, dict] = {}
    next_id = 0
    for split, count in counts.items():
        file = DatasetFile(out / f"stage{STAGE}" / f"{split}.feather", stage2_schema())
        for start in range(0, count, CHUNK_ROWS):
            n = min(CHUNK_ROWS, count - start)
            ids = np.arange(next_id, next_id + n, dtype=np.uint64)
            next_id += n
            file.write(stage2_table(
                ids, rng.integers(0, 256, (n, HCP_BYTES), dtype=np.uint8),
                rng.integers(0, 31, (n, *BOARD_SHAPE), dtype=np.uint8),
                rng.integers(0, 5, (n, PIECES_IN_HAND_NUM), dtype=np.uint8),
                rng.integers(0, 256, (n, MOVE_LABELS_PACKED_BYTES), dtype=np.uint8)))
        entry = file.close()
        files[f"stage{STAGE}/{split}.feather"] = {k: entry[k] for k in ("rows", "bytes", "sha256")}
    layout = {"compression": "none", "record_batch_rows": RECORD_BATCH_ROWS}
    (out / f"stage{STAGE}" / "manifest.json").write_text(json.dumps(
        {"stage": STAGE, "rows": counts, "layout": layout, "synthetic": True}, indent=2) + "\n")
    (out / "manifest.json").write_text(json.dumps(
        {"content_hash": content_hash_of(files), "files": files, "rows": {f"stage{STAGE}": counts},
         "synthetic": True}, indent=2) + "\n")
    record_verified(out, files)
    marker.write_text("")
    print(f"wrote {rows:,} synthetic Stage 2 rows in {time.perf_counter() - started:.1f} s -> {out}")
    return out


def evict(paths: list[Path]) -> bool:
    """Drop these files' pages from the page cache (theirs only); False where the OS cannot."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def timed(fn, repeat: int, before=None) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        if before is not None:
            before()
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=None, help="a built dataset folder (default: synthetic rows)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic rows, train and val together")
    parser.add_argument("--work", default="/tmp/maou-verify-cost", help="where the synthetic dataset goes")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    out = Path(args.dataset) if args.dataset else synthetic_dataset(Path(args.work), args.rows)
    manifest = json.loads((out / "manifest.json").read_text())
    names = sorted(n for n in manifest["files"] if n.startswith(f"stage{STAGE}/"))
    paths = [out / n for n in names]
    total = sum(p.stat().st_size for p in paths)
    rows = sum(int(manifest["files"][n]["rows"]) for n in names)
    per_row = total / rows
    print(f"dataset {out}: stage {STAGE}, {len(names)} files, {rows:,} rows, {total / 1e6:,.1f} MB "
          f"({per_row:.0f} bytes a row){' (synthetic rows)' if manifest.get('synthetic') else ''}")
    print(f"best of {args.repeat} runs each; {os.cpu_count()} CPUs on this machine, shared")

    def forget() -> None:
        (out / VERIFIED).unlink(missing_ok=True)

    def full():
        result = verify_dataset(out, [STAGE], "full")
        assert result.ok and len(result.hashed) == len(names), result
        return result

    def report(label: str, seconds: float) -> None:
        print(f"{label:<34} {seconds:8.3f} s   {total / 1e6 / seconds:8,.0f} MB/s   "
              f"{seconds / rows * 1e6:7.3f} s per million rows")

    verify_dataset(out, [STAGE], "full")  # warm the page cache, leave .verified.json current
    warm, _ = timed(full, args.repeat, before=forget)
    report("full check (SHA-256, page cache)", warm)
    if evict(paths):
        cold, _ = timed(full, args.repeat, before=lambda: (forget(), evict(paths)))
        report("full check (SHA-256, from disk)", cold)
    size, result = timed(lambda: verify_dataset(out, [STAGE], "size"), max(args.repeat, 10))
    assert result.ok and not result.hashed
    print(f"{'size-only check (every trial)':<34} {size * 1e3:8.3f} ms")
    verify_dataset(out, [STAGE], "full")  # records .verified.json
    cached, result = timed(lambda: verify_dataset(out, [STAGE], "full"), max(args.repeat, 10))
    assert result.ok and not result.hashed
    print(f"{'full check, untouched (cached)':<34} {cached * 1e3:8.3f} ms   (files hashed: 0)")


if __name__ == "__main__":
    main()
