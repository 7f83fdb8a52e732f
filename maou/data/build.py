"""Game records -> Stage 1/2/3 Arrow datasets (``sweep data build``), split by game.

Layout of ``OUT`` (all tables uncompressed Arrow IPC ``.feather`` files that the trainer
memory-maps, one row per position; column types and byte layouts in :mod:`maou.layout`):

* ``stage1/all.feather``: the 1,105 synthetic rows of :func:`maou.shogi.stage1_rows`
  (``boardIdPositions``, ``piecesInHand``, ``reachableSquares``). Stage 1 has no split.
* ``stage2/{train,val}.feather``: every unique position of the split's games: ``id`` uint64
  (upstream maou's position id, :func:`maou.shogi.position_id`), ``hcp`` (32-byte cshogi
  HuffmanCodedPos), ``boardIdPositions``, ``piecesInHand``, ``legalMovesBits`` (the 1496-label
  legal-move multi-hot, bit-packed into 187 bytes). Validation drops every position that also
  occurs in train (counted in the manifest).
* ``stage3/{train,val}.feather``: positions aggregated by id within the split (games with a
  result only; validation drops the positions train has, as in Stage 2): ``id``, ``hcp``,
  ``boardIdPositions``, ``piecesInHand``, ``moveLabelSparse`` (the played labels with their
  float16 frequency, per-label play counts / count, sums to 1),
  ``resultValue`` float32 (wins / count for the side to move; win 1, loss 0, draw 0.5),
  ``count`` uint32.
* ``split.json`` (the game ids of each split; an HCPE game as its rows), ``manifest.json`` per
  stage folder and at ``OUT``
  (written last: its presence marks a complete build; its ``content_hash`` names the data).
* ``.verified.json``: the files as their build wrote (and hashed) them, or as a later full check
  found them (:mod:`maou.data.verify`).

Before anything trains on a build folder (:func:`datasets_ready`), its stage's files are checked
against the manifest: sizes every time, SHA-256 once per ``sweep run``/``sweep train`` (files
untouched since their last good hash are not read). A damaged file is rebuilt from the games when
they are there, and refused, naming the file and the command that rebuilds it, when they are not.

The build runs on every core (:mod:`maou.data.pipeline`) in memory bounded by its shard and
partition sizes, whatever the corpus; its output does not depend on the number of workers.
The split is by game, seeded: no game has positions on both sides, and with two or more games
each side gets at least one. A CSA or KIF record is a game; HCPE rows are gathered into games by
their ``id``'s game part, or by file where they have none (:mod:`maou.data.hcpe`). The manifest
and the summary count games (``games_read``, ``train``, ``val``) and positions (HCPE: rows) apart.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from maou import __version__
from maou.data.games import ReadStats
from maou.data.pipeline import Games, plan_build, run_pipeline, worker_pool
from maou.data.sources import (
    RECORD_SUFFIXES,
    FileScan,
    scan_sources,
    source_files,
    sources_content_hash,
    sources_fingerprint,
)
from maou.data.verify import Check, Mismatch, rebuild_command, record_verified, verify_dataset
from maou.data.writers import write_stage1
from maou.errors import UserError
from maou.layout import MANIFEST, RECORD_BATCH_ROWS, SPLITS, content_hash_of, read_manifest, stage_name
from maou.stages import games_stages

#: Bumped when the written layout changes; a dataset of another format version is rebuilt.
#: 2: uncompressed, memory-mappable files; Stage 2 legal moves bit-packed, Stage 3 policy sparse.
#: 3: Stage 3 validation drops the positions train has (as Stage 2 always did); HCPE rows split by game.
FORMAT_VERSION = 3


@dataclass
class BuildSummary:
    out_dir: Path
    stats: ReadStats
    games: dict[str, int] = field(default_factory=dict)
    positions: dict[str, int] = field(default_factory=dict)
    unique_positions: dict[str, int] = field(default_factory=dict)
    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    val_dropped_in_train: int = 0
    seconds: float = 0.0
    workers: int = 1
    #: CPU time of the build: its own process and every reading and aggregating task.
    cpu_seconds: float = 0.0
    manifest: dict = field(default_factory=dict)
    #: What the search of the inputs found: files by kind, paths left out (broken links, loops, ...).
    scan: FileScan = field(default_factory=FileScan)

    @property
    def positions_per_s(self) -> float:
        return sum(self.positions.values()) / self.seconds if self.seconds > 0 else 0.0


def _progress(enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, disable=not enabled, transient=True)


def build_datasets(games: Sequence[str | Path] | str | Path, out_dir: str | Path, val_fraction: float = 0.1,
                   split_seed: int = 0, progress: bool = True, workers: int | None = None) -> BuildSummary:
    """Read the game records of ``games`` and write the Stage 1/2/3 datasets under ``out_dir``,
    with ``workers`` processes (default: every core; :mod:`maou.data.pipeline`).

    Workers started from a process that runs threads come from a fork server, which imports the
    main module again, as every ``multiprocessing`` program does: a script that calls this runs
    it under ``if __name__ == "__main__":`` (``sweep data build`` and ``sweep run`` do)."""
    games = [games] if isinstance(games, (str, Path)) else list(games)
    if not games:
        raise UserError("no game records given (--games PATH ...)")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise UserError(f"--out {out_dir} is a file, not a folder")
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must be in (0, 1), got {val_fraction}")
    started, cpu_started = time.perf_counter(), time.process_time()
    files, scan = scan_sources(games)
    if not files:
        raise no_readable_games(games, scan)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (out / MANIFEST).unlink()  # the top manifest marks a complete build: written last
    plan = plan_build([f for _, f, _ in files], out, workers)

    def refuse_empty(read: Games) -> None:
        if read.stats.games == 0:
            raise no_readable_games(games, scan, read.stats)

    with worker_pool(plan.workers) as pool, _progress(progress) as bar:  # workers before the bar's thread
        read, written = run_pipeline(plan, pool, bar, val_fraction, split_seed, out, refuse_empty)
    summary = BuildSummary(out_dir=out, stats=read.stats, workers=plan.workers, scan=scan)
    summary.games = {name: read.count(name) for name in SPLITS}
    summary.positions, summary.unique_positions = written.positions, written.unique_positions
    stages = {"stage1": write_stage1(out / "stage1"), **written.stages}
    for stage_manifest in stages.values():
        stage_manifest["layout"] = {"compression": "none", "record_batch_rows": RECORD_BATCH_ROWS}
    summary.val_dropped_in_train = stages["stage2"]["val_dropped_seen_in_train"]
    summary.rows = {"stage1": {"all": stages["stage1"]["rows"]["all"]},
                    **{stage_name(s.number): stages[stage_name(s.number)]["rows"] for s in games_stages()}}
    summary.seconds = time.perf_counter() - started
    # tasks run in this process are in its own time already
    summary.cpu_seconds = time.process_time() - cpu_started + (written.task_cpu_seconds if plan.workers > 1 else 0.0)
    _write_manifests(summary, games, files, stages, split_seed, val_fraction)
    if progress:
        print_summary(summary)
    return summary


def no_readable_games(games: Sequence[str | Path], scan: FileScan, stats: ReadStats | None = None) -> UserError:
    """One line: the inputs held no game that could be read, with what they did hold."""
    parts = [scan.describe()]
    if stats is not None and stats.skipped:
        parts.append("every game skipped (" + ", ".join(f"{k} {v}" for k, v in stats.skipped.most_common()) + ")")
    if scan.left_out:
        parts.append(f"left out: {scan.describe_left_out()}")
    if not scan.files:
        suffixes = ", ".join(sorted(s for s, kind in RECORD_SUFFIXES.items() if kind != "hcpe"))
        parts.append(f"record files are {suffixes} (optionally .gz) and HCPE .feather")
    return UserError(f"no readable games in {', '.join(map(str, games))}: {'; '.join(parts)}")


def _write_manifests(summary: BuildSummary, games: list, files: list, stages: dict[str, dict], split_seed: int,
                     val_fraction: float) -> None:
    """One manifest per stage folder, then the top one (its ``content_hash`` covers every file)."""
    out = summary.out_dir
    content_hash, listed = sources_content_hash(files)
    common = {"format_version": FORMAT_VERSION, "package_version": __version__,
              "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
              "build_seconds": round(summary.seconds, 3), "split_seed": split_seed, "val_fraction": val_fraction}
    sources = {"inputs": [str(g) for g in games], "resolved": _resolved(games), "files": len(files),
               "bytes": sum(f.stat().st_size for _, f, _ in files),
               "fingerprint": sources_fingerprint(files), "content_sha256": content_hash,
               "listed": listed, "listed_truncated": len(files) > len(listed), "search": summary.scan.to_dict()}
    reading = summary.stats.to_dict()
    for name, stage in stages.items():
        stage_manifest = {**common, "stage": int(name[-1]), **stage}
        if name != "stage1":
            stage_manifest["sources"] = {k: v for k, v in sources.items() if k != "listed"}
            stage_manifest["games"] = reading | {split: summary.games[split] for split in SPLITS}
            stage_manifest["positions"] = summary.positions
            stage_manifest["unique_positions"] = summary.unique_positions
        (out / name / MANIFEST).write_text(json.dumps(stage_manifest, indent=2) + "\n")
    written = {f"{name}/{entry['file']}": {k: entry[k] for k in ("rows", "bytes", "sha256")}
               for name, stage in stages.items() for entry in stage["files"].values()}
    summary.manifest = {
        **common,
        # one hash of every written dataset file (names and contents): identifies the data a run trained on
        "content_hash": content_hash_of(written),
        "sources": sources,
        "games": reading | {"train": summary.games["train"], "val": summary.games["val"]},
        "positions": {**summary.positions, "total": sum(summary.positions.values())},
        "unique_positions": {**summary.unique_positions},
        "val_dropped_seen_in_train": summary.val_dropped_in_train,
        "stage3_val_dropped_seen_in_train": stages["stage3"]["val_dropped_seen_in_train"],
        "rows": summary.rows,
        "positions_per_s": round(summary.positions_per_s, 1),
        "workers": summary.workers,
        "build_cpu_seconds": round(summary.cpu_seconds, 3),
        "files": written,
    }
    (out / MANIFEST).write_text(json.dumps(summary.manifest, indent=2) + "\n")
    record_verified(out, written)  # hashed as they were written: the first full check reads nothing


def print_summary(summary: BuildSummary) -> None:
    from rich.console import Console
    from rich.table import Table

    stats = summary.stats
    table = Table(title=f"datasets -> {summary.out_dir}", show_header=True)
    table.add_column("")
    for name in ("train", "val", "total"):
        table.add_column(name, justify="right")

    def add(label: str, values: dict[str, int]) -> None:
        table.add_row(label, *(f"{values.get(n, 0):,}" for n in SPLITS), f"{sum(values.values()):,}")

    add("games", summary.games)
    add("positions", summary.positions)
    add("unique positions", summary.unique_positions)
    for info in games_stages():
        add(f"stage {info.number} rows", summary.rows[stage_name(info.number)])
    table.add_row("stage 1 rows", "", "", f"{summary.rows['stage1']['all']:,}")
    table.add_row("files read", "", "", f"{stats.files:,}")
    if summary.scan.kinds.get("other"):
        suffixes = ", ".join(summary.scan.common_suffixes())
        table.add_row(f"other files, not read ({suffixes})", "", "", f"{summary.scan.kinds['other']:,}")
    for reason, n in sorted(summary.scan.left_out.items()):
        table.add_row(f"left out: {reason}", "", "", f"{n:,}")
    table.add_row("games without result (stage 2 only)", "", "", f"{stats.no_result:,}")
    for reason, n in sorted(stats.skipped.items()):
        table.add_row(f"skipped: {reason}", "", "", f"{n:,}")
    table.add_row("val positions dropped (seen in train)", "", "", f"{summary.val_dropped_in_train:,}")
    table.add_row("time", "", "", f"{summary.seconds:.2f} s")
    table.add_row("positions / s", "", "", f"{summary.positions_per_s:,.0f}")
    Console().print(table)


# --- on demand ------------------------------------------------------------------------------------------


def _resolved(games: Sequence[str | Path]) -> list[str]:
    return [str(Path(g).resolve()) for g in games]


#: Parent of the default build folders (``data.dir`` null).
DEFAULT_BUILD_ROOT = Path("data/build")


def build_dir(data_config: Any) -> Path:
    """Where ``data_config``'s datasets live: its ``dir``, or by default ``data/build/<key>`` with a
    key of the resolved game paths, the split and the format, so different corpora never share
    (and never rebuild) one folder."""
    if data_config.dir is not None:
        return Path(data_config.dir)
    identity = json.dumps({"games": _resolved(data_config.games), "val_fraction": data_config.val_fraction,
                           "split_seed": data_config.split_seed, "format_version": FORMAT_VERSION}, sort_keys=True)
    return DEFAULT_BUILD_ROOT / hashlib.sha256(identity.encode()).hexdigest()[:16]


def _built_for(manifest: dict | None, data_config: Any) -> bool:
    """The manifest is of a complete build of ``data_config``'s games (by path) and split, in this format."""
    if manifest is None or manifest.get("format_version") != FORMAT_VERSION:
        return False
    if manifest.get("split_seed") != data_config.split_seed or manifest.get("val_fraction") != data_config.val_fraction:
        return False
    return (manifest.get("sources") or {}).get("resolved") == _resolved(data_config.games)


def datasets_up_to_date(data_config: Any) -> bool:
    """True when the build folder holds a complete build of the same sources and split."""
    out = build_dir(data_config)
    manifest = read_manifest(out / MANIFEST)
    if manifest is None or not _built_for(manifest, data_config):
        return False
    sources = manifest.get("sources", {})
    if not all((out / name).is_file() for name in manifest.get("files", {})):
        return False
    files = source_files(data_config.games)
    if sources_fingerprint(files) == sources.get("fingerprint"):
        return True
    # same files with new mtimes (a fresh checkout): compare contents before rebuilding
    return sources_content_hash(files)[0] == sources.get("content_sha256")


def games_present(data_config: Any) -> bool:
    """Every input of ``data_config.games`` exists (the datasets can be built again from them)."""
    return all(Path(g).exists() for g in data_config.games)


def _games(data_config: Any) -> str:
    return ", ".join(map(str, data_config.games))


def _refuse(mismatch: Mismatch, data_config: Any, out: Path) -> UserError:
    command = rebuild_command(out, data_config.games, data_config.val_fraction, data_config.split_seed)
    return UserError(f"{mismatch.describe()}; its games ({_games(data_config)}) are not there to rebuild it from: "
                     f"restore them and run `{command}`")


@contextlib.contextmanager
def datasets_ready(data_config: Any, progress: bool = True, stages: Sequence[int] | None = None,
                   check: Check = "size") -> Iterator[tuple[Path, str]]:
    """Hold the build folder's lock with its datasets complete and current (built first when
    missing or built from other sources or another split); yields the folder and the build's
    ``content_hash``. Read the data inside the block: no other process rebuilds it meanwhile.

    The files of ``stages`` (default: every stage) are checked against the manifest (``check``:
    ``size``, or ``full`` with SHA-256; :mod:`maou.data.verify`): a damaged file is rebuilt from
    the games, saying so on stderr, or, the games gone, refused (:class:`UserError` naming the file
    and the rebuild command). A verified build whose games are gone is used as it is."""
    out = build_dir(data_config)
    if out.exists() and not out.is_dir():
        raise UserError(f"data.dir {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".build.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            present = games_present(data_config)
            manifest = read_manifest(out / MANIFEST)
            if not present and _built_for(manifest, data_config):  # the datasets outlive their games
                mismatch = verify_dataset(out, stages, check, manifest).mismatch
                if mismatch is not None:
                    raise _refuse(mismatch, data_config, out)
            elif not datasets_up_to_date(data_config):
                _build(data_config, out, progress)
            elif (mismatch := verify_dataset(out, stages, check).mismatch) is not None:
                print(f"{mismatch.describe()}; rebuilding from {_games(data_config)}", file=sys.stderr, flush=True)
                _build(data_config, out, progress)
            manifest = read_manifest(out / MANIFEST) or {}
            yield out, str(manifest.get("content_hash"))
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(data_config: Any, out: Path, progress: bool) -> None:
    build_datasets(list(data_config.games), out, val_fraction=data_config.val_fraction,
                   split_seed=data_config.split_seed, progress=progress)


def ensure_datasets(data_config: Any, progress: bool = True, stages: Sequence[int] | None = None,
                    check: Check = "size") -> Path:
    """The build folder of ``data_config``, built first when missing or built from other sources/split
    (the files of ``stages`` checked as :func:`datasets_ready` does)."""
    with datasets_ready(data_config, progress, stages, check) as (out, _):
        return out


__all__ = ["BuildSummary", "DEFAULT_BUILD_ROOT", "FORMAT_VERSION", "build_datasets", "build_dir",
           "datasets_ready", "datasets_up_to_date", "ensure_datasets", "games_present", "no_readable_games",
           "print_summary"]
