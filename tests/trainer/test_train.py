"""The training loop: each stage learns, chaining, stopping, determinism, data loading, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from maou.cli import main
from maou.errors import UserError
from maou.shogi.shapes import BOARD_SHAPE, MOVE_LABELS_NUM, PIECES_IN_HAND_NUM, REACHABLE_SQUARES_NUM, STAGE1_ROWS_NUM
from maou.stages import stage
from maou.trainer.checkpoint import CHECKPOINT_NAME, load_backbone
from maou.trainer.loop import learning_rate, train_stage
from maou.trainer.models import build_model
from maou.trainer.result import Stop
from maou.trainer.split import Split
from maou.trainer.tensors import StageData, load_stage_data

ALL_ZEROS_STAGE1_ACCURACY = 0.902


def _assert_metric_keys(stage_number: int, metrics: dict[str, float]) -> None:
    assert set(metrics) == set(stage(stage_number).reported_metrics)


# ---- each stage learns ----------------------------------------------------------------------------

def test_stage1_learns(stage_data, tiny_config):
    data = stage_data(1)
    assert len(data.train) == STAGE1_ROWS_NUM and data.val is data.train
    seen = []
    result = train_stage(tiny_config(1, optim={"lr": 1e-2}), data, report=lambda s, m: seen.append(s))
    # step 0 is the untrained model (eval_at_start), then every eval_every steps
    assert seen == [0, 100, 200] and [s for s, _ in result.history] == [0, 100, 200]
    _assert_metric_keys(1, result.final_metrics)
    assert "train_loss" not in result.history[0][1]
    first, final = result.history[0][1]["val_accuracy"], result.final_metrics["val_accuracy"]
    print(f"stage 1 val_accuracy {first:.4f} (untrained) -> {final:.4f} (all-zeros {ALL_ZEROS_STAGE1_ACCURACY})")
    assert final > ALL_ZEROS_STAGE1_ACCURACY + 0.03
    assert result.steps_done == result.max_steps == 200 and not result.stopped_early and result.stop_reason is None
    # 18 batches an epoch (the last one partial): 200 steps = 11 epochs and 2 batches
    assert math.ceil(STAGE1_ROWS_NUM / 64) == 18
    assert result.final_metrics["epoch"] == pytest.approx(11 + 2 * 64 / STAGE1_ROWS_NUM)
    assert result.best_metrics["val_accuracy"] == max(m["val_accuracy"] for s, m in result.history if s > 0)
    assert result.device == "cpu" and result.samples_per_s > 0 and result.checkpoint is None


def test_stage2_learns(stage_data, tiny_config):
    result = train_stage(tiny_config(2), stage_data(2))
    _assert_metric_keys(2, result.final_metrics)
    m = result.final_metrics
    print(f"stage 2 val_f1 {m['val_f1']:.3f} vs all-positive {m['val_f1_all_positive']:.3f}, all-negative 0; "
          f"pred/label positive rate {m['val_pred_pos_rate']:.4f}/{m['val_label_pos_rate']:.4f}")
    assert m["val_f1"] > m["val_f1_all_positive"] + 0.05
    assert m["val_f1"] > 0.05 and m["val_pred_pos_rate"] > 0       # the all-negative predictor scores 0


def test_stage3_learns(stage_data, tiny_config):
    # a policy over 1496 moves from real games learns slowly: 300 steps (about 3 s)
    result = train_stage(tiny_config(3, max_steps=300, eval_every=150), stage_data(3))
    _assert_metric_keys(3, result.final_metrics)
    m = result.final_metrics
    print(f"stage 3 val_policy_top1 {m['val_policy_top1']:.3f} vs baseline {m['val_policy_top1_baseline']:.3f}; "
          f"value skill {m['val_value_skill']:.3f}, accuracy {m['val_value_accuracy']:.3f}")
    assert m["val_policy_top1"] > m["val_policy_top1_baseline"] + 0.005
    assert m["val_policy_ce"] < math.log(MOVE_LABELS_NUM) - 0.5          # well below a uniform policy
    assert m["val_policy_entropy"] < math.log(MOVE_LABELS_NUM) - 0.5


def test_mlp_mixer_trains(stage_data, tiny_config):
    result = train_stage(tiny_config(1, model={"arch": "mlp_mixer"}, max_steps=30, eval_every=30), stage_data(1))
    assert math.isfinite(result.final_metrics["val_loss"]) and result.steps_done == 30


def test_runs_are_deterministic_on_cpu(stage_data, tiny_config):
    config = tiny_config(2, max_steps=12, eval_every=6, model={"hidden_dim": 16, "dropout": 0.2})
    a, b = train_stage(config, stage_data(2)), train_stage(config, stage_data(2))
    assert a.history == b.history


# ---- chaining ------------------------------------------------------------------------------------

def test_chain_stage1_to_2_to_3(stage_data, tiny_config, tmp_path):
    short = {"max_steps": 20, "eval_every": 20}
    first = train_stage(tiny_config(1, **short), stage_data(1), checkpoint_dir=tmp_path / "s1")
    assert first.checkpoint == str(tmp_path / "s1" / CHECKPOINT_NAME)
    saved = torch.load(first.checkpoint, weights_only=True)
    assert saved["stage"] == 1 and saved["config"]["model"]["channels"] == 16
    assert set(saved) >= {"backbone", "heads", "config", "stage"}

    # loading: the backbone equals the checkpoint's, the heads are the fresh ones
    config2 = tiny_config(2, init_from=first.checkpoint, **short)
    torch.manual_seed(0)
    fresh = build_model(config2)
    torch.manual_seed(0)
    loaded = build_model(config2)
    load_backbone(loaded, first.checkpoint, config2)
    for key, value in saved["backbone"].items():
        assert torch.equal(loaded.backbone.state_dict()[key], value)
    for key, value in fresh.heads.state_dict().items():
        assert torch.equal(loaded.heads.state_dict()[key], value)

    # a frozen backbone comes out of stage 2 unchanged (BatchNorm statistics included)
    frozen = train_stage(tiny_config(2, init_from=first.checkpoint, freeze_backbone=True, **short), stage_data(2),
                         checkpoint_dir=tmp_path / "s2frozen")
    after = torch.load(frozen.checkpoint, weights_only=True)["backbone"]
    assert all(torch.equal(after[k], v) for k, v in saved["backbone"].items())

    second = train_stage(config2, stage_data(2), checkpoint_dir=tmp_path / "s2")
    trained = torch.load(second.checkpoint, weights_only=True)["backbone"]
    assert any(not torch.equal(trained[k], v) for k, v in saved["backbone"].items())
    third = train_stage(tiny_config(3, init_from=second.checkpoint, **short), stage_data(3),
                        checkpoint_dir=tmp_path / "s3")
    assert third.steps_done == 20 and torch.load(third.checkpoint, weights_only=True)["stage"] == 3


def test_init_from_a_different_architecture_is_a_clear_error(stage_data, tiny_config, tmp_path):
    first = train_stage(tiny_config(1, max_steps=2, eval_every=2), stage_data(1), checkpoint_dir=tmp_path)
    with pytest.raises(UserError, match="channels"):
        train_stage(tiny_config(2, init_from=first.checkpoint, model={"channels": 8}), stage_data(2))
    with pytest.raises(UserError, match="arch"):
        train_stage(tiny_config(2, init_from=first.checkpoint, model={"arch": "mlp_mixer"}), stage_data(2))
    with pytest.raises(UserError, match="no checkpoint"):
        train_stage(tiny_config(2, init_from=str(tmp_path / "missing.pt")), stage_data(2))


# ---- stopping ------------------------------------------------------------------------------------

def test_step0_evaluates_the_untrained_model_and_can_stop_the_run(stage_data, tiny_config):
    data = stage_data(1)
    stopped = train_stage(tiny_config(1), data, report=lambda s, m: Stop("refused", "", s) if s == 0 else None)
    assert stopped.steps_done == 0 and stopped.stop_reason == "refused" and stopped.stopped_early
    assert [s for s, _ in stopped.history] == [0] and stopped.final_metrics["epoch"] == 0.0
    assert stopped.best_step == 0  # nothing trained: the untrained model is all there is
    # the best evaluation is chosen among trained steps, even when training made things worse
    worse = train_stage(tiny_config(1, optim={"lr": 10.0, "grad_clip": 0.0, "warmup_fraction": 0.0},
                                    max_steps=20, eval_every=10), data)
    assert [s for s, _ in worse.history] == [0, 10, 20] and worse.best_step in (10, 20)
    off = train_stage(tiny_config(1, eval_at_start=False, max_steps=20, eval_every=10), data)
    assert [s for s, _ in off.history] == [10, 20]


def test_nan_loss_stops_the_run_with_a_last_report(stage_data, tiny_config):
    reports = []
    # the largest learning rate and positive weight validation allows, SGD, no clipping: NaN in a few steps
    result = train_stage(tiny_config(1, optim={"name": "sgd", "lr": 100.0, "grad_clip": 0.0, "warmup_fraction": 0.0},
                                     loss={"pos_weight": 1e6}, eval_every=50),
                         stage_data(1), report=lambda s, m: reports.append((s, m)))
    assert result.stop_reason == "nan_loss" and result.stopped_early
    assert result.steps_done < 50
    assert reports and math.isnan(reports[-1][1]["train_loss"])
    assert math.isnan(result.final_metrics["train_loss"])


def test_poisoned_input_stops_the_run_at_once(stage_data, tiny_config, dataset_dir):
    clean = load_stage_data(3, dataset_dir, storage="memory").train
    value = clean.targets["value"].clone()
    value[:] = float("nan")
    poisoned = Split(clean.board, clean.hand, {"policy": clean.targets["policy"], "value": value})
    result = train_stage(tiny_config(3, max_steps=100, eval_every=50), StageData(3, poisoned, stage_data(3).val))
    assert result.stop_reason == "nan_loss" and result.steps_done == 1


def test_report_returning_a_reason_stops_the_run(stage_data, tiny_config):
    def report(step, metrics):
        return Stop("value_collapse", "pruned", step) if step >= 20 else None

    result = train_stage(tiny_config(1, max_steps=100, eval_every=10), stage_data(1), report=report)
    assert result.stop_reason == "value_collapse" and result.stopped_early
    assert result.stop == Stop("value_collapse", "pruned", 20)
    assert result.steps_done == 20 and [s for s, _ in result.history] == [0, 10, 20] and result.max_steps == 100


# ---- budget, schedule, evaluation subset -----------------------------------------------------------

def test_epochs_are_converted_to_steps(stage_data, tiny_config):
    config = tiny_config(1, max_steps=None, epochs=2.0, batch_size=256, eval_every=1000)
    assert config.budget.total_steps(STAGE1_ROWS_NUM, config.batch_size) == 2 * math.ceil(STAGE1_ROWS_NUM / 256)
    result = train_stage(config, stage_data(1))
    assert result.steps_done == result.max_steps == 10
    assert result.final_metrics["epoch"] == pytest.approx(2.0, abs=0.5)


def test_warmup_then_cosine(tiny_config):
    optim = tiny_config(1, optim={"lr": 1.0, "warmup_fraction": 0.1, "min_lr_ratio": 0.1}).optim
    lrs = [learning_rate(optim, step, 100) for step in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1, abs=0.01) and min(lrs) >= 0.1 - 1e-12


def test_eval_rows_thins_the_evaluations_but_the_final_metrics_see_the_whole_split(stage_data, tiny_config):
    thin = train_stage(tiny_config(2, max_steps=4, eval_every=2, eval_rows=50), stage_data(2))
    other_seed = train_stage(tiny_config(2, max_steps=4, eval_every=2, eval_rows=50, seed=1), stage_data(2))
    full = train_stage(tiny_config(2, max_steps=4, eval_every=2), stage_data(2))
    rate = "val_label_pos_rate"  # a property of the rows, not of the model
    assert thin.history[-1][1][rate] == other_seed.history[-1][1][rate]  # the same subset for every seed
    assert thin.history[-1][1][rate] != full.history[-1][1][rate]
    assert thin.final_metrics[rate] == pytest.approx(full.final_metrics[rate])  # the whole split at the end
    assert thin.best_metrics[rate] == pytest.approx(full.final_metrics[rate])
    assert thin.final_metrics["train_loss"] == thin.history[-1][1]["train_loss"]
    # the best evaluation (the first trained one with the highest thinned val_f1) is the one kept, its
    # model evaluated again on the whole split
    thinned = [(step, metrics["val_f1"]) for step, metrics in thin.history if step > 0]
    assert [step for step, _ in thinned] == [2, 4]
    assert thin.best_step == max(thinned, key=lambda entry: entry[1])[0]
    assert math.isfinite(thin.best_metrics["val_f1"])


# ---- data loading ----------------------------------------------------------------------------------

def test_load_stage_data_shapes(dataset_dir):
    s1 = load_stage_data(1)
    assert s1.train.board.shape == (STAGE1_ROWS_NUM, *BOARD_SHAPE) and s1.train.board.dtype == torch.uint8
    assert s1.train.hand.shape == (STAGE1_ROWS_NUM, PIECES_IN_HAND_NUM)
    assert s1.train.targets["reachable"].shape == (STAGE1_ROWS_NUM, REACHABLE_SQUARES_NUM)
    s2 = load_stage_data(2, dataset_dir, max_rows=10, storage="memory")
    assert len(s2.train) == len(s2.val) == 10
    assert s2.train.targets["legal_moves"].shape == (10, MOVE_LABELS_NUM)
    assert s2.train.targets["legal_moves"].dtype == torch.uint8
    s3 = load_stage_data(3, dataset_dir, max_rows=10, storage="memory")
    assert s3.train.targets["policy"].dtype == torch.float32 and s3.train.targets["value"].shape == (10,)
    assert torch.allclose(s3.train.targets["policy"].sum(1), torch.ones(10), atol=1e-4)


def test_nested_and_flat_board_columns_load_the_same(synthetic_datasets, tmp_path):
    flat = load_stage_data(2, synthetic_datasets(tmp_path / "flat", 20, 5), storage="memory")
    nested = load_stage_data(2, synthetic_datasets(tmp_path / "nested", 20, 5, nested_board=True), storage="memory")
    assert torch.equal(flat.train.board, nested.train.board) and flat.train.board.shape == (20, *BOARD_SHAPE)


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="sweep data build"):
        load_stage_data(2, tmp_path)


# ---- the CLI -------------------------------------------------------------------------------------

def _write_config(path, **values):
    base = {"stage": 1, "model": {"blocks": 1, "channels": 8}, "budget": {"max_steps": 20, "eval_every": 10},
            "device": "cpu", "threads": 1}
    path.write_text(yaml.safe_dump({**base, **values}))
    return path


def test_sweep_train_cli_writes_checkpoint_and_metrics(tmp_path, capsys):
    config = _write_config(tmp_path / "tiny.yaml")
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--set", "optim.lr=0.01", "--set", "batch_size=32"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps_done"] == 20 and metrics["stop_reason"] is None
    assert metrics["config"]["optim"]["lr"] == 0.01 and metrics["config"]["batch_size"] == 32
    assert [h["step"] for h in metrics["history"]] == [0, 10, 20]  # 0: the untrained model
    assert stage(1).selection_metric in metrics["final_metrics"] and "best_metrics" in metrics
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 0.01
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["stage"] == 1 and "backbone" in checkpoint and "heads" in checkpoint
    assert "val_accuracy" in capsys.readouterr().out


def test_sweep_train_cli_stage2_builds_or_reuses_the_datasets(corpus_data_config, tmp_path):
    data = {"games": list(corpus_data_config.games), "dir": corpus_data_config.dir,
            "val_fraction": corpus_data_config.val_fraction}
    config = _write_config(tmp_path / "stage2.yaml", stage=2, data=data, budget={"max_steps": 4, "eval_every": 4},
                           eval_rows=64)
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stage"] == 2 and "val_f1" in metrics["final_metrics"]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_sweep_train_cli_config_errors_name_the_key(tmp_path, capsys):
    config = _write_config(tmp_path / "tiny.yaml")
    assert main(["train", str(config), "--out", str(tmp_path / "x"), "--set", "loss.gama_neg=1"]) == 2
    assert "loss.gama_neg" in capsys.readouterr().err
    assert main(["train", str(config), "--out", str(tmp_path / "x"), "--set", "optim.lr=-1"]) == 2
    assert "optim.lr" in capsys.readouterr().err
    bad = _write_config(tmp_path / "bad.yaml", model={"channels": "wide"})
    assert main(["train", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "model.channels" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err


def test_the_trainer_core_never_imports_optuna_or_ray():
    import subprocess
    import sys

    code = ("import sys, maou.trainer.loop, maou.trainer.tasks, maou.trainer.checkpoint, maou.cli.train; "
            "bad = [m for m in ('optuna', 'ray') if m in sys.modules]; print(*bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_batch_larger_than_the_training_split_is_an_error(stage_data, tiny_config):
    with pytest.raises(UserError, match=f"batch_size 5000 is larger than the training split \\({STAGE1_ROWS_NUM} rows"):
        train_stage(tiny_config(1, batch_size=5000), stage_data(1))
