"""bench/search_cost.py: an exhaustive sweep replayed under racing stops the clearly worse challenger,
keeps the recorded decision and trains less; ``--quick`` runs a tiny real sweep both ways."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import FakeTrainer
from optuna.storages import InMemoryStorage
from sweep_helpers import bench_module

from maou.strict import from_dict
from maou.sweep.identity import ConfigKey
from maou.sweep.run.executors.local import LocalExecutor
from maou.sweep.run.protocol import run_sweep
from maou.sweep.run.racing import RACING
from maou.sweep.spec import Racing, SweepSpec

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench" / "search_cost.py"
WORSE, BETTER, CLOSE = (ConfigKey.of({"optim.lr": v}) for v in (1e-5, 0.01, 0.002))


def _bench():
    return bench_module("search_cost")


def score(config) -> float:
    return {1e-5: 0.70, 0.002: 0.901, 0.01: 0.95}.get(config.optim.lr, 0.90)


def recorded(tmp_path: Path, racing: bool = False, seeds: int = 3) -> InMemoryStorage:
    """A two-step sweep (racing off: exhaustive): a baseline, then a grid with a clearly worse, a
    clearly better and an indistinguishable challenger."""
    storage = InMemoryStorage()
    spec = from_dict(SweepSpec, {
        "name": "cost", "stage": 1, "seeds": seeds, "storage": "memory:", "runs_dir": str(tmp_path / "runs"),
        "racing": {"enabled": racing}, "budget": {"max_steps": 40, "eval_every": 10},
        "steps": [{"name": "baseline"}, {"name": "lr", "grid": {"optim.lr": [1e-5, 0.002, 0.01]}}]})
    run_sweep(spec, executor=LocalExecutor(FakeTrainer(score)), storage=storage)
    return storage


def test_the_replay_stops_the_worse_challenger_keeps_the_decision_and_trains_less(tmp_path):
    bench = _bench()
    baseline, lr = bench.replay_storage("memory:", Racing(), recorded(tmp_path), together=False)
    assert baseline.main.fraction == 1.0 and baseline.unchanged and baseline.configurations == 1
    assert lr.configurations == 4 and lr.reproduced and lr.unchanged and not lr.note
    race = lr.main
    assert race.racing.adopted and race.racing.winner_key == BETTER
    # one at a time: seed 0 runs whole, seed 1 stops at its first evaluation from 1/3 on, seed 2 never starts
    assert [(k, seed, step) for k, seed, step, _ in race.stops] == [(WORSE, 1, 20)]
    assert race.skipped == [(WORSE, 2)]
    assert race.raced == [WORSE]
    worse = next(s for s in race.racing.stats if s.key == WORSE)
    assert worse.pruned == 2 and worse.raced_at == 20 and set(worse.prune_reasons) == {RACING}
    assert race.racing.as_attrs()["holm_count"] == 3  # the raced one counts, at p = 1
    # the carried trials were copied from the baseline step: no compute either way
    assert race.trainings_exhaustive == 9 and race.trainings_racing == 8
    assert race.samples_exhaustive == 9 * 40 * 64
    assert race.samples_racing == (8 * 40 - 20) * 64 and race.fraction < 1
    assert race.floor == pytest.approx((3 + 3 * 0.5) / 9)  # seed 0 whole, seed 1 to its first chance
    assert len(lr.whatifs) == 4 and all(w.unchanged for w in lr.whatifs)
    out = io.StringIO()
    bench.print_replay([baseline, lr], Racing(), out)
    table = out.getvalue()
    assert "02-lr" in table and "raced out: optim.lr=1e-05 seed 1 at step 20 (50%), 1 later seed skipped" in table
    assert "4 of 4" in table


def test_seeds_side_by_side_stop_together_and_none_runs_whole(tmp_path):
    """Trials at once train a configuration's seeds side by side: at the first evaluation from 1/3 on
    where two seeds have reached it, the worse one is raced, and every seed stops at its next
    evaluation; none of its seeds runs whole."""
    _, lr = _bench().replay_storage("memory:", Racing(), recorded(tmp_path), together=True)
    race = lr.main
    assert lr.unchanged and race.racing.winner_key == BETTER and race.skipped == []
    # seed 0 reported 50 % alone (one seed: no verdict), seed 1's 50 % raced it, seed 2 stops at its 50 %,
    # seed 0 at its next evaluation (75 %)
    assert [(k, seed, step) for k, seed, step, _ in race.stops] == [(WORSE, 0, 30), (WORSE, 1, 20), (WORSE, 2, 20)]
    assert race.samples_racing == (9 * 40 - 3 * 40 + 30 + 20 + 20) * 64
    assert race.floor == pytest.approx(20 / 40)  # every challenger's seeds to their first chance
    assert all(w.unchanged for w in lr.whatifs)


def test_the_replay_follows_the_racing_settings_and_skips_racing_runs(tmp_path):
    bench = _bench()
    storage = recorded(tmp_path, seeds=2)
    _, lr = bench.replay_storage("memory:", Racing(start_fraction=1.0), storage, together=False)
    assert [(k, seed, step) for k, seed, step, _ in lr.main.stops] == [(WORSE, 1, 40)]  # only at the end
    assert lr.main.skipped == [] and lr.unchanged
    _, strict = bench.replay_storage("memory:", Racing(sigmas=50.0), storage)
    assert strict.main.stops == [] and strict.main.fraction == 1.0
    _, on = bench.replay_storage("memory:", Racing(), recorded(tmp_path, racing=True))
    assert on.main is None and on.note.startswith("not exhaustive: 2 trials raced")


@pytest.mark.slow
def test_quick_runs_a_real_sweep_both_ways_and_replays_it(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "live: quick, racing off (exhaustive) and on" in done.stdout
    assert "replay of sweep 'quick'" in done.stdout and "every target met" in done.stdout
