"""The GPU check: one command that measures what a GPU machine does with this project, in one table.

    python bench/gpu.py [--device cuda|cpu] [--quick] [--out DIR]

Rows of the summary table (printed, and written to ``DIR/gpu-check.json`` and ``DIR/gpu-check.md``
with ``--out``):

* ``train_stage / bare loop``: the product's loop against a hand-written one, same model, batch,
  optimizer and data (bf16 autocast on CUDA); ``bench/train_throughput.py``'s functions.
* ``MFU 10x128 batch B``: model FLOPs utilisation of the 10-block, 128-channel ResNet: the FLOPs
  of one forward and backward (``torch.utils.flop_counter.FlopCounterMode``) times the steps a
  second, over the device's peak (a table of known bf16 dense peaks by ``torch.cuda.get_device_name``;
  ``--peak-tflops`` for another card; on CPU against a measured float32 matmul).
* ``compact / dense, stage S``: ``train_stage`` on a memory-mapped dataset file (bit-packed,
  sparse) against the same rows as in-memory tensors.
* ``demo sweep``: ``sweeps/demo.yaml`` run in this process on the device, on a temporary storage
  (its dataset built first, outside the time).
* ``k concurrent MODEL``: k training processes (forked from a fork server that imported torch once)
  on the same device, k = 1, 2, 4, 8 (1, 2 with ``--quick`` or on CPU), each a
  fixed number of steps on synthetic rows, started together: their samples/s summed, and each
  process's peak device memory (``torch.cuda.max_memory_allocated``) and peak RSS. On CPU each
  process gets ``cores // k`` threads (at least 1).

Full sizes (CUDA without ``--quick``) take a few minutes on an H100; ``--quick``, or
``--device cpu``, sizes everything down (the CPU path in well under a minute). It needs PyTorch,
numpy, pandas, pyarrow, rich, pyyaml and the project's other dependencies but Ray (it never
imports Ray): ``docs/performance.md`` says how to carry them to a machine without them. A
section that fails is a row saying so, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import torch.nn.functional as F
import train_throughput as throughput

from maou.strict import with_overrides
from maou.trainer.config import train_config_from_dict
from maou.trainer.loop import resolve_device, train_stage
from maou.trainer.models import build_model
from maou.trainer.tensors import StageData

REPO = Path(__file__).resolve().parents[1]

#: Dense bf16 tensor-core peaks, TFLOP/s, by a piece of ``torch.cuda.get_device_name`` (first match).
PEAK_BF16_TFLOPS = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM (HBM3)
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)
#: Concurrent trials per device (full sizes; the small ones try 1 and 2: on a 2-core CPU more are
#: only slower, and each is another process to start).
CONCURRENCY = (1, 2, 4, 8)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much each section does: full on CUDA, small with ``--quick`` or on CPU."""

    #: train_stage vs bare loop, and compact vs dense: model, batch, rows, steps, repeats
    model: tuple[int, int]
    batch: int
    rows: int
    steps: int
    repeats: int
    #: MFU of the 10x128 ResNet: batches, timed steps
    mfu_batches: tuple[int, ...]
    mfu_steps: int
    #: the demo sweep: budget override (None: the spec's), eval rows override, the spec's steps run
    demo_steps: int | None
    demo_eval_rows: int | None
    demo_spec_steps: int | None
    #: concurrent trials: (name, blocks, channels, batch, steps) per model
    concurrent: tuple[tuple[str, int, int, int, int], ...]
    #: the trials at once tried
    concurrency: tuple[int, ...] = CONCURRENCY


FULL = Sizes(model=(10, 128), batch=1024, rows=65_536, steps=150, repeats=2, mfu_batches=(256, 1024), mfu_steps=30,
             demo_steps=None, demo_eval_rows=None, demo_spec_steps=None,
             concurrent=(("2x32", 2, 32, 256, 150), ("10x128", 10, 128, 1024, 40)))
SMALL = Sizes(model=(2, 32), batch=64, rows=2048, steps=12, repeats=2, mfu_batches=(4, 16), mfu_steps=2,
              demo_steps=6, demo_eval_rows=128, demo_spec_steps=1,
              concurrent=(("2x32", 2, 32, 32, 8), ("10x128", 10, 128, 4, 2)), concurrency=(1, 2))


@dataclasses.dataclass
class Row:
    check: str
    value: float | None
    unit: str
    detail: str


def _config(device: torch.device, blocks: int, channels: int, batch: int, steps: int, threads: int,
            eval_rows: int = 256) -> Any:
    return train_config_from_dict({
        "stage": 2, "model": {"arch": "resnet", "blocks": blocks, "channels": channels}, "batch_size": batch,
        "budget": {"max_steps": steps, "eval_every": steps}, "eval_rows": eval_rows, "eval_at_start": False,
        "device": str(device), "threads": threads, "amp": True})


def _fmt(value: float, digits: int = 3) -> str:
    return f"{value:,.{digits}g}" if abs(value) < 10 ** digits else f"{value:,.0f}"


# ---- sections ---------------------------------------------------------------------------------------

def framework_overhead(device: torch.device, sizes: Sizes, threads: int) -> list[Row]:
    blocks, channels = sizes.model
    config = _config(device, blocks, channels, sizes.batch, sizes.steps, threads)
    data = StageData(2, throughput.synthetic_stage2(sizes.rows), throughput.synthetic_stage2(512, seed=1))
    r = throughput.framework_vs_bare(config, data, device, sizes.repeats)
    return [Row("train_stage / bare loop", r["ratio"], "ratio",
                f"{blocks}x{channels} batch {sizes.batch}: train_stage {_fmt(r['train_stage'])} samples/s, bare loop "
                f"{_fmt(r['bare'])} (goal >= 0.95); data wait {100 * r['data_wait']:.2f}%")]


def device_peak(device: torch.device, override_tflops: float | None) -> tuple[float | None, str]:
    """FLOP/s the device can do at best, and where that number comes from (None: unknown)."""
    if override_tflops:
        return override_tflops * 1e12, f"--peak-tflops {override_tflops:g}"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for piece, tflops in PEAK_BF16_TFLOPS:
            if piece in name:
                return tflops * 1e12, f"{name} bf16 dense peak {tflops:g} TFLOP/s"
        return None, f"no known peak for {name} (give --peak-tflops)"
    size = 1024
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - started) / 4)
    flops = 2 * size ** 3 / best
    return flops, f"measured float32 matmul {flops / 1e9:,.0f} GFLOP/s on {torch.get_num_threads()} threads"


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, board: torch.Tensor, hand: torch.Tensor,
                target: torch.Tensor, amp: bool) -> None:
    with torch.autocast(board.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(board, hand)["legal_moves"]
    loss = F.binary_cross_entropy_with_logits(logits.float(), target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def mfu(device: torch.device, sizes: Sizes, threads: int, peak_tflops: float | None) -> list[Row]:
    from torch.utils.flop_counter import FlopCounterMode

    peak, source = device_peak(device, peak_tflops)
    amp = device.type == "cuda"
    rows = []
    for batch in sizes.mfu_batches:
        config = _config(device, 10, 128, batch, sizes.mfu_steps, threads)
        torch.manual_seed(0)
        model = build_model(config).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True if amp else None)
        data = throughput.synthetic_stage2(batch).to(device)
        board, hand, target = data.board, data.hand, data.targets["legal_moves"].float()
        counter = FlopCounterMode(display=False)
        with counter:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(board, hand)["legal_moves"]
            F.binary_cross_entropy_with_logits(logits.float(), target).backward()
        flops = counter.get_total_flops()
        for _ in range(2 if device.type == "cuda" else 1):  # warm-up: cudnn autotuning, allocator
            _train_step(model, optimizer, board, hand, target, amp)
        throughput.sync(device)
        started = time.perf_counter()
        for _ in range(sizes.mfu_steps):
            _train_step(model, optimizer, board, hand, target, amp)
        throughput.sync(device)
        achieved = flops * sizes.mfu_steps / (time.perf_counter() - started)
        detail = (f"{flops / batch / 1e9:.2f} GFLOP a sample forward+backward, achieved {achieved / 1e12:.3g} "
                  f"TFLOP/s{' bf16' if amp else ' float32'}; peak: {source}")
        rows.append(Row(f"MFU 10x128 batch {batch}", 100 * achieved / peak if peak else None, "% of peak", detail))
        del model, optimizer
    return rows


def compact_dense(device: torch.device, sizes: Sizes, threads: int) -> list[Row]:
    blocks, channels = sizes.model
    config = _config(device, blocks, channels, sizes.batch, sizes.steps, threads)
    rows = []
    for stage in (2, 3):
        r = throughput.compact_vs_dense(config, stage, sizes.rows, sizes.repeats)
        rows.append(Row(f"compact / dense, stage {stage}", r["ratio"], "ratio",
                        f"{blocks}x{channels} batch {sizes.batch}: mapped {_fmt(r['compact'])} samples/s, in memory "
                        f"{_fmt(r['dense'])} (goal >= 0.95); data wait {100 * r['data_wait']:.2f}%"))
    return rows


def demo_sweep(device: torch.device, sizes: Sizes, data_dir: Path | None) -> list[Row]:
    """``sweeps/demo.yaml`` on ``device`` in this process, on a temporary storage and runs folder;
    its dataset in ``data_dir`` (default: the demo's own, ``data/build/<key>``), built if missing."""
    from maou.data.build import ensure_datasets
    from maou.sweep.locate import load_spec
    from maou.sweep.run.protocol import run_sweep
    from maou.trainer.config import Budget

    spec = load_spec(REPO / "sweeps" / "demo.yaml")
    if data_dir is not None:
        spec = dataclasses.replace(spec, data=dataclasses.replace(spec.data, dir=str(data_dir.resolve())))
    base = {**spec.base, "device": str(device)}
    budget = spec.budget
    if sizes.demo_steps is not None:
        budget = Budget(max_steps=sizes.demo_steps, eval_every=max(1, sizes.demo_steps // 2))
    if sizes.demo_eval_rows is not None:
        base["eval_rows"] = sizes.demo_eval_rows
    if sizes.demo_spec_steps is not None:
        spec = dataclasses.replace(spec, steps=spec.steps[:sizes.demo_spec_steps])
    started = time.perf_counter()
    ensure_datasets(spec.data, progress=False, stages=[spec.stage])
    build_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="gpu-check-demo-") as tmp:
        spec = dataclasses.replace(spec, base=base, budget=budget, storage=f"sqlite:///{tmp}/demo.db",
                                   runs_dir=f"{tmp}/runs", results_dir=f"{tmp}/results",
                                   executor=dataclasses.replace(spec.executor, kind="local"))
        started = time.perf_counter()
        outcome = run_sweep(spec)
        wall = time.perf_counter() - started
    winner = json.dumps(outcome.carried, sort_keys=True) if outcome.carried else "(base)"
    trainings = f"{budget.max_steps} steps a training" + ("" if sizes.demo_steps is None else " (sized down)")
    return [Row("demo sweep", wall, "s", f"sweeps/demo.yaml on {device}, {trainings}, {len(outcome.decisions)} of "
                f"its steps decided, winner {winner}; dataset ready in {build_s:.1f} s (not counted)")]


# ---- concurrent trials ------------------------------------------------------------------------------

def _reset_peak_rss() -> None:
    """Start the peak RSS (VmHWM) over from the current RSS (Linux; elsewhere it stays the process's)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss() -> float:
    """Peak resident memory of this process, bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _concurrent_trial(task: dict[str, Any], barrier: Any) -> dict[str, float]:
    device = torch.device(task["device"])
    config = _config(device, task["blocks"], task["channels"], task["batch"], task["steps"], task["threads"],
                     eval_rows=64)
    data = StageData(2, throughput.synthetic_stage2(max(4 * task["batch"], 256)), throughput.synthetic_stage2(64, 1))
    train_stage(with_overrides(config, {"budget.max_steps": 2, "budget.eval_every": 2}), data)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    _reset_peak_rss()
    barrier.wait(timeout=600)  # every process trains at once
    result = train_stage(config, data)
    return {"samples_per_s": result.samples_per_s, "peak_rss": _peak_rss(),
            "peak_device": float(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else math.nan}


def _worker(rank: int, tasks: Any, results: Any, barriers: dict[tuple[str, int], Any]) -> None:
    """A spawned process: trains the tasks it is given until it gets None."""
    while True:
        task = tasks.get()
        if task is None:
            return
        barrier = barriers[(task["name"], task["k"])]
        try:
            out: dict[str, Any] = _concurrent_trial(task, barrier)
        except BaseException as error:  # noqa: BLE001 - reported in the table
            barrier.abort()  # the others stop waiting for this one
            out = {"error": f"{type(error).__name__}: {error}".splitlines()[0]}
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        results.put((rank, out))


def _result(results: Any, workers: list[Any], timeout_s: float = 600) -> dict[str, Any]:
    """The next result a worker sends; an error when a worker died (killed: out of memory) or none came."""
    import queue

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return results.get(timeout=2)[1]
        except queue.Empty:
            dead = [w for w in workers if not w.is_alive()]
            if dead:
                raise RuntimeError(f"a trial process died (exit code {dead[0].exitcode})") from None
    raise RuntimeError(f"no trial process answered in {timeout_s:.0f} s")


def concurrent_trials(device: torch.device, sizes: Sizes) -> list[Row]:
    # A fork server that imported torch and the trainer once forks every trial process: no process
    # re-imports them (8 spawned interpreters cost about 20 s of CPU on 2 cores), and none inherits
    # this process's threads or CUDA context (the fork server starts fresh and never touches the GPU).
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["__main__", "torch", "maou.trainer.loop"])
    cores = os.cpu_count() or 1
    barriers = {(name, k): context.Barrier(k) for name, *_ in sizes.concurrent for k in sizes.concurrency}
    results = context.Queue()
    queues = [context.Queue() for _ in range(max(sizes.concurrency))]
    workers = [context.Process(target=_worker, args=(rank, queues[rank], results, barriers), daemon=True)
               for rank in range(max(sizes.concurrency))]
    for worker in workers:
        worker.start()
    rows = []
    try:
        for name, blocks, channels, batch, steps in sizes.concurrent:
            for k in sizes.concurrency:
                threads = max(1, cores // k) if device.type == "cpu" else 2
                task = {"name": name, "k": k, "device": str(device), "blocks": blocks, "channels": channels,
                        "batch": batch, "steps": steps, "threads": threads}
                for rank in range(k):
                    queues[rank].put(task)
                outs = [_result(results, workers) for _ in range(k)]
                errors = [o["error"] for o in outs if "error" in o]
                if errors:
                    rows.append(Row(f"{k} concurrent {name}", None, "samples/s", f"failed: {errors[0]}"))
                    continue
                total = sum(o["samples_per_s"] for o in outs)
                rss = max(o["peak_rss"] for o in outs) / 2**20
                memory = (f"peak device memory per process {max(o['peak_device'] for o in outs) / 2**20:,.0f} MiB"
                          if device.type == "cuda" else f"{threads} thread{'s' if threads > 1 else ''} each")
                rows.append(Row(f"{k} concurrent {name}", total, "samples/s",
                                f"batch {batch}, {steps} steps each; {memory}; peak RSS per process {rss:,.0f} MiB; "
                                f"per process {', '.join(_fmt(o['samples_per_s']) for o in outs)}"))
    finally:
        for q in queues:
            q.put(None)
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.terminate()
    return rows


# ---- the table --------------------------------------------------------------------------------------

def expected_checks(sizes: Sizes) -> list[str]:
    """Every row's name, in order (the test holds the table to it)."""
    return (["train_stage / bare loop"] + [f"MFU 10x128 batch {b}" for b in sizes.mfu_batches]
            + [f"compact / dense, stage {s}" for s in (2, 3)] + ["demo sweep"]
            + [f"{k} concurrent {name}" for name, *_ in sizes.concurrent for k in sizes.concurrency])


def _section(name: str, run: Callable[[], list[Row]], checks: list[str]) -> tuple[list[Row], float, bool]:
    started = time.perf_counter()
    print(f"--- {name}", flush=True)
    try:
        rows, ok = run(), True
    except Exception as error:  # noqa: BLE001 - one failing section leaves the others' rows
        traceback.print_exc()
        reason = f"failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        rows, ok = [Row(check, None, "", reason) for check in checks], False
    seconds = time.perf_counter() - started
    print(f"--- {name}: {seconds:.1f} s", flush=True)
    return rows, seconds, ok and all(r.value is not None or r.unit == "% of peak" for r in rows)


def markdown(summary: dict[str, Any]) -> str:
    lines = [f"# GPU check: {summary['device']}", "", f"{summary['command']}; {summary['seconds']:.0f} s; "
             f"torch {summary['torch']}", "", "| check | value | unit | detail |", "|---|---:|---|---|"]
    for row in summary["rows"]:
        value = "n/a" if row["value"] is None else _fmt(row["value"], 4)
        lines.append(f"| {row['check']} | {value} | {row['unit']} | {row['detail']} |")
    return "\n".join(lines) + "\n"


def print_table(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"GPU check: {summary['device']} ({summary['seconds']:.0f} s)")
    for column, justify in (("check", "left"), ("value", "right"), ("unit", "left"), ("detail", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in summary["rows"]:
        table.add_row(row["check"], "n/a" if row["value"] is None else _fmt(row["value"], 4), row["unit"],
                      row["detail"])
    Console(width=max(160, Console().width)).print(table)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda[:N] or cpu")
    parser.add_argument("--quick", action="store_true", help="everything sized down (a smoke run)")
    parser.add_argument("--out", type=Path, help="folder for gpu-check.json and gpu-check.md")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s, for a card not in the table")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores, at most 8)")
    parser.add_argument("--data-dir", type=Path,
                        help="where the demo's dataset is built (default: the demo's own, data/build/<key>)")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    threads = args.threads or min(8, os.cpu_count() or 1)
    torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    sizes = SMALL if args.quick or device.type == "cpu" else FULL
    checks = expected_checks(sizes)
    started = time.perf_counter()
    print(f"GPU check on {device_name(device)}, {'small' if sizes is SMALL else 'full'} sizes", flush=True)
    sections: list[tuple[str, Callable[[], list[Row]], list[str]]] = [
        ("train_stage vs bare loop", lambda: framework_overhead(device, sizes, threads), checks[:1]),
        ("model FLOPs utilisation", lambda: mfu(device, sizes, threads, args.peak_tflops),
         checks[1:1 + len(sizes.mfu_batches)]),
        ("compact vs dense", lambda: compact_dense(device, sizes, threads),
         [c for c in checks if c.startswith("compact")]),
        ("demo sweep", lambda: demo_sweep(device, sizes, args.data_dir), ["demo sweep"]),
        ("concurrent trials", lambda: concurrent_trials(device, sizes), [c for c in checks if "concurrent" in c]),
    ]
    rows: list[Row] = []
    timings, ok = {}, True
    for name, run, names in sections:
        section_rows, seconds, section_ok = _section(name, run, names)
        rows += section_rows
        timings[name] = round(seconds, 1)
        ok &= section_ok
    if "ray" in sys.modules:  # a machine without Ray must run this; so must one with it
        ok = False
        rows.append(Row("ray imported", None, "", "failed: something imported ray"))
    summary = {"device": device_name(device), "command": "python bench/gpu.py " + " ".join(argv or sys.argv[1:]),
               "torch": torch.__version__, "sizes": "small" if sizes is SMALL else "full",
               "seconds": time.perf_counter() - started, "section_seconds": timings, "ok": ok,
               "rows": [dataclasses.asdict(r) for r in rows]}
    print_table(summary)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu-check.json").write_text(json.dumps(summary, indent=2) + "\n")
        (args.out / "gpu-check.md").write_text(markdown(summary))
        print(f"written: {args.out / 'gpu-check.json'}, {args.out / 'gpu-check.md'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
