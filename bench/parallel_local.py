"""Several trials at once on one machine without Ray: the same sweep one at a time (in process) and
``k`` at once (the local executor's worker pool), on fresh storages.

Each setting runs in a fresh driver process (so its peak memory is its own) and prints its wall
time, trainings per second and the peak RSS of the driver and of each worker; then the throughput
ratios and whether the decisions (every trial's state and value, every step's winner) are identical.
Threads: the same torch threads per trial decide identically bit for bit; a different thread count
may change floating-point sums, so ``k`` at once at ``--threads`` is compared with one at a time at
``--threads`` for identity, and its throughput also with one at a time at ``--seq-threads`` (the
spec's own, by default).

    python bench/parallel_local.py                       # sweeps/demo.yaml, its first two steps, k=2
    python bench/parallel_local.py --steps 1 --max-steps 50   # a quick look
    python bench/parallel_local.py --spec sweeps/smoke.yaml --steps 3

Storage, checkpoints and datasets go to a temporary folder: studies/ and runs/ stay untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import yaml  # noqa: E402


def spec_data(args: argparse.Namespace, tmp: Path, tag: str, threads: int) -> dict[str, Any]:
    data = yaml.safe_load((REPO / args.spec).read_text())
    data["name"] = f"{data['name']}-{tag}"
    data["steps"] = data["steps"][: args.steps]
    data["base"] = {**data.get("base", {}), "threads": threads}
    if args.max_steps:
        data["budget"] = {**data.get("budget", {}), "max_steps": args.max_steps,
                          "eval_every": max(1, min(data.get("budget", {}).get("eval_every", 50), args.max_steps))}
    if data.get("stage", 1) != 1 or "data" in data:
        data["data"] = {**data.get("data", {}), "games": [str(REPO / "data" / "games")], "dir": str(tmp / "data")}
    data["storage"] = f"sqlite:///{tmp}/{tag}.db"
    data["runs_dir"] = str(tmp / "runs" / tag)
    return data


def hwm_kib(pid: int) -> int:
    """A process's peak resident memory (VmHWM), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def outcome(spec: Any) -> dict[str, Any]:
    """Every finished trial's (state, value) by (step, configuration, seed), and each step's winner."""
    import optuna

    trials, winners = {}, {}
    for index in range(len(spec.steps)):
        study = optuna.load_study(study_name=spec.study_name(index), storage=spec.storage_url)
        winners[spec.steps[index].name] = study.user_attrs["decision"]["winner_key"]
        for t in study.get_trials():
            if t.state.name in ("COMPLETE", "PRUNED"):
                trials[f"{spec.steps[index].name}|{t.user_attrs['config_key']}|{t.user_attrs['seed']}"] = \
                    [t.state.name, t.value]
    return {"trials": trials, "winners": winners}


def one(args: argparse.Namespace) -> int:
    """One setting in this process: ``--one TAG`` with ``--k`` trials at once and ``--threads``."""
    from maou.strict import from_dict
    from maou.sweep.run.executors.local import LocalExecutor
    from maou.sweep.run.executors.pool import PoolExecutor
    from maou.sweep.run.protocol import run_sweep
    from maou.sweep.spec import SweepSpec

    tmp = Path(args.tmp)
    spec = from_dict(SweepSpec, spec_data(args, tmp, args.one, args.threads))
    executor: Any = LocalExecutor() if args.k == 1 else PoolExecutor(args.k)
    started = time.perf_counter()
    run_sweep(spec, executor=executor)
    wall = time.perf_counter() - started
    workers = [hwm_kib(pid) for pid in executor.pids()] if args.k > 1 else []
    if args.k > 1:
        executor.close()
    result = outcome(spec)
    trainings = sum(1 for key in result["trials"])
    reused = 0
    import optuna

    for index in range(len(spec.steps)):
        study = optuna.load_study(study_name=spec.study_name(index), storage=spec.storage_url)
        reused += sum(1 for t in study.get_trials() if t.user_attrs.get("reused_from"))
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"wall": wall, "trainings": trainings - reused, "outcome": result,
                      "driver_kib": me.ru_maxrss, "workers_kib": workers, "driver_cpu": me.ru_utime + me.ru_stime,
                      "workers_cpu": children.ru_utime + children.ru_stime}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="sweeps/demo.yaml")
    parser.add_argument("--steps", type=int, default=2, help="the spec's first STEPS steps")
    parser.add_argument("--max-steps", type=int, default=None, help="override the spec's budget.max_steps")
    parser.add_argument("--k", type=int, default=2, help="trials at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each trial at once")
    parser.add_argument("--seq-threads", type=int, default=None,
                        help="torch threads of one at a time, beside --threads (default: the spec's own)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the settings this many times, interleaved (a shared machine's load then "
                             "weighs on each alike); the best of each is compared")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args)

    spec = yaml.safe_load((REPO / args.spec).read_text())
    seq_threads = args.seq_threads or int(spec.get("base", {}).get("threads", 1))
    pooled_tag, same_tag = f"k{args.k}-t{args.threads}", f"seq-t{args.threads}"
    settings = [(same_tag, 1, args.threads), (pooled_tag, args.k, args.threads)]
    if seq_threads != args.threads:
        settings.insert(0, (f"seq-t{seq_threads}", 1, seq_threads))
    with tempfile.TemporaryDirectory(prefix="maou-pool-") as name:
        tmp = Path(name)
        from maou.data.resolve import dataset_of
        from maou.strict import from_dict
        from maou.sweep.spec import SweepSpec

        first = from_dict(SweepSpec, spec_data(args, tmp, "build", args.threads))
        started = time.perf_counter()
        dataset_of(first.base_config())  # built once, outside the timings
        print(f"sweep {args.spec}: steps {[s.name for s in first.steps]}, seeds {list(first.seed_list)}, "
              f"max_steps {first.budget.max_steps}, {len(os.sched_getaffinity(0))} cores; "
              f"datasets ready in {time.perf_counter() - started:.1f}s")
        results: dict[str, dict[str, Any]] = {}
        for repeat in range(args.repeats):
            for tag, k, threads in settings:
                run = f"{tag}-{repeat}"
                command = [sys.executable, __file__, "--one", run, "--tmp", str(tmp), "--k", str(k),
                           "--threads", str(threads), "--spec", args.spec, "--steps", str(args.steps)]
                if args.max_steps:
                    command += ["--max-steps", str(args.max_steps)]
                load = os.getloadavg()[0]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    print(done.stdout[-2000:], done.stderr[-4000:])
                    return 1
                r = json.loads(done.stdout.strip().splitlines()[-1])
                if tag not in results or r["wall"] < results[tag]["wall"]:
                    results[tag] = r
                workers = ", ".join(f"{kib / 1024:.0f}" for kib in r["workers_kib"]) or "-"
                cpu = (r["driver_cpu"] + r["workers_cpu"]) / r["trainings"]
                print(f"{tag:>8}: {k} at once, threads {threads}: {r['wall']:7.1f}s wall, {r['trainings']} trainings, "
                      f"{r['trainings'] / r['wall']:.3f} trainings/s; peak RSS driver {r['driver_kib'] / 1024:.0f} "
                      f"MiB, workers {workers} MiB; CPU s a training {cpu:.1f} (driver {r['driver_cpu']:.0f} s); "
                      f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after", flush=True)
        pooled, same = results[pooled_tag], results[same_tag]
        rate = {tag: r["trainings"] / r["wall"] for tag, r in results.items()}
        fastest = max((tag for tag in results if tag.startswith("seq")), key=lambda tag: rate[tag])
        print()
        for tag in results:
            if tag.startswith("seq"):
                print(f"throughput {pooled_tag} / {tag}: {rate[pooled_tag] / rate[tag]:.2f}x"
                      + ("  (the fastest one at a time)" if tag == fastest else ""))
        print(f"decisions identical to one at a time at threads {args.threads}: "
              f"{pooled['outcome'] == same['outcome']}")
        for tag in results:
            if tag.startswith("seq") and tag != same_tag:
                other = results[tag]["outcome"]
                print(f"winners identical to {tag}: {pooled['outcome']['winners'] == other['winners']}"
                      f" (values: {pooled['outcome']['trials'] == other['trials']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
