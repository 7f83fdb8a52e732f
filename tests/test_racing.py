"""Racing: challengers stop once significantly worse than the carried configuration, their unstarted
seeds are not run, the decision is the exhaustive one, and Holm counts every challenger that started."""

from __future__ import annotations

import math

import optuna
import pytest
from fakes import FakeTrainer

from maou.strict import from_dict
from maou.sweep.identity import ConfigKey
from maou.sweep.records import read_step
from maou.sweep.run.decision import ConfigStats, decide
from maou.sweep.run.executors.local import LocalExecutor
from maou.sweep.run.protocol import run_sweep
from maou.sweep.run.racing import RACING, Racer, race, value_at
from maou.sweep.spec import Objective, Racing, Selection, SweepSpec

CARRIED, WORSE, CLOSE = ConfigKey(), ConfigKey.of({"optim.lr": 1e-5}), ConfigKey.of({"optim.lr": 0.002})


def test_race_stops_only_a_significantly_worse_challenger():
    carried = {0: 0.50, 1: 0.52, 2: 0.48}
    assert race({0: 0.40, 1: 0.43, 2: 0.37}, carried, +1.0, 1.0, 0.5).gain == pytest.approx(-0.1)
    assert race({0: 0.49, 1: 0.53, 2: 0.47}, carried, +1.0, 1.0, 0.5) is None  # within the noise
    assert race({0: 0.60, 1: 0.62, 2: 0.58}, carried, -1.0, 1.0, 0.5) is not None  # lower is better
    assert race({0: 0.10}, {0: 0.90}, +1.0, 1.0, 0.5) is None  # one seed measures no noise: never stopped


def test_curves_are_compared_at_the_same_share_of_the_budget():
    curve = [(0.25, 0.2), (0.5, 0.4), (1.0, 0.6)]
    assert value_at(curve, 0.5) == 0.4 and value_at(curve, 0.75) == pytest.approx(0.5)
    assert value_at(curve[:2], 0.75) is None  # not that far yet
    racer = Racer(Racing(start_fraction=0.5), CARRIED, +1.0)
    for seed, (mine, theirs) in enumerate(((0.30, 0.50), (0.31, 0.52), (0.29, 0.51))):
        racer.record(CARRIED, seed, 50, 100, theirs)  # 100 steps a run
        racer.record(WORSE, seed, 5, 20, mine * 0.5)  # 20 steps a run (a larger batch): 25 %
        assert racer.check(WORSE, 5, 20) is None  # before the start fraction
        racer.record(WORSE, seed, 20, 20, mine)  # the end of its budget: compared at 100 %
    assert racer.check(WORSE, 20, 20) is None  # the carried runs have not reached 100 % yet
    for seed in range(3):
        racer.record(CARRIED, seed, 100, 100, 0.6)
    stop = racer.check(WORSE, 20, 20)
    assert stop is not None and stop.reason == RACING and "over 3 seeds" in stop.detail
    assert racer.check(CARRIED, 100, 100) is None  # the carried configuration never stops
    assert racer.skip_detail(WORSE).startswith("not started: worse than the carried configuration")


def score(config) -> float:
    return {1e-5: 0.70, 0.002: 0.901}.get(config.optim.lr, 0.90)


def spec_of(racing: bool, seeds: int = 3, **extra) -> SweepSpec:
    return from_dict(SweepSpec, {
        "name": "race", "stage": 1, "seeds": seeds, "storage": "memory:", "racing": {"enabled": racing},
        "budget": {"max_steps": 40, "eval_every": 10},
        "steps": [{"name": "baseline"}, {"name": "lr", "grid": {"optim.lr": [1e-5, 0.002, 0.01]}}], **extra})


def run(spec):
    from optuna.storages import InMemoryStorage

    storage = InMemoryStorage()
    trainer = FakeTrainer(lambda c: score(c) + (0.05 if c.optim.lr == 0.01 else 0.0))
    outcome = run_sweep(spec, executor=LocalExecutor(trainer), storage=storage)
    return outcome, read_step(optuna.load_study(study_name="race/02-lr", storage=storage), 1), trainer


def test_a_raced_challenger_stops_its_unstarted_seeds_are_not_run_and_the_decision_is_exhaustive():
    raced, step, trainer = run(spec_of(True))
    exhaustive, _, full = run(spec_of(False))
    assert raced.carried == exhaustive.carried == {"optim.lr": 0.01}
    worse = step.trials_of(WORSE)
    assert [t.state.name for t in worse] == ["COMPLETE", "PRUNED", "PRUNED"]  # one at a time: seed 0 ran whole
    stopped, skipped = worse[1], worse[2]
    assert stopped.prune_reason == skipped.prune_reason == RACING
    assert stopped.prune_step == 20 and "at 50% of the budget" in stopped.prune_detail  # from 1/3 on
    assert skipped.prune_step == 0 and skipped.prune_detail.startswith("not started:")
    assert skipped.steps_done == 0 and len(trainer.calls) < len(full.calls)
    close = step.trials_of(CLOSE)  # within the noise: never stopped
    assert [t.state.name for t in close] == ["COMPLETE"] * 3
    order = [(t.key, t.seed) for t in sorted(step.trials, key=lambda t: t.number) if not t.reused]
    keys = list(dict.fromkeys(k for k, _ in order))
    assert order == [(k, seed) for k in keys for seed in (0, 1, 2) if (k, seed) in order]  # seeds side by side
    decision = raced.decisions[1].as_attrs()
    assert decision["holm_count"] == 3 and decision["holm_stopped_at_p1"] == [WORSE.overrides]
    assert next(e for e in decision["leaderboard"] if e["config"] == WORSE.overrides)["raced"] == 20


def test_trials_at_once_race_a_configurations_seeds_side_by_side_so_none_runs_whole(tmp_path):
    """Three trials at once (worker processes), three seeds: a challenger's seeds train together, so
    the race compares them at every evaluation and stops them all; one at a time, its first seed
    runs whole. The decision is the same."""
    from fakes import Lockstep, one_lr_better_one_worse
    from optuna.storages import InMemoryStorage

    from maou.sweep.run.executors.pool import PoolExecutor

    storage = InMemoryStorage()
    with PoolExecutor(3, train=Lockstep(one_lr_better_one_worse, tmp_path, seeds=(0, 1, 2))) as pool:
        outcome = run_sweep(spec_of(True), executor=pool, storage=storage)
    step = read_step(optuna.load_study(study_name="race/02-lr", storage=storage), 1)
    one_at_a_time, sequential, _ = run(spec_of(True))
    assert outcome.carried == one_at_a_time.carried == {"optim.lr": 0.01}
    worse = step.trials_of(WORSE)
    assert [t.state.name for t in worse] == ["PRUNED"] * 3 and {t.prune_reason for t in worse} == {RACING}
    assert all(0 < t.steps_done < 40 for t in worse)  # every seed stopped while training
    assert [t.state.name for t in sequential.trials_of(WORSE)] == ["COMPLETE", "PRUNED", "PRUNED"]
    assert [t.state.name for t in step.trials_of(CLOSE)] == ["COMPLETE"] * 3


def test_a_stopped_challenger_counts_in_holm_at_p_one():
    """Two challengers: one significant at a lone comparison's level, one stopped. Dropping the
    stopped one would adopt; counted at p = 1 it tightens the level and the step keeps its carried one."""
    carried = ConfigStats(CARRIED, values={0: 0.500, 1: 0.510, 2: 0.490, 3: 0.505})
    better = ConfigStats(ConfigKey.of({"optim.lr": 0.01}), values={0: 0.520, 1: 0.521, 2: 0.513, 3: 0.512})
    stopped = ConfigStats(WORSE, values={0: 0.3}, pruned=3, prune_reasons=[RACING] * 3)
    objective, selection = Objective("val_accuracy", "maximize"), Selection(noise_sigmas=2.0)
    alone = decide({CARRIED: carried, better.key: better}, CARRIED, objective, selection)
    counted = decide({CARRIED: carried, better.key: better, WORSE: stopped}, CARRIED, objective, selection)
    (c,) = alone.comparisons
    assert alone.adopted and c.level == pytest.approx(1 - 0.97725, rel=1e-3)
    assert not counted.adopted and counted.comparisons[0].level == pytest.approx(c.level / 2)
    assert counted.as_attrs()["holm_stopped_at_p1"] == [WORSE.overrides]
    assert math.isclose(counted.comparisons[0].test.p, c.test.p)


def test_racing_off_runs_every_trial_to_the_end():
    _, step, _ = run(spec_of(False))
    assert all(t.state.name == "COMPLETE" for t in step.trials)


def test_adaptive_seeds_go_to_undecided_challengers_until_the_step_decides():
    """A challenger better by about one seed's noise: two seeds cannot tell; with ``max_seeds`` the
    step adds seeds, one round at a time, to the challengers still in contention (the clearly worse
    one gets none), and decides."""
    def slightly(config) -> float:
        return {1e-5: 0.70, 0.01: 0.915}.get(config.optim.lr, 0.90)

    def run_with(max_seeds):
        from optuna.storages import InMemoryStorage

        spec = from_dict(SweepSpec, {
            "name": "adapt", "stage": 1, "seeds": 2, "storage": "memory:", "selection": {"noise_sigmas": 2.0},
            "racing": {"max_seeds": max_seeds}, "budget": {"max_steps": 40, "eval_every": 10},
            "steps": [{"name": "baseline"}, {"name": "lr", "grid": {"optim.lr": [1e-5, 0.01]}}]})
        trainer = FakeTrainer(slightly, noise=0.01)
        outcome = run_sweep(spec, executor=LocalExecutor(trainer), storage=InMemoryStorage())
        return outcome.decisions[1], trainer

    fixed, fixed_trainer = run_with(None)
    adaptive, adaptive_trainer = run_with(10)
    assert not fixed.adopted  # two seeds: the gain is inside the noise
    assert adaptive.adopted and adaptive.winner_key == ConfigKey.of({"optim.lr": 0.01})
    added = adaptive.as_attrs()["seeds_added"]
    assert added["rounds"] and all(r["configs"] == [{"optim.lr": 0.01}] for r in added["rounds"])
    assert added["seeds"][ConfigKey.of({"optim.lr": 0.01}).text] == 2 + len(added["rounds"])
    assert added["seeds"][WORSE.text] <= 2  # raced out or ruled out: no seed added
    assert len(adaptive_trainer.calls) <= len(fixed_trainer.calls) + 2 * len(added["rounds"])


def test_a_challenger_with_a_pruned_seed_cannot_win_so_its_other_seeds_do_not_run():
    """Seed 0 of lr 0.002 goes NaN (pruned): the configuration enters Holm's count at p = 1 whatever
    its other seeds do, so with racing they are not started; with racing off they run."""
    def nan_first_seed(config) -> bool:
        return config.optim.lr == 0.002 and config.seed == 0

    def run_with(racing: bool):
        from optuna.storages import InMemoryStorage

        storage = InMemoryStorage()
        trainer = FakeTrainer(lambda c: score(c) + (0.05 if c.optim.lr == 0.01 else 0.0), nan_when=nan_first_seed)
        outcome = run_sweep(spec_of(racing), executor=LocalExecutor(trainer), storage=storage)
        return outcome, read_step(optuna.load_study(study_name="race/02-lr", storage=storage), 1), trainer

    raced, step, trainer = run_with(True)
    exhaustive, full_step, full = run_with(False)
    close = step.trials_of(CLOSE)
    assert close[0].state.name == "PRUNED" and close[0].prune_reason != RACING
    assert [(t.prune_reason, t.steps_done) for t in close[1:]] == [(RACING, 0), (RACING, 0)]
    assert all("out of the race: seed 0 was pruned" in t.prune_detail for t in close[1:])
    assert [t.state.name for t in full_step.trials_of(CLOSE)] == ["PRUNED", "COMPLETE", "COMPLETE"]
    assert raced.carried == exhaustive.carried == {"optim.lr": 0.01}
    assert len(trainer.calls) == len(full.calls) - 2 - 1  # CLOSE's two seeds, WORSE's last seed
