"""Parallel scaling: the smoke sweep run sequentially in-process against Ray Tune with N concurrent
single-thread trials, on CPU.

Prints each run's wall time, the speedup, and Ray's fixed cost per trial, measured two ways: the
mean wall time of a Ray trial minus that of a local trial (Optuna's ``wall_time_s``, start to
finish as the driver sees it), and a sweep of the same shape whose trainer does nothing (pure
orchestration: Optuna + Tune + actor round trips). ``ray.init`` is timed on its own.

    python bench/parallel_scaling.py                  # sweeps/smoke.yaml (Stage 2, data/games)
    python bench/parallel_scaling.py --stage1         # a Stage 1 variant (no game data needed)
    python bench/parallel_scaling.py --max-steps 600  # longer trials: where Ray starts to pay off

Storage, checkpoints and datasets go to a temporary folder: studies/ and runs/ stay untouched.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import yaml  # noqa: E402

from maou.strict import from_dict  # noqa: E402
from maou.sweep.spec import SweepSpec  # noqa: E402
from maou.trainer.result import TrainResult  # noqa: E402

STAGE1 = {
    "name": "scaling-stage1", "stage": 1, "description": "Stage 1 stand-in for the smoke sweep",
    "base": {"model": {"arch": "resnet", "blocks": 2, "channels": 16},
             "optim": {"name": "adamw", "lr": 0.003, "warmup_fraction": 0.1}, "batch_size": 64, "threads": 1},
    "budget": {"max_steps": 150, "eval_every": 50}, "seeds": 2,
    "steps": [{"name": "baseline"}, {"name": "lr", "grid": {"optim.lr": [0.001, 0.01]}},
              {"name": "batch", "grid": {"batch_size": [32, 128]}}],
}


def noop_trainer(config, report, checkpoint_dir, dataset=None) -> TrainResult:
    """No training at all: one evaluation, then the result (measures orchestration alone)."""
    metrics = {"val_f1": 0.5, "val_accuracy": 0.5, "train_loss": 1.0, "val_loss": 1.0}
    report(1, metrics)
    return TrainResult(stage=config.stage, steps_done=1, max_steps=1, stop=None, final_metrics=metrics,
                       best_metrics=metrics, best_step=1, history=[(1, metrics)])


def load(args, tmp: Path, tag: str) -> SweepSpec:
    games = REPO / "data" / "games"
    has_games = games.is_dir() and any(games.iterdir())
    if args.stage1 or not has_games:
        if not args.stage1:
            print(f"note: no game records under {games}; running the Stage 1 variant")
        data = dict(STAGE1)
    else:
        data = yaml.safe_load((REPO / args.spec).read_text())
        data["data"] = {**data.get("data", {}), "games": [str(games)], "dir": str(tmp / "data")}
    if args.max_steps:
        data["budget"] = {**data.get("budget", {}), "max_steps": args.max_steps,
                          "eval_every": max(1, args.max_steps // 3)}
    data["storage"] = f"sqlite:///{tmp}/{tag}.db"
    data["runs_dir"] = str(tmp / "runs" / tag)
    data["executor"] = {"kind": "ray" if tag != "local" else "local", "cpus_per_trial": 1,
                        "max_concurrent": args.concurrent, "max_retries": 0}
    return from_dict(SweepSpec, data)


def trial_walls(spec: SweepSpec) -> list[float]:
    import optuna

    walls = []
    for index in range(len(spec.steps)):
        study = optuna.load_study(study_name=spec.study_name(index), storage=spec.storage_url)
        walls += [t.user_attrs["wall_time_s"] for t in study.get_trials()
                  if "wall_time_s" in t.user_attrs and not t.user_attrs.get("reused_from")]
    return walls


def timed_sweep(spec: SweepSpec, executor) -> tuple[float, list[float]]:
    from maou.sweep.run.protocol import run_sweep

    started = time.perf_counter()
    run_sweep(spec, executor=executor)
    return time.perf_counter() - started, trial_walls(spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="sweeps/smoke.yaml", help="a Stage 2/3 spec using data/games")
    parser.add_argument("--stage1", action="store_true", help="run the Stage 1 variant")
    parser.add_argument("--concurrent", type=int, default=2, help="concurrent Ray trials (1 CPU each)")
    parser.add_argument("--max-steps", type=int, default=None, help="override the spec's budget.max_steps")
    args = parser.parse_args()

    from maou.data.resolve import dataset_of
    from maou.sweep.run.executors.local import LocalExecutor

    with tempfile.TemporaryDirectory(prefix="maou-scaling-") as name:
        tmp = Path(name)
        local = load(args, tmp, "local")
        print(f"sweep {local.name}: stage {local.stage}, steps {[s.name for s in local.steps]}, "
              f"seeds {list(local.seed_list)}, max_steps {local.budget.max_steps}, {os.cpu_count()} CPUs")
        started = time.perf_counter()
        dataset_of(local.base_config())  # datasets built once, outside the timings
        print(f"datasets ready in {time.perf_counter() - started:.1f}s")

        local_wall, local_trials = timed_sweep(local, LocalExecutor())
        print(f"local, sequential:  {local_wall:7.1f}s wall, {len(local_trials)} trials, "
              f"{statistics.fmean(local_trials):.2f}s per trial")

        from maou.sweep.run.executors.ray import RayExecutor, init_ray

        remote = load(args, tmp, "ray")
        started = time.perf_counter()
        init_ray(remote.executor)
        init_wall = time.perf_counter() - started
        print(f"ray.init:           {init_wall:7.1f}s (once per process, not in the sweep timings)")
        ray_wall, ray_trials = timed_sweep(remote, RayExecutor(remote.executor))
        print(f"ray, {args.concurrent} concurrent:    {ray_wall:7.1f}s wall, {len(ray_trials)} trials, "
              f"{statistics.fmean(ray_trials):.2f}s per trial (start to finish, concurrent)")

        noop = dataclasses.replace(load(args, tmp, "noop"), name=f"{local.name}-noop")
        noop_wall, noop_trials = timed_sweep(noop, RayExecutor(noop.executor, train=noop_trainer))

        print()
        print(f"speedup (local wall / ray wall):           {local_wall / ray_wall:5.2f}x "
              f"(ideal {min(args.concurrent, os.cpu_count() or 1)}x)")
        print(f"ray wall incl. ray.init:                   {ray_wall + init_wall:7.1f}s "
              f"-> {local_wall / (ray_wall + init_wall):.2f}x")
        print(f"ray trial minus local trial (mean):        "
              f"{statistics.fmean(ray_trials) - statistics.fmean(local_trials):+.2f}s per trial")
        print(f"no-op trainer on ray: {noop_wall:.1f}s for {len(noop_trials)} trials in {len(noop.steps)} steps "
              f"= {noop_wall / len(noop_trials):.2f}s per trial, "
              f"{statistics.fmean(noop_trials):.2f}s mean trial start-to-finish")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
