"""The protocol's carry-forward and noise rule, on real in-memory Optuna studies with a fake trainer."""

from __future__ import annotations

import re

import optuna
import pytest
from fakes import FakeTrainer, lr_batch_score

from maou.errors import UserError
from maou.strict import from_dict
from maou.sweep.records import read_step
from maou.sweep.run.decision import collect_stats
from maou.sweep.run.executors.local import LocalExecutor
from maou.sweep.run.protocol import run_sweep
from maou.sweep.spec import SweepSpec


def make_spec(steps, seeds=3, **extra) -> SweepSpec:
    data = {"name": "fake", "stage": 1, "steps": steps, "seeds": seeds, "storage": "memory:",
            "budget": {"max_steps": 40, "eval_every": 10}, **extra}
    return from_dict(SweepSpec, data)


STEPS = [
    {"name": "baseline"},
    {"name": "lr", "grid": {"optim.lr": [0.01, 0.0001]}},
    {"name": "batch", "grid": {"batch_size": [64, 128]}},
]


def test_carry_forward_adopts_clear_winners_and_keeps_carried_within_noise():
    trainer = FakeTrainer(lr_batch_score)
    spec = make_spec(STEPS, racing={"enabled": False})  # every training runs: counted below
    outcome = run_sweep(spec, executor=LocalExecutor(trainer))
    first, second, third = outcome.decisions
    assert first.winner.overrides == {} and not first.adopted
    assert second.adopted and second.winner.overrides == {"optim.lr": 0.01}
    assert second.margin == pytest.approx(0.05, abs=0.01) and second.margin > second.threshold
    # batch 128 is better on the mean by 0.001 but the seed noise is 0.01: the carried config stays.
    assert not third.adopted
    assert third.winner.overrides == {"optim.lr": 0.01}
    (batch,) = third.comparisons
    assert abs(batch.test.gain) < 0.02 and not batch.significant  # within the seed noise
    assert outcome.carried == {"optim.lr": 0.01}
    # The carried config of steps 2 and 3 was trained once and reused: 3 + 2*3 + 1*3 trainings.
    assert len(trainer.calls) == 12


def test_decisions_and_rule_are_recorded_on_the_studies():
    spec = make_spec(STEPS)
    storage = optuna.storages.InMemoryStorage()
    run_sweep(spec, executor=LocalExecutor(FakeTrainer(lr_batch_score)), storage=storage)
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert names == ["fake/01-baseline", "fake/02-lr", "fake/03-batch", "fake@lock"]
    study = optuna.load_study(study_name="fake/03-batch", storage=storage)
    decision = study.user_attrs["decision"]
    assert decision["adopted"] is False
    assert "paired per-seed differences" in decision["rule"] and "Holm" in decision["rule"]
    (batch,) = decision["comparisons"]
    assert batch["config"] == {"batch_size": 128, "optim.lr": 0.01} and batch["n"] == 3
    assert batch["needed"] > batch["gain"] and not batch["significant"] and not batch["adopted"]
    assert decision["noise_measured"] is True and decision["edge"] == []
    assert study.user_attrs["carried_in"] == {"optim.lr": 0.01}
    trials = study.get_trials()
    assert len(trials) == 6  # (carried + batch 128) x 3 seeds; batch 64 is the carried config itself
    assert {t.user_attrs["seed"] for t in trials} == {0, 1, 2}
    assert all("seed" not in t.params for t in trials)  # the seed is no hyperparameter
    reused = [t for t in trials if t.user_attrs.get("reused_from")]
    assert len(reused) == 3 and all(t.user_attrs["reused_from"].startswith("fake/02-lr#") for t in reused)
    for t in trials:
        assert t.user_attrs["config"]["stage"] == 1
        assert t.intermediate_values  # learning curves for the dashboard
        assert "final_metrics" in t.user_attrs


def test_a_pruned_configuration_never_wins():
    # lr 0.01 would score best, but its runs go NaN: pruned, so the carried config stays.
    trainer = FakeTrainer(lr_batch_score, nan_when=lambda c: c.optim.lr == 0.01)
    spec = make_spec(STEPS[:2])
    outcome = run_sweep(spec, executor=LocalExecutor(trainer))
    decision = outcome.decisions[1]
    assert not decision.adopted and decision.winner.overrides == {}
    pruned = next(s for s in decision.stats if s.overrides == {"optim.lr": 0.01})
    # the first seed went NaN; a configuration with a pruned seed cannot win, so racing cuts the others
    assert pruned.pruned == 3 and pruned.prune_reasons[0] in {"non_finite", "nan_loss"}
    assert set(pruned.prune_reasons) <= {"non_finite", "nan_loss", "racing"}


def test_optuna_pruner_ignores_the_untrained_step_0():
    # Untrained models differ by initialisation noise only (step 0 falls with the seed); trained,
    # seeds 0-2 are equal and seed 3 is clearly worse. A median pruner cuts seed 3 at step 10, and
    # never a trial for being below the median at step 0.
    trainer = FakeTrainer(lambda c: 0.7 if c.seed == 3 else 0.9, noise=0.0,
                          untrained=lambda c: 0.5 - 0.01 * c.seed)
    spec = make_spec([{"name": "baseline"}], seeds=4,
                     pruning={"optuna": {"kind": "median", "n_startup_trials": 1}})
    storage = optuna.storages.InMemoryStorage()
    run_sweep(spec, executor=LocalExecutor(trainer), storage=storage)
    trials = optuna.load_study(study_name="fake/01-baseline", storage=storage).get_trials()
    states = {t.user_attrs["seed"]: t.state.name for t in trials}
    assert states == {0: "COMPLETE", 1: "COMPLETE", 2: "COMPLETE", 3: "PRUNED"}
    worse = next(t for t in trials if t.user_attrs["seed"] == 3)
    assert worse.user_attrs["prune_reason"] == "optuna_pruner" and worse.user_attrs["prune_step"] == 10
    assert sorted(worse.intermediate_values) == [10]  # the untrained step 0 is not Optuna's


def test_a_failed_trial_leaves_its_step_undecided_and_the_resume_decides_like_a_clean_run():
    """One (configuration, seed) failing (out of memory, a full disk) does not disqualify the
    configuration for good: the step stops undecided, the resume runs it again and decides as a
    run without the failure would have."""
    from optuna.storages import InMemoryStorage

    from maou.sweep.run.protocol import StepIncomplete
    from maou.trainer.result import ResourceExhausted

    failing = {"on": True}

    def trainer(config, report, checkpoint_dir, dataset=None):
        if config.optim.lr == 0.01 and config.seed == 1 and failing["on"]:
            raise ResourceExhausted("CUDA out of memory at batch_size 64 on cuda:0: lower batch_size (simulated)")
        return FakeTrainer(lr_batch_score)(config, report, checkpoint_dir)

    spec, storage = make_spec(STEPS[:2], seeds=3), InMemoryStorage()
    with pytest.raises(StepIncomplete, match=r"fake/02-lr: 1 of 9 trainings did not finish "
                                             r"\(failed cuda out of memory: 1\); the step does not decide"):
        run_sweep(spec, executor=LocalExecutor(trainer), storage=storage)
    lr = optuna.load_study(study_name="fake/02-lr", storage=storage)
    assert lr.user_attrs["decision"] is None
    (failed,) = [t for t in lr.trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed.user_attrs["fail_reason"] == "cuda out of memory"
    failing["on"] = False
    resumed = run_sweep(spec, executor=LocalExecutor(trainer), storage=storage)
    clean = run_sweep(make_spec(STEPS[:2], seeds=3), executor=LocalExecutor(trainer), storage=InMemoryStorage())
    assert resumed.carried == clean.carried == {"optim.lr": 0.01}
    again, fresh = resumed.decisions[1], clean.decisions[1]
    assert again.as_attrs()["comparisons"] == fresh.as_attrs()["comparisons"]
    assert [(s.key, s.values, s.failed) for s in again.stats] == [(s.key, s.values, s.failed) for s in fresh.stats]


def test_collect_stats_skips_interrupted_trials():
    study = optuna.create_study(direction="maximize")
    for state, attrs in [(optuna.trial.TrialState.COMPLETE, {}),
                         (optuna.trial.TrialState.FAIL, {"fail_reason": "interrupted"}),
                         (optuna.trial.TrialState.FAIL, {"fail_reason": "error"})]:
        study.add_trial(optuna.trial.create_trial(
            state=state, value=0.5 if state == optuna.trial.TrialState.COMPLETE else None,
            user_attrs={"config_key": "{}", "seed": 0, **attrs}))
    (only,) = collect_stats(read_step(study, 0).trials).values()
    assert only.n == 1 and only.failed == 0  # an error after the pair completed changes nothing


def test_a_pair_is_judged_by_its_latest_finished_trial():
    """An errored FAIL that a later trial of the same (configuration, seed) completed no longer
    counts against the configuration."""
    study = optuna.create_study(direction="maximize")
    for state, attrs in [(optuna.trial.TrialState.FAIL, {"fail_reason": "disk full"}),
                         (optuna.trial.TrialState.COMPLETE, {}),
                         (optuna.trial.TrialState.FAIL, {"fail_reason": "error", "seed": 1})]:
        study.add_trial(optuna.trial.create_trial(
            state=state, value=0.5 if state == optuna.trial.TrialState.COMPLETE else None,
            user_attrs={"config_key": "{}", "seed": 0, **attrs}))
    (only,) = collect_stats(read_step(study, 0).trials).values()
    assert only.values == {0: 0.5} and only.failed == 1  # seed 0 healed; seed 1 failed, never completed


class _InterruptedAfterStart:
    """An interrupt that lands after a trial started and before the executor could record it."""

    def run(self, step):
        assert step.next_job() is not None
        raise KeyboardInterrupt


def test_an_interrupt_between_start_and_run_leaves_no_trial_running(tmp_path):
    url = f"sqlite:///{tmp_path}/studies.db"
    spec = make_spec(STEPS[:1], storage=url, runs_dir=str(tmp_path / "runs"))
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, executor=_InterruptedAfterStart())
    study = optuna.load_study(study_name=spec.study_name(0), storage=url)
    states = [t.state for t in study.get_trials()]
    assert optuna.trial.TrialState.FAIL in states and optuna.trial.TrialState.RUNNING not in states
    outcome = run_sweep(spec, executor=LocalExecutor(FakeTrainer(lr_batch_score)))  # resumes: all seeds run
    assert outcome.decisions[0].stats[0].n == 3


def _foreign_study(storage, name: str, how: str) -> None:
    direction = "minimize" if how == "direction" else "maximize"
    study = optuna.create_study(study_name=name, storage=storage, direction=direction)
    if how == "attrs":
        study.set_user_attr("owner", "another tool")
    elif how == "sweep":
        study.set_user_attr("sweep", "another-sweep")
    elif how == "running":  # trials that are results of nothing this sweep records
        study.ask()
        study.tell(study.ask(), 0.5)


@pytest.mark.parametrize("how, reason", [
    ("attrs", "user attributes owner are not this sweep's"),
    ("sweep", "'sweep' attribute names 'another-sweep'"),
    ("direction", "its direction is minimize, not the step's maximize"),
    ("running", "trial #1 (COMPLETE) has no config_key and seed"),
])
def test_a_foreign_study_at_a_later_step_is_refused_before_the_first_step_runs(how, reason):
    storage = optuna.storages.InMemoryStorage()
    spec = make_spec(STEPS)
    _foreign_study(storage, spec.study_name(1), how)
    trainer = FakeTrainer(lr_batch_score)
    with pytest.raises(UserError, match="is not step 2 of sweep 'fake': .*" + re.escape(reason)):
        run_sweep(spec, executor=LocalExecutor(trainer), storage=storage)
    assert not trainer.calls  # refused before anything trained
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == [spec.study_name(1)]


def test_a_step_study_created_and_left_empty_by_an_interrupted_run_is_taken_up():
    storage = optuna.storages.InMemoryStorage()
    spec = make_spec(STEPS[:1])
    optuna.create_study(study_name=spec.study_name(0), storage=storage, direction="maximize")
    outcome = run_sweep(spec, executor=LocalExecutor(FakeTrainer(lr_batch_score)), storage=storage)
    assert outcome.decisions[0].stats[0].n == 3
