"""The decision rule on hand-made results (no training): paired per-seed statistics, Holm's
correction for picking the best of k, one seed, ties, guards; and grid edges with their
extension, through a real sweep with the fake trainer."""

from __future__ import annotations

import math

import optuna
import pytest
from fakes import FakeTrainer

from maou.strict import from_dict
from maou.sweep.identity import ConfigKey
from maou.sweep.run.decision import ConfigStats, decide
from maou.sweep.run.edges import next_value
from maou.sweep.run.executors.local import LocalExecutor
from maou.sweep.run.protocol import run_sweep
from maou.sweep.run.stats import alpha_of, t_critical, t_sf
from maou.sweep.spec import Guard, Objective, Selection, SweepSpec

MAXIMIZE = Objective("val_f1", "maximize")
CARRIED = [0.70, 0.73, 0.69, 0.72]


def config(overrides, values, **guards) -> ConfigStats:
    s = ConfigStats(ConfigKey.of(overrides), values=dict(enumerate(values)))
    s.guard_values = {metric: dict(enumerate(v)) for metric, v in guards.items()}
    return s


def pool(*configs: ConfigStats) -> dict:
    return {c.key: c for c in configs}


def test_student_t_against_known_values():
    assert t_sf(2.0, 2) == pytest.approx(0.09175, abs=1e-5)
    assert t_sf(1.0, 1) == pytest.approx(0.25, abs=1e-9)
    assert t_sf(2.0, 10) == pytest.approx(0.03669, abs=1e-5)
    assert t_critical(0.025, 10) == pytest.approx(2.2281, abs=1e-3)
    assert alpha_of(1.0) == pytest.approx(0.158655, abs=1e-6)


def test_pairing_sees_a_gain_that_unpaired_noise_would_hide():
    # the seeds move both configurations alike (0.69..0.73); the challenger is +0.01 on every seed
    carried = config({}, CARRIED)
    challenger = config({"loss.gamma_neg": 2.0}, [v + 0.01 + 0.001 * (i % 2) for i, v in enumerate(CARRIED)])
    decision = decide(pool(carried, challenger), carried.key, MAXIMIZE, Selection(noise_sigmas=2.0))
    (comparison,) = decision.comparisons
    assert decision.adopted and comparison.test.n == 4
    assert comparison.test.gain == pytest.approx(0.0105)
    assert comparison.test.se == pytest.approx(0.0005 / math.sqrt(4) * math.sqrt(4 / 3), rel=1e-6)
    # unpaired, the seed spread (std 0.018) would drown the +0.0105 at 2 sigmas
    unpaired_se = math.sqrt(carried.std ** 2 / 4 + challenger.std ** 2 / 4)
    assert comparison.test.gain < 2 * unpaired_se
    assert decision.as_attrs()["comparisons"][0]["significant"] is True


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_direction(direction):
    sign = 1 if direction == "maximize" else -1
    carried = config({}, CARRIED)
    better = config({"optim.lr": 0.01}, [v + sign * (0.05 + 0.002 * i) for i, v in enumerate(CARRIED)])
    decision = decide(pool(carried, better), carried.key, Objective("m", direction), Selection())
    assert decision.adopted and decision.winner_key == better.key
    assert decision.comparisons[0].test.gain == pytest.approx(0.053)


def test_best_of_k_is_corrected_with_holm():
    # one challenger alone passes at alpha 0.159 (1 sigma); the same result among 20 does not
    carried = config({}, CARRIED)
    lucky = config({"optim.lr": 1e-3}, [v + d for v, d in zip(CARRIED, [0.004, 0.001, 0.006, 0.002])])
    alone = decide(pool(carried, lucky), carried.key, MAXIMIZE, Selection())
    assert alone.adopted
    noise = [0.003, -0.003, 0.002, -0.002]
    nulls = [config({"optim.weight_decay": 1e-4 * (i + 2)}, [v + d for v, d in zip(CARRIED, noise)]) for i in range(19)]
    crowded = decide(pool(carried, lucky, *nulls), carried.key, MAXIMIZE, Selection())
    assert not crowded.adopted
    best = next(c for c in crowded.comparisons if c.key == lucky.key)
    assert best.test.p == pytest.approx(next(c for c in alone.comparisons).test.p)  # the same evidence...
    assert best.level == pytest.approx(alpha_of(1.0) / 20)  # ... held to a level 20 times stricter
    assert not best.significant


def test_one_seed_adopts_only_beyond_the_margin_and_records_no_noise():
    carried, challenger = config({}, [0.70]), config({"optim.lr": 0.01}, [0.705])
    loose = decide(pool(carried, challenger), carried.key, MAXIMIZE, Selection())
    assert loose.adopted and not loose.noise_measured
    attrs = loose.as_attrs()
    assert attrs["noise"] is None and attrs["noise_measured"] is False and attrs["comparisons"][0]["p"] is None
    strict = decide(pool(carried, challenger), carried.key, MAXIMIZE, Selection(min_margin=0.01))
    assert not strict.adopted and strict.comparisons[0].needed == pytest.approx(0.01)


def test_a_tie_keeps_the_carried_configuration():
    carried = config({}, CARRIED)
    twin = config({"optim.lr": 0.01}, list(CARRIED))
    decision = decide(pool(carried, twin), carried.key, MAXIMIZE, Selection(noise_sigmas=0.0))
    assert not decision.adopted and decision.winner_key == carried.key
    assert decision.comparisons[0].test.gain == 0.0


def test_the_largest_significant_gain_wins():
    carried = config({}, CARRIED)
    good = config({"optim.lr": 0.01}, [v + 0.05 + 0.001 * i for i, v in enumerate(CARRIED)])
    better = config({"optim.lr": 0.02}, [v + 0.08 + 0.001 * i for i, v in enumerate(CARRIED)])
    decision = decide(pool(carried, good, better), carried.key, MAXIMIZE, Selection())
    assert decision.winner_key == better.key
    assert [c.adopted for c in decision.comparisons] == [True, False]


def test_a_guard_vetoes_a_gain_that_costs_too_much_elsewhere():
    guard = Guard("val_policy_top1", 0.005, "maximize")
    carried = config({}, CARRIED, val_policy_top1=[0.30] * 4)
    costly = config({"loss.value_loss_ratio": 2.0}, [v + 0.05 + 0.001 * i for i, v in enumerate(CARRIED)],
                    val_policy_top1=[0.28] * 4)
    cheap = config({"loss.value_loss_ratio": 1.5}, [v + 0.03 + 0.001 * i for i, v in enumerate(CARRIED)],
                   val_policy_top1=[0.297] * 4)
    decision = decide(pool(carried, costly, cheap), carried.key, MAXIMIZE, Selection(), (guard,))
    assert decision.winner_key == cheap.key
    vetoed = next(c for c in decision.comparisons if c.key == costly.key)
    assert vetoed.significant and vetoed.guard_failures == ["val_policy_top1 worse by 0.02 (tolerance 0.005)"]
    assert "guards: val_policy_top1" in decision.rule


def test_a_pruned_configuration_never_wins_and_no_completed_trial_is_a_failed_step():
    carried = config({}, CARRIED)
    pruned = config({"optim.lr": 0.01}, [v + 0.5 for v in CARRIED])
    pruned.pruned = 1
    assert not decide(pool(carried, pruned), carried.key, MAXIMIZE, Selection()).adopted
    nothing = ConfigStats(ConfigKey.of({}), pruned=4)
    assert decide(pool(nothing), nothing.key, MAXIMIZE, Selection()).failed


@pytest.mark.parametrize("values, upward, integer, expected", [
    ([1, 2, 3, 4], True, True, 5),            # arithmetic
    ([0.0, 0.01, 0.02, 0.05], True, False, 0.08),  # neither: the last spacing
    ([256, 512, 1024], True, True, 2048),     # geometric
    ([256, 512, 1024], False, True, 128),
    ([0.001, 0.003, 0.009], True, False, 0.027),
    ([1.0, 2.0, 3.0], False, False, 0.0),
])
def test_the_grid_grows_by_its_own_spacing(values, upward, integer, expected):
    assert next_value(values, upward, integer) == pytest.approx(expected)


def gamma_score(config) -> float:
    """F1 that rises with gamma_neg up to 6, then falls: a grid of 1-3 puts the winner at its edge."""
    return 0.5 + 0.02 * min(config.loss.gamma_neg, 6.0) - 0.03 * max(config.loss.gamma_neg - 6.0, 0.0)


def edge_spec(tmp_path, extend: int) -> SweepSpec:
    return from_dict(SweepSpec, {
        "name": f"edge{extend}", "stage": 1, "seeds": 3, "storage": f"sqlite:///{tmp_path}/edge{extend}.db",
        "runs_dir": str(tmp_path / "runs"), "budget": {"max_steps": 40, "eval_every": 10},
        "objective": {"metric": "val_accuracy"},
        "steps": [{"name": "gamma", "grid": {"loss.gamma_neg": [1, 2, 3]}, "extend": extend}]})


def test_a_winner_at_the_grid_edge_is_reported(tmp_path):
    spec = edge_spec(tmp_path, extend=0)
    (decision,) = run_sweep(spec, executor=LocalExecutor(FakeTrainer(gamma_score, noise=0.001))).decisions
    assert decision.winner_key.overrides == {"loss.gamma_neg": 3.0}
    assert decision.edge == ["loss.gamma_neg"] and decision.extended == {}
    study = optuna.load_study(study_name=spec.study_name(0), storage=spec.storage_url)
    assert study.user_attrs["decision"]["edge"] == ["loss.gamma_neg"]


def test_a_winner_at_the_end_of_the_keys_range_is_not_an_edge(tmp_path):
    """asl_clip 0 at the bottom of its grid: nothing smaller is valid, so nothing to warn about."""
    spec = from_dict(SweepSpec, {
        "name": "clip", "stage": 1, "seeds": 3, "storage": f"sqlite:///{tmp_path}/clip.db",
        "runs_dir": str(tmp_path / "runs"), "budget": {"max_steps": 40, "eval_every": 10},
        "objective": {"metric": "val_accuracy"},
        "steps": [{"name": "clip", "grid": {"loss.asl_clip": [0.0, 0.01, 0.02, 0.05]}, "extend": 2}]})
    trainer = FakeTrainer(lambda config: 0.6 - config.loss.asl_clip, noise=0.001)
    (decision,) = run_sweep(spec, executor=LocalExecutor(trainer)).decisions
    assert decision.winner_key.overrides == {} and decision.edge == [] and decision.extended == {}


def test_extend_grows_the_grid_until_the_winner_is_interior(tmp_path):
    spec = edge_spec(tmp_path, extend=5)
    trainer = FakeTrainer(gamma_score, noise=0.001)
    (decision,) = run_sweep(spec, executor=LocalExecutor(trainer)).decisions
    # 3 is the edge -> 4 -> 5 -> 6 -> 7; at 7 the score falls, so 6 wins inside the grid
    assert decision.extended == {"loss.gamma_neg": [4, 5, 6, 7]}
    assert decision.winner_key.overrides == {"loss.gamma_neg": 6.0} and decision.edge == []
    assert sorted({c.loss.gamma_neg for c in trainer.calls}) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    again = FakeTrainer(gamma_score, noise=0.001)
    (resumed,) = run_sweep(spec, executor=LocalExecutor(again)).decisions  # resuming changes nothing
    assert again.calls == [] and resumed.winner_key == decision.winner_key
