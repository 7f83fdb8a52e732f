"""best-args.txt against upstream's own `maou learn-model` options (tests/golden/upstream_learn_model.json):
every flag written exists there and takes the kind of value given, for all three stages; what
upstream cannot express is listed with its reason."""

from __future__ import annotations

import json
import math

import pytest
from conftest import GOLDEN

from maou.sweep.results.upstream import COMMAND, render, upstream_args
from maou.trainer.config import train_config_from_dict

UPSTREAM = json.loads((GOLDEN / "upstream_learn_model.json").read_text())["flags"]


def parse(line: str) -> list[tuple[str, str | None]]:
    """The command line as (flag, value) pairs, read against upstream's options."""
    assert line.startswith(COMMAND + " ")
    tokens = line[len(COMMAND) + 1:].split(" ")
    pairs = []
    while tokens:
        flag = tokens.pop(0)
        assert flag in UPSTREAM, f"{flag} is not an option of upstream's learn-model"
        value = tokens.pop(0) if UPSTREAM[flag]["takes_value"] else None
        pairs.append((flag, value))
    return pairs


def check_against_upstream(config_data: dict) -> tuple[dict[str, str | None], list[str]]:
    text = render(upstream_args(train_config_from_dict(config_data)))
    first, *rest = text.splitlines()
    flags = dict(parse(first))
    for flag, value in flags.items():
        option = UPSTREAM[flag]
        if "choices" in option:
            assert value in option["choices"], (flag, value)
        elif option.get("integer"):
            assert value is not None and value.isdigit(), (flag, value)
        elif option["takes_value"] and flag != "--resume-backbone-from":
            float(value)  # a number
    return flags, rest


def test_stage1_flags_scale_the_learning_rate_and_name_the_stage():
    flags, notes = check_against_upstream({"stage": 1, "batch_size": 1024, "optim": {"lr": 0.002},
                                           "loss": {"pos_weight": 2.0}, "budget": {"epochs": 30}})
    assert flags["--stage"] == "1" and flags["--stage1-batch-size"] == "1024"
    # upstream multiplies by sqrt(1024 / 256) = 2 above batch 256: the flag carries half
    assert float(flags["--stage1-learning-rate"]) == pytest.approx(0.002 / math.sqrt(1024 / 256))
    assert flags["--stage1-max-epochs"] == "30" and flags["--stage1-pos-weight"] == "2.0"
    assert flags["--stage12-lr-scheduler"] == "Warmup+CosineDecay"
    assert "--epoch" not in flags and "--learning-ratio" not in flags
    assert any("model.channels" in n for n in notes) and any("optim.warmup_fraction" in n for n in notes)


def test_stage2_flags_carry_the_asl_head_schedule_and_backbone(tmp_path):
    checkpoint = tmp_path / "stage1" / "checkpoint.pt"
    flags, notes = check_against_upstream({
        "stage": 2, "batch_size": 256, "optim": {"lr": 1e-4, "warmup_fraction": 0.0, "min_lr_ratio": 1.0},
        "loss": {"gamma_neg": 4.0, "asl_clip": 0.02}, "model": {"hidden_dim": 512, "dropout": 0.1},
        "budget": {"max_steps": 200}, "init_from": str(checkpoint)})
    assert flags["--stage"] == "2" and float(flags["--stage2-learning-rate"]) == pytest.approx(1e-4)  # no scaling
    assert flags["--stage2-gamma-neg"] == "4.0" and flags["--stage2-clip"] == "0.02"
    assert flags["--stage2-hidden-dim"] == "512" and flags["--stage2-head-dropout"] == "0.1"
    assert flags["--stage12-lr-scheduler"] == "none"  # a constant rate, said explicitly
    assert flags["--resume-backbone-from"] == str(checkpoint) and "--resume-from" not in flags
    assert any("budget.max_steps" in n and "whole epochs" in n for n in notes)
    assert any("init_from" in n and "convert" in n for n in notes)


def test_stage3_flags_set_the_policy_target_mode_and_list_the_value_loss():
    flags, notes = check_against_upstream({
        "stage": 3, "batch_size": 1024, "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "loss": {"value_loss": "mse", "value_loss_ratio": 2.0}, "model": {"arch": "mlp_mixer"},
        "budget": {"epochs": 10.5}, "freeze_backbone": True})
    assert flags["--stage"] == "3" and flags["--batch-size"] == "1024"
    assert float(flags["--learning-ratio"]) == 0.05  # Stage 3: no scaling upstream
    assert flags["--epoch"] == "11" and flags["--optimizer"] == "sgd" and flags["--momentum"] == "0.9"
    assert flags["--policy-target-mode"] == "move-label" and flags["--value-loss-ratio"] == "2.0"
    assert flags["--model-architecture"] == "mlp-mixer" and "--freeze-backbone" in flags
    assert flags["--lr-scheduler"] == "Warmup+CosineDecay"
    assert any("loss.value_loss = mse" in n for n in notes)
    assert any("budget.epochs = 10.5" in n for n in notes)


def test_every_stage_default_config_is_expressible_flag_by_flag():
    for stage in (1, 2, 3):
        flags, _ = check_against_upstream({"stage": stage})
        assert flags["--stage"] == str(stage)
