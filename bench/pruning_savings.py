"""What collapse pruning saves: the reproduction sweep with and without it.

    .venv/bin/python bench/pruning_savings.py [--spec sweeps/stage3-collapse.yaml]

Runs the spec twice on temporary SQLite storages (pruning on, pruning off) and prints, per
configuration: its final value skill when run to the end (the ground truth of "collapsed"), whether
and at what share of the budget it was pruned, then trial-steps and wall time saved and the winner
of each run (they must be the same).
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

    from maou.protocol import run_sweep

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
    args = parser.parse_args()

    from maou.spec import load_spec

    spec = load_spec(args.spec)
    with tempfile.TemporaryDirectory() as tmp:
        on, trials_on, wall_on = run(spec, Path(tmp), pruning=True)
        off, trials_off, wall_off = run(spec, Path(tmp), pruning=False)

    full = {(t.user_attrs["config_key"], t.user_attrs["seed"]): t for t in trials_off}
    print(f"{'configuration':<72} {'seed':>4} {'final skill':>11} {'value std':>9} {'pruned at':>14}  reason")
    for t in sorted(trials_on, key=lambda t: t.number):
        ref = full[(t.user_attrs["config_key"], t.user_attrs["seed"])]
        final = ref.user_attrs.get("final_metrics", {})
        pruned = (f"{t.user_attrs['prune_step']} ({t.user_attrs['prune_step'] / ref.user_attrs['max_steps']:.0%})"
                  if t.state.name == "PRUNED" else "-")
        print(f"{json.dumps(t.user_attrs['overrides'], sort_keys=True):<72} {t.user_attrs['seed']:>4} "
              f"{final.get('val_value_skill', float('nan')):>11.4f} {final.get('val_value_std', float('nan')):>9.4f} "
              f"{pruned:>14}  {t.user_attrs.get('prune_reason', '')}")
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
        print(f"  {json.dumps(t.user_attrs['overrides'], sort_keys=True)}\n    {' '.join(points)}")
    steps_on = sum(t.user_attrs.get("steps_done", 0) for t in trials_on)
    steps_off = sum(t.user_attrs.get("steps_done", 0) for t in trials_off)
    print(f"\ntrial-steps: {steps_on} with pruning, {steps_off} without: "
          f"{steps_off - steps_on} saved ({1 - steps_on / steps_off:.1%})")
    print(f"wall time:   {wall_on:.1f}s with pruning, {wall_off:.1f}s without: "
          f"{wall_off - wall_on:.1f}s saved ({1 - wall_on / wall_off:.1%})")
    print(f"winner with pruning:    {json.dumps(on.carried, sort_keys=True)}")
    print(f"winner without pruning: {json.dumps(off.carried, sort_keys=True)}")
    print("same winner" if on.carried == off.carried else "DIFFERENT WINNERS")
    return 0 if on.carried == off.carried else 1


if __name__ == "__main__":
    sys.exit(main())
