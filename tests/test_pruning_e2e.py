"""A tiny collapse sweep through the real CLI on CPU: the report's failing recipe (sigmoid + MSE
value head, SGD, no warmup, constant learning rate, no gradient clipping) at a learning rate where
it fails on this corpus is pruned early with its reason; the healthy configurations run to the end;
`sweep status` and `sweep export` count trials per prune reason; a pruned configuration never wins."""

from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest
import yaml
from sweep_helpers import run_cli, tmp_spec

pytestmark = pytest.mark.slow

MAX_STEPS, EVAL_EVERY = 40, 4  # grace 5 % = 2 steps: evaluations at 0 (untrained), 4, 8, ...
COLLAPSED = {"loss.value_loss": "mse", "optim.name": "sgd", "optim.lr": 2.0, "batch_size": 256,
             "optim.warmup_fraction": 0.0, "optim.min_lr_ratio": 1.0, "optim.grad_clip": 0.0}
HEALTHY = {"optim.lr": 0.003, "batch_size": 128}


def run_tiny_sweep(tmp, data_dir, name, pruning=None):
    spec = tmp_spec(
        "stage3-collapse.yaml", tmp, data_dir, name=name,
        base={"model": {"arch": "resnet", "blocks": 2, "channels": 16},
              "optim": {"name": "adamw", "lr": 0.001, "momentum": 0.9, "warmup_fraction": 0.05},
              "loss": {"value_loss": "bce"}, "batch_size": 64, "threads": 1, "eval_rows": 512},
        budget={"max_steps": MAX_STEPS, "eval_every": EVAL_EVERY},
        steps=[{"name": "report-settings", "configs": [COLLAPSED, HEALTHY]}],
        **({"pruning": pruning} if pruning else {}))
    result = run_cli("run", str(spec))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    url = yaml.safe_load(spec.read_text())["storage"]
    return spec, optuna.load_study(study_name=f"{name}/01-report-settings", storage=url)


@pytest.fixture(scope="module")
def collapse_run(tmp_path_factory, bundled_data_dir):
    tmp = tmp_path_factory.mktemp("collapse")
    spec, study = run_tiny_sweep(tmp, bundled_data_dir, "tiny-collapse")
    return spec, study, tmp


def by_config(study) -> dict[str, optuna.trial.FrozenTrial]:
    return {json.dumps(json.loads(t.user_attrs["config_key"]), sort_keys=True): t for t in study.get_trials()}


def test_collapsed_config_is_pruned_early_with_its_reason(collapse_run):
    _, study, _ = collapse_run
    collapsed = by_config(study)[json.dumps(COLLAPSED, sort_keys=True)]
    assert collapsed.state == optuna.trial.TrialState.PRUNED
    # the loss blows up within the first steps: far above the untrained model's (step 0) at the
    # first evaluation after the grace period
    assert collapsed.user_attrs["prune_reason"] == "divergence"
    step = collapsed.user_attrs["prune_step"]
    assert step == EVAL_EVERY
    assert sorted(collapsed.intermediate_values) == [step]  # step 0 only in the curves
    assert collapsed.user_attrs["steps_done"] == step
    assert "val_loss" in collapsed.user_attrs["prune_detail"]
    curves = collapsed.user_attrs["curves"]
    assert curves["step"] == [0, step] and curves["val_value_skill"][-1] < -1


def test_without_divergence_the_value_detector_catches_the_same_run(tmp_path, bundled_data_dir):
    _, study = run_tiny_sweep(tmp_path, bundled_data_dir, "tiny-value", pruning={"divergence": {"enabled": False}})
    collapsed = by_config(study)[json.dumps(COLLAPSED, sort_keys=True)]
    assert collapsed.state == optuna.trial.TrialState.PRUNED
    assert collapsed.user_attrs["prune_reason"] == "value_collapse"
    # patience 3 after the grace period: the earliest possible cut is the third evaluation
    assert collapsed.user_attrs["prune_step"] == 3 * EVAL_EVERY
    assert "ratio 0.000" in collapsed.user_attrs["prune_detail"]
    for key in ("{}", json.dumps(HEALTHY, sort_keys=True)):
        assert by_config(study)[key].state == optuna.trial.TrialState.COMPLETE


def test_healthy_configs_run_to_the_end_and_win(collapse_run):
    _, study, _ = collapse_run
    trials = by_config(study)
    for key in ("{}", json.dumps(HEALTHY, sort_keys=True)):
        t = trials[key]
        assert t.state == optuna.trial.TrialState.COMPLETE, (key, t.user_attrs.get("prune_detail"))
        assert t.user_attrs["steps_done"] == MAX_STEPS
        assert "prune_reason" not in t.user_attrs
    decision = study.user_attrs["decision"]
    assert decision["winner_overrides"] != COLLAPSED
    pruned = [e for e in decision["leaderboard"] if e["config"] == COLLAPSED]
    assert pruned and pruned[0]["pruned"] == 1


def test_status_and_export_count_trials_per_reason(collapse_run):
    spec, _, tmp = collapse_run
    status = run_cli("status", str(spec))
    assert status.returncode == 0, status.stderr
    assert "divergence: 1" in status.stdout
    export = run_cli("export", str(spec), "--out", str(tmp / "out"))
    assert export.returncode == 0, export.stderr
    assert "divergence: 1" in export.stdout
    reasons = pd.read_csv(tmp / "out" / "prune_reasons.csv")
    pruned = reasons[reasons["state"] == "PRUNED"]
    assert pruned[["prune_reason", "trials"]].values.tolist() == [["divergence", 1]]
    assert reasons.loc[reasons["state"] == "COMPLETE", "trials"].sum() == 2
    trials = pd.read_csv(tmp / "out" / "trials.csv")
    row = trials[trials["state"] == "PRUNED"].iloc[0]
    assert row["prune_reason"] == "divergence" and row["prune_step"] == EVAL_EVERY
