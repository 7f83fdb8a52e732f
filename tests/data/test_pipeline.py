"""The build pipeline: shards read on several processes, positions partitioned by id, the same
datasets (byte for byte) as one process over the whole corpus; skips and duplicates across shards
counted where a single reader finds them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cshogi
import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pytest
from sweep_helpers import bundled_games

from maou.data import pipeline
from maou.data.build import build_datasets
from maou.data.games import ReadStats
from maou.data.sources import read_records, source_files
from maou.data.tally import MAX_EXAMPLES

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "data" / "games"
GOLDEN_KIFU = REPO / "tests" / "golden" / "kifu"


def mixed_corpus(root: Path) -> Path:
    """Bundled games, copies of some of them under later names (duplicates across shards), a game
    with an illegal move, one without a result, multi-game CSA, Shift-JIS KIF and HCPE rows."""
    games = root / "games"
    games.mkdir(parents=True)
    files = bundled_games(24)
    for f in files:
        shutil.copy2(f, games / f.name)
    for i, f in enumerate(files[:3]):
        shutil.copy2(f, games / f"zz-copy-{i}.csa")
    (games / "bad.csa").write_text("V2\nPI\n+\n+7776FU\n+7675FU\n%TORYO\n")
    (games / "chudan.csa").write_text("V2\nPI\n+\n+5756FU\n-5354FU\n%CHUDAN\n")
    for name in ("csa_multi_game.csa", "test_data_sjis.kif", "test_data_no_moves.csa"):
        shutil.copy2(GOLDEN_KIFU / name, games / name)
    record = read_records([files[5]])[0][0]
    board, hcps, moves = cshogi.Board(record.sfen), [], []
    for move in record.moves[:40]:
        hcp = np.zeros(32, dtype=np.uint8)
        board.to_hcp(hcp)
        hcps.append(hcp)
        moves.append(cshogi.move16(move))
        board.push(move)
    hcp_column = pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), len(hcps),
                                                      [None, pa.py_buffer(np.stack(hcps).tobytes())])
    feather.write_feather(pa.table({"hcp": hcp_column, "bestMove16": np.array(moves, dtype=np.int16),
                                    "gameResult": np.full(len(moves), cshogi.BLACK_WIN, dtype=np.int8)}),
                          games / "positions.feather")
    return games


TIMING = {"built_at", "build_seconds", "build_cpu_seconds", "positions_per_s", "workers"}


def _manifest(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMING}


@pytest.fixture(scope="module")
def serial_build(tmp_path_factory):
    """The mixed corpus built by one process: (summary, corpus folder, output folder)."""
    root = tmp_path_factory.mktemp("serial")
    games = mixed_corpus(root)
    summary = build_datasets([games], root / "serial", val_fraction=0.25, split_seed=1, progress=False, workers=1)
    return summary, games, root / "serial"


def test_a_parallel_build_writes_what_one_process_writes(serial_build, tmp_path, monkeypatch):
    serial, games, serial_out = serial_build
    monkeypatch.setattr(pipeline, "SHARD_BYTES", (1, 20_000))       # many shards ...
    monkeypatch.setattr(pipeline, "PARTITION_SOURCE_BYTES", 10_000)  # ... and partitions
    plan = pipeline.plan_build([f for _, f, _ in source_files([games])], tmp_path / "x", workers=2)
    assert len(plan.shards) > 4 and plan.partitions >= 8 and plan.workers == 2
    parallel = build_datasets([games], tmp_path / "parallel", val_fraction=0.25, split_seed=1, progress=False,
                              workers=2)
    assert (serial.workers, parallel.workers) == (1, 2)
    assert serial.manifest["content_hash"] == parallel.manifest["content_hash"]  # every file, byte for byte
    for name in ("manifest.json", "stage2/manifest.json", "stage3/manifest.json"):
        assert _manifest(serial_out / name) == _manifest(tmp_path / "parallel" / name), name
    assert (serial_out / "split.json").read_bytes() == (tmp_path / "parallel" / "split.json").read_bytes()
    assert not (tmp_path / "parallel" / pipeline.SCRATCH).exists()
    # what a single reader over the whole corpus finds, counted once
    stats = serial.manifest["games"]
    assert stats["skipped_by_reason"] == {"duplicate game": 3, "illegal move": 1, "no moves": 1}
    assert [e.split(": same moves as ")[0].rsplit("/", 1)[1] for e in stats["skipped_examples"]["duplicate game"]] \
        == ["zz-copy-0.csa#0", "zz-copy-1.csa#0", "zz-copy-2.csa#0"]
    _, reference = read_records([games])
    assert stats == {**reference.to_dict(), "train": parallel.games["train"], "val": parallel.games["val"]}


def test_workers_of_a_process_running_threads_come_from_a_fork_server(serial_build, tmp_path, monkeypatch):
    serial, games, _ = serial_build
    monkeypatch.setattr(pipeline, "SHARD_BYTES", (1, 20_000))
    release = threading.Event()
    busy = threading.Thread(target=release.wait, daemon=True)  # a thread: forking now would be unsafe
    busy.start()
    try:
        with pipeline.worker_pool(2) as pool:
            assert pool is not None and pool._mp_context.get_start_method() == "forkserver"  # type: ignore[attr-defined]
        parallel = build_datasets([games], tmp_path / "out", val_fraction=0.25, split_seed=1, progress=False, workers=2)
    finally:
        release.set()
        busy.join()
    assert parallel.workers == 2 and parallel.manifest["content_hash"] == serial.manifest["content_hash"]


def test_a_single_threaded_process_forks_its_workers(serial_build, tmp_path):
    serial, games, _ = serial_build
    code = ("import json, sys\n"
            "from maou.data import pipeline\n"
            "from maou.data.build import build_datasets\n"
            "with pipeline.worker_pool(2) as pool:\n"
            "    method = pool._mp_context.get_start_method()\n"
            "pipeline.SHARD_BYTES = (1, 20_000)\n"
            "s = build_datasets([sys.argv[1]], sys.argv[2], val_fraction=0.25, split_seed=1, progress=False,"
            " workers=2)\n"
            "print(json.dumps([method, s.workers, s.manifest['content_hash']]))\n")
    result = subprocess.run([sys.executable, "-c", code, str(games), str(tmp_path / "out")], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    method, workers, content_hash = json.loads(result.stdout.strip().splitlines()[-1])
    assert (method, workers) == ("fork", 2) and content_hash == serial.manifest["content_hash"]


def test_split_json_is_json_dumps_indent_0(serial_build):
    text = (serial_build[2] / "split.json").read_text()
    split = json.loads(text)
    assert text == json.dumps(split, indent=0) + "\n"
    assert len(split["train"]) > len(split["val"]) > 0


def test_files_are_uncompressed_and_map_with_zero_copy(serial_build, tmp_path):
    from maou.layout import RECORD_BATCH_ROWS
    from maou.trainer.columns import open_table

    out = serial_build[2]
    for path in [out / "stage1" / "all.feather", *out.glob("stage[23]/*.feather")]:
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        assert all(b.num_rows <= RECORD_BATCH_ROWS for b in batches) and sum(b.num_rows for b in batches) > 0
        table, zero_copy = open_table(path)
        assert zero_copy and table.equals(feather.read_table(path))  # plain pyarrow reads the same table
    lz4 = tmp_path / "lz4.feather"  # upstream's compressed files still load, but into memory
    feather.write_feather(feather.read_table(out / "stage2" / "train.feather"), lz4, compression="lz4")
    assert open_table(lz4)[1] is False


def test_read_stats_merge_keeps_the_first_examples():
    first, second = ReadStats(files=1, games=2), ReadStats(files=3, games=4, positions=9, no_result=1)
    for i in range(MAX_EXAMPLES - 1):
        first.skip("malformed", f"a#{i}")
    for i in range(MAX_EXAMPLES):
        second.skip("malformed", f"b#{i}")
    second.skip("illegal move", "b#9", "ply 2")
    first.merge(second)
    assert (first.files, first.games, first.positions, first.no_result) == (4, 6, 9, 1)
    assert first.skipped == {"malformed": 2 * MAX_EXAMPLES - 1, "illegal move": 1}
    assert first.examples["malformed"] == [f"a#{i}" for i in range(MAX_EXAMPLES - 1)] + ["b#0"]
    assert first.examples["illegal move"] == ["b#9: ply 2"]


def test_an_empty_corpus_is_refused_before_anything_is_written(tmp_path):
    games = tmp_path / "games"
    games.mkdir()
    (games / "bad.csa").write_text("V2\nPI\n+\n+7776FU\n+7675FU\n%TORYO\n")
    with pytest.raises(Exception, match="no readable games.*illegal move 1"):
        build_datasets([games], tmp_path / "out", progress=False, workers=2)
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not (tmp_path / "out" / pipeline.SCRATCH).exists()


# --- workers die with the build ---------------------------------------------------------------------

def _processes() -> dict[int, tuple[int, str, str]]:
    """Every process: pid -> (parent pid, state, start time) from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
            table[int(entry.name)] = (int(fields[1]), fields[0], fields[19])
    return table


def _descendants(root: int) -> dict[int, str]:
    """pid -> start time of every process below ``root`` (its children, theirs, ...)."""
    table, found, frontier = _processes(), {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, started) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = started
                frontier.append(pid)
    return found


def _workers(root: int) -> list[int]:
    """The pool's workers below ``root``: its leaf processes but the resource tracker."""
    below = _descendants(root)
    table = _processes()
    parents = {table[pid][0] for pid in below if pid in table}
    workers = []
    for pid in below:
        try:
            helper = b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if pid not in parents and not helper:
            workers.append(pid)
    return workers


def _still_running(processes: dict[int, str]) -> list[int]:
    """Those of ``processes`` (pid -> start time) that still run (a zombie has ended)."""
    table = _processes()
    return [pid for pid, started in processes.items()
            if pid in table and table[pid][2] == started and table[pid][1] != "Z"]


def _kill_and_expect_no_survivor(proc: subprocess.Popen) -> None:
    below = _descendants(proc.pid)
    assert below, "no worker to outlive the build"
    proc.kill()
    proc.wait(timeout=300)
    deadline = time.monotonic() + 300
    while _still_running(below) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = _still_running(below)
    for pid in survivors:  # not left behind by a failing test
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"processes outlived the build: {survivors}"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_sweep_data_build_leaves_no_worker_running(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    build = subprocess.Popen([str(Path(sys.executable).with_name("sweep")), "data", "build", "--games", str(BUNDLED),
                              "--out", str(tmp_path / "out"), "--workers", "2"], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(_workers(build.pid)) < 2:
            assert build.poll() is None and time.monotonic() < deadline, "the build's workers never started"
            time.sleep(0.02)
        _kill_and_expect_no_survivor(build)
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_workers_die_with_the_process_that_started_them(method):
    """Forked workers, and a fork server's (whose parent, the fork server, would outlive the build):
    with the build's process killed, no worker, fork server or resource tracker is left."""
    code = ("import sys, threading, time\n"
            "from maou.data import pipeline\n"
            f"if {method == 'forkserver'}:  # a thread: the workers come from a fork server\n"
            "    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
            "with pipeline.worker_pool(2) as pool:\n"
            "    print(pool._mp_context.get_start_method(), flush=True)\n"
            "    time.sleep(600)\n")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == method  # every worker started
        assert len(_workers(owner.pid)) == 2
        _kill_and_expect_no_survivor(owner)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
