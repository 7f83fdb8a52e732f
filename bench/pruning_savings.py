"""What collapse pruning saves: the reproduction sweep with and without it.

    .venv/bin/python bench/pruning_savings.py [--spec sweeps/stage3-collapse.yaml]

Runs the spec twice on temporary SQLite storages (pruning on, pruning off) and prints, per
configuration: its final value skill and spread when run to the end (the ground truth), whether and
at what share of the budget it was pruned, the value skill curves, then trial-steps and wall time
saved and the winner of each run.

Ground truth: a configuration *collapsed* when, run to the end without pruning, its value head
ends as a constant with no skill (final ``val_value_skill <= 0.01`` and prediction std below 0.1 x
the label std: the report's "value head predicting the label mean"). Exit status 1 when a collapsed
configuration was not pruned within ``--within`` of its budget, a healthy one was pruned, or the
winners differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run(spec, storage_dir: Path, pruning: bool):
    import optuna

    from maou.sweep.run.protocol import run_sweep

    spec = dataclasses.replace(spec, pruning=dataclasses.replace(spec.pruning, enabled=pruning),
                               storage=f"sqlite:///{storage_dir}/{'on' if pruning else 'off'}.db",
                               runs_dir=str(storage_dir / ("runs-on" if pruning else "runs-off")))
    started = time.perf_counter()
    outcome = run_sweep(spec)
    wall = time.perf_counter() - started
    trials = [t for name in outcome.study_names
              for t in optuna.load_study(study_name=name, storage=spec.storage_url).get_trials()]
    return outcome, trials, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(REPO / "sweeps" / "stage3-collapse.yaml"))
    parser.add_argument("--within", type=float, default=0.15, help="share of the budget a collapse must be cut by")
    args = parser.parse_args()

    from maou.sweep.locate import load_spec
    from maou.sweep.run.pruning import ValueCollapseDetector

    spec = load_spec(args.spec)
    truth = ValueCollapseDetector()  # the default value-collapse thresholds define "collapsed", whatever the spec tunes
    with tempfile.TemporaryDirectory() as tmp:
        on, trials_on, wall_on = run(spec, Path(tmp), pruning=True)
        off, trials_off, wall_off = run(spec, Path(tmp), pruning=False)

    full = {(t.user_attrs["config_key"], t.user_attrs["seed"]): t for t in trials_off}
    problems = []
    print(f"{'configuration':<110} {'seed':>4} {'final skill':>11} {'std/label':>9} {'truth':>9} "
          f"{'pruned at':>11}  reason")
    for t in sorted(trials_on, key=lambda t: t.number):
        ref = full[(t.user_attrs["config_key"], t.user_attrs["seed"])]
        final = ref.user_attrs.get("final_metrics", {})
        skill, std = final.get("val_value_skill", float("nan")), final.get("val_value_std", float("nan"))
        ratio = std / final.get("val_value_label_std", float("nan"))
        collapsed = skill <= truth.max_skill and ratio < truth.std_ratio
        share = t.user_attrs["prune_step"] / ref.user_attrs["max_steps"] if t.state.name == "PRUNED" else None
        config = t.user_attrs["config_key"]
        if collapsed and (share is None or share > args.within):
            problems.append(f"collapsed but not pruned within {args.within:.0%}: {config}")
        if not collapsed and share is not None:
            problems.append(f"healthy but pruned ({t.user_attrs.get('prune_reason')}): {config}")
        pruned = f"{t.user_attrs['prune_step']} ({share:.0%})" if share is not None else "-"
        print(f"{config:<110} {t.user_attrs['seed']:>4} {skill:>11.4f} {ratio:>9.3f} "
              f"{'collapsed' if collapsed else 'healthy':>9} {pruned:>11}  {t.user_attrs.get('prune_reason', '')}")
        if share is not None:
            print(f"{'':>8}{t.user_attrs.get('prune_detail', '')}")
    print("\nvalue skill curves (run to the end, without pruning; | marks where pruning stopped it):")
    for t in sorted(trials_on, key=lambda t: t.number):
        ref = full[(t.user_attrs["config_key"], t.user_attrs["seed"])]
        curves = ref.user_attrs.get("curves", {})
        cut = t.user_attrs.get("prune_step")
        points = []
        for step, skill in zip(curves.get("step", []), curves.get("val_value_skill", [])):
            points.append(f"{skill:+.3f}")
            if cut is not None and step == cut:
                points.append("|")
        print(f"  {t.user_attrs['config_key']}\n    {' '.join(points)}")
    steps_on = sum(t.user_attrs.get("steps_done", 0) for t in trials_on)
    steps_off = sum(t.user_attrs.get("steps_done", 0) for t in trials_off)
    print(f"\ntrial-steps: {steps_on} with pruning, {steps_off} without: "
          f"{steps_off - steps_on} saved ({1 - steps_on / steps_off:.1%})")
    print(f"wall time:   {wall_on:.1f}s with pruning, {wall_off:.1f}s without: "
          f"{wall_off - wall_on:.1f}s saved ({1 - wall_on / wall_off:.1%})")
    print(f"winner with pruning:    {json.dumps(on.carried, sort_keys=True)}")
    print(f"winner without pruning: {json.dumps(off.carried, sort_keys=True)}")
    print("same winner" if on.carried == off.carried else "DIFFERENT WINNERS")
    if on.carried != off.carried:
        problems.append("the winners differ")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
