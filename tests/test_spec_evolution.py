"""Editing a spec under an existing sweep: a grid extended, seeds added, a step inserted or
removed, search choices without the base value. Resuming keeps what finished and runs only what
is new; a step the spec no longer has decides nothing. Fake trainer, real SQLite studies."""

from __future__ import annotations

import optuna
import pytest
from fakes import FakeTrainer, lr_batch_score
from optuna.trial import TrialState

from maou.errors import UserError
from maou.strict import from_dict
from maou.sweep.results.export import export_sweep
from maou.sweep.run.executors.local import LocalExecutor
from maou.sweep.run.protocol import resolve_winner_of, run_sweep
from maou.sweep.spec import SweepSpec


def spec_of(tmp_path, steps, seeds=2, name="evo") -> SweepSpec:
    return from_dict(SweepSpec, {"name": name, "stage": 1, "seeds": seeds, "steps": steps,
                                 "budget": {"max_steps": 40, "eval_every": 10}, "racing": {"enabled": False},
                                 "storage": f"sqlite:///{tmp_path}/evo.db", "runs_dir": str(tmp_path / "runs")})


def trials_of(spec, index):
    return optuna.load_study(study_name=spec.study_name(index), storage=spec.storage_url).get_trials()


def pairs(trials):
    return sorted((t.user_attrs["config_key"], t.user_attrs["seed"]) for t in trials
                  if t.state in (TrialState.COMPLETE, TrialState.PRUNED))


def run(spec):
    trainer = FakeTrainer(lr_batch_score)
    outcome = run_sweep(spec, executor=LocalExecutor(trainer))
    return outcome, trainer.calls


BASELINE = {"name": "baseline"}


def test_extending_a_grid_runs_only_the_new_values(tmp_path):
    short = spec_of(tmp_path, [BASELINE, {"name": "lr", "grid": {"optim.lr": [0.01, 0.0001]}}])
    first, _ = run(short)
    before = {t.number: t.value for t in trials_of(short, 1)}
    extended = spec_of(tmp_path, [BASELINE, {"name": "lr", "grid": {"optim.lr": [0.01, 0.0001, 0.003]}}])
    outcome, calls = run(extended)
    assert [(c.optim.lr, c.seed) for c in calls] == [(0.003, 0), (0.003, 1)]  # the new value, both seeds
    lr = trials_of(extended, 1)
    assert len(pairs(lr)) == len(set(pairs(lr))) == 4 * 2  # the carried lr 0.001 and three values, 2 seeds
    assert all(t.state == TrialState.COMPLETE for t in lr)
    assert {t.params["optim.lr"] for t in lr} == {0.001, 0.01, 0.0001, 0.003}
    assert {t.number: t.value for t in lr if t.number in before} == before  # finished trials untouched
    assert outcome.decisions[0].winner_key == first.decisions[0].winner_key


def test_adding_seeds_runs_only_the_new_seeds(tmp_path):
    steps = [BASELINE, {"name": "lr", "grid": {"optim.lr": [0.01]}}]
    run(spec_of(tmp_path, steps, seeds=2))
    outcome, calls = run(spec_of(tmp_path, steps, seeds=3))
    assert sorted((c.optim.lr, c.seed) for c in calls) == [(0.001, 2), (0.01, 2)]
    lr = trials_of(spec_of(tmp_path, steps, seeds=3), 1)
    assert {t.user_attrs["seed"] for t in lr} == {0, 1, 2}
    assert outcome.decisions[1].winner.n == 3


def test_inserting_a_step_reuses_what_ran_and_an_old_study_decides_nothing(tmp_path):
    lr = {"name": "lr", "grid": {"optim.lr": [0.01, 0.0001]}}
    batch = {"name": "batch", "grid": {"batch_size": [128]}}
    run(spec_of(tmp_path, [BASELINE, lr]))
    longer = spec_of(tmp_path, [BASELINE, batch, lr])  # "lr" is now step 3: a study of its own
    outcome, calls = run(longer)
    assert sorted({(c.batch_size, c.optim.lr) for c in calls}) == [(64, 0.0001), (64, 0.01), (128, 0.001)]
    assert [d.winner_key.overrides for d in outcome.decisions][-1] == outcome.carried
    names = {s.study_name for s in optuna.get_all_study_summaries(longer.storage_url)}
    assert {"evo/02-lr", "evo/02-batch", "evo/03-lr"} <= names
    export = export_sweep(longer, tmp_path / "out")
    steps_csv = (tmp_path / "out" / "steps.csv").read_text()
    assert "evo/02-lr" not in steps_csv and "evo/03-lr" in steps_csv
    assert "evo/03-lr" in export.paths["best"].read_text()


def test_removing_the_last_step_makes_the_new_last_step_the_winner(tmp_path):
    three = [BASELINE, {"name": "lr", "grid": {"optim.lr": [0.01]}}, {"name": "batch", "grid": {"batch_size": [128]}}]
    run(spec_of(tmp_path, three))
    two = spec_of(tmp_path, three[:2])
    run(two)
    export = export_sweep(two, tmp_path / "out")
    assert "(evo/02-lr)" in export.paths["best"].read_text()
    assert "evo/03-batch" not in (tmp_path / "out" / "trials.csv").read_text()
    spec_file = tmp_path / "two.yaml"
    import yaml

    from maou.strict import to_dict

    spec_file.write_text(yaml.safe_dump(to_dict(two)))
    with pytest.raises(UserError, match="no checkpoint recorded"):  # the fake trainer writes none
        resolve_winner_of(f"winner-of:{spec_file}")  # ... but it looks at 02-lr, not the stale 03-batch


def test_search_choices_need_not_contain_the_base_value(tmp_path):
    steps = [{"name": "batch", "search": {"sampler": "random", "trials": 2,
                                          "params": {"batch_size": {"choices": [128, 256]}}}}]
    outcome, calls = run(spec_of(tmp_path, steps, seeds=1))
    trials = trials_of(spec_of(tmp_path, steps, seeds=1), 0)
    base = [t for t in trials if t.user_attrs["config_key"] == "{}"]
    assert base and all("batch_size" not in t.params for t in base)  # 64 is not among the choices
    sampled = [t for t in trials if t.user_attrs["config_key"] != "{}"]
    assert sampled and all(t.params["batch_size"] in (128, 256) for t in sampled)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert 64 in {c.batch_size for c in calls}
