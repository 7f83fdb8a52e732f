"""best-args.txt against upstream's own `maou learn-model` options (tests/golden/upstream_learn_model.json):
every flag written exists there and takes the kind of value given, for all three stages; the
stage's data path names the built training file and a step budget its epochs; what upstream
cannot express is listed with its reason; `sweep export` prints the command on one line."""

from __future__ import annotations

import json
import math
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import BUNDLED_GAMES, GOLDEN

from maou.data.dense import size_text
from maou.sweep.results.upstream import COMMAND, render, upstream_args
from maou.trainer.config import train_config_from_dict

UPSTREAM = json.loads((GOLDEN / "upstream_learn_model.json").read_text())["flags"]
#: Flags whose value is a path.
PATHS = {"--resume-backbone-from", "--stage1-data-path", "--stage2-data-path", "--stage3-data-path"}


def parse(line: str) -> list[tuple[str, str | None]]:
    """The command line as (flag, value) pairs, read against upstream's options (as a shell splits it)."""
    assert line.startswith(COMMAND + " ")
    tokens = shlex.split(line[len(COMMAND) + 1:])
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
        elif option["takes_value"] and flag not in PATHS:
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


# --- the data upstream trains on, and the budget in its epochs ------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """A corpus of 12 bundled games and its built datasets: the ``data`` section of a config."""
    from maou.data.build import ensure_datasets
    from maou.trainer.config import DataConfig

    root = tmp_path_factory.mktemp("upstream-data")
    games = root / "games"
    games.mkdir()
    for game in sorted(BUNDLED_GAMES.glob("*.csa"))[:12]:
        shutil.copy(game, games / game.name)
    data = {"games": [str(games)], "dir": str(root / "build"), "val_fraction": 0.2, "split_seed": 0}
    ensure_datasets(DataConfig(games=(str(games),), dir=data["dir"], val_fraction=0.2), progress=False)
    return data


def train_rows(data: dict, stage: int) -> int:
    return json.loads((Path(data["dir"]) / f"stage{stage}" / "manifest.json").read_text())["rows"]["train"]


def test_stage2_data_path_is_the_built_training_file_and_a_step_budget_its_epochs(built):
    flags, notes = check_against_upstream({"stage": 2, "data": built, "batch_size": 32,
                                           "budget": {"max_steps": 100}})
    path = Path(flags["--stage2-data-path"])
    assert path.is_absolute() and path == Path(built["dir"]).resolve() / "stage2" / "train.feather"
    assert path.is_file()  # upstream checks that the path exists; a folder would be read whole (manifest.json)
    rows = train_rows(built, 2)
    epochs = 100 * 32 / rows
    assert flags["--stage2-max-epochs"] == str(math.ceil(epochs))  # whole epochs, rounded up
    (budget,) = [n for n in notes if "budget.max_steps = 100" in n]
    assert f"100 steps x batch 32 / {rows:,} training rows = {epochs:.4g} epochs" in budget
    assert f"--stage2-max-epochs {math.ceil(epochs)} written (rounded up)" in budget
    assert any(n.startswith("# --stage2-data-path: the training split") and f"{rows:,} rows" in n for n in notes)


def test_stage3_data_path_and_epochs(built):
    flags, notes = check_against_upstream({"stage": 3, "data": built, "budget": {"epochs": 2}})
    assert Path(flags["--stage3-data-path"]) == Path(built["dir"]).resolve() / "stage3" / "train.feather"
    assert flags["--epoch"] == "2" and not any("budget." in n for n in notes)
    flags, notes = check_against_upstream({"stage": 3, "data": built, "batch_size": 16, "budget": {"max_steps": 7}})
    rows = train_rows(built, 3)
    assert flags["--epoch"] == str(math.ceil(7 * 16 / rows))
    assert any(f"7 steps x batch 16 / {rows:,} training rows" in n for n in notes)


def test_a_compact_built_file_says_upstream_needs_its_dense_copy_and_its_size(built):
    """Upstream reads legalMovesLabel / moveLabel, not the build's compact columns: the note names the
    columns, the command that writes the dense copy and its dense size (rows x bytes a dense row)."""
    for stage, columns, compact, row_bytes in (
            (2, "legalMovesLabel", "legalMovesLabel as legalMovesBits (bitpacked)", 8 + 81 + 14 + 1496),
            (3, "moveLabel, resultValue", "moveLabel as moveLabelSparse (sparse)", 8 + 81 + 14 + 1496 * 4 + 4)):
        _, notes = check_against_upstream({"stage": stage, "data": built})
        (need,) = [n for n in notes if "upstream needs the dense copy" in n]
        assert f"upstream reads its dense columns ({columns}) and this file stores {compact}" in need
        size = size_text(train_rows(built, stage) * row_bytes)
        assert f"run `sweep export SPEC --upstream-data` to write it ({size} dense, less on disk: LZ4)" in need
    _, notes = check_against_upstream({"stage": 1, "data": built})
    assert not any("dense copy" in n for n in notes)  # Stage 1's file is upstream's dense form already


def test_upstream_data_refuses_a_missing_or_damaged_built_file(built, tmp_path):
    from maou.errors import UserError
    from maou.sweep.results.export import DenseRequest, Export, _dense_data
    from maou.sweep.results.upstream import UpstreamData, upstream_data

    request = DenseRequest(write=True, command="sweep export x --upstream-data")
    missing = UpstreamData(tmp_path / "never built" / "stage2" / "train.feather", None, "no manifest")
    export = Export()
    data = _dense_data(2, missing, tmp_path / "out", export, request)
    assert data.path == missing.path and data.dense_of is None and export.upstream_copy is None
    assert "is not on this machine, so neither is its dense copy" in (export.no_upstream_data or "")
    copy = tmp_path / "build"
    shutil.copytree(built["dir"], copy)
    with open(copy / "stage2" / "train.feather", "r+b") as handle:
        handle.truncate(1000)
    damaged = upstream_data(train_config_from_dict({"stage": 2, "data": {**built, "dir": str(copy)}}))
    with pytest.raises(UserError, match="does not match its manifest.*rebuild it with `sweep data build"):
        _dense_data(2, damaged, tmp_path / "out", Export(), request)
    assert not (tmp_path / "out" / "upstream-data" / "stage2" / "train.feather").exists()


def test_stage1_data_path_is_the_built_synthetic_rows(built):
    flags, notes = check_against_upstream({"stage": 1, "data": built, "batch_size": 100,
                                           "budget": {"max_steps": 50}})
    path = Path(flags["--stage1-data-path"])
    assert path == Path(built["dir"]).resolve() / "stage1" / "all.feather" and path.is_file()
    assert flags["--stage1-max-epochs"] == str(math.ceil(50 * 100 / 1105))  # the 1,105 synthetic rows
    assert any("synthetic" in n and "does not generate them" in n for n in notes)


def test_without_a_build_the_data_path_says_how_and_no_epochs_are_guessed(tmp_path):
    data = {"games": [str(tmp_path / "games")], "dir": str(tmp_path / "never built")}
    flags, notes = check_against_upstream({"stage": 2, "data": data, "budget": {"max_steps": 100},
                                           "init_from": str(tmp_path / "stage1" / "checkpoint.pt")})
    assert flags["--stage2-data-path"] == str(tmp_path / "never built" / "stage2" / "train.feather")  # quoted: a space
    assert "--stage2-max-epochs" not in flags and flags["--resume-backbone-from"].endswith("checkpoint.pt")
    assert any("is not on this machine" in n and "sweep data build" in n for n in notes)
    assert any("budget.max_steps = 100" in n and "training rows are unknown" in n and "no --stage2-max-epochs" in n
               for n in notes)
    line = render(upstream_args(train_config_from_dict({"stage": 2, "data": data}))).splitlines()[0]
    assert f"--stage2-data-path '{tmp_path / 'never built'}/stage2/train.feather'" in line


@pytest.mark.slow
def test_sweep_export_prints_the_command_on_one_line_at_any_width(tmp_path):
    """A Stage 1 sweep, run and exported through the CLI in a 60-column terminal: the command printed is
    best-args.txt's first line, whole; Stage 1's data is written beside it (no build ran)."""
    import os
    import subprocess

    import pyarrow as pa
    from sweep_helpers import SWEEP, run_cli

    spec = tmp_path / "narrow.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "narrow", "stage": 1, "seeds": 1, "steps": [{"name": "baseline"}],
        "base": {"model": {"blocks": 1, "channels": 8}, "threads": 1}, "budget": {"max_steps": 10, "eval_every": 5},
        "storage": f"sqlite:///{tmp_path}/studies/narrow.db", "runs_dir": str(tmp_path / "runs")}))
    ran = run_cli("run", str(spec))
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "60"}
    export = subprocess.run([SWEEP, "export", str(spec), "--out", str(tmp_path / "out")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stdout[-2000:] + export.stderr[-2000:]
    command = (tmp_path / "out" / "best-args.txt").read_text().splitlines()[0]
    assert len(command) > 60
    printed = export.stdout.splitlines()
    assert command in printed  # one line, unwrapped, identical
    assert not any(line != command and line and command.startswith(line) for line in printed)  # never cut
    flags = dict(parse(command))
    data = Path(flags["--stage1-data-path"])
    assert data == (tmp_path / "out" / "stage1" / "all.feather").resolve()
    with pa.memory_map(str(data)) as source:
        assert pa.ipc.open_file(source).read_all().num_rows == 1105
    dense = run_cli("export", str(spec), "--out", str(tmp_path / "out"), "--upstream-data")
    assert dense.returncode == 0, dense.stdout[-2000:] + dense.stderr[-2000:]
    assert "Stage 1's data file is upstream's dense form already: no copy to write" in " ".join(dense.stdout.split())
    assert not (tmp_path / "out" / "upstream-data").exists()


def test_rich_console_at_60_columns_prints_the_command_whole():
    import io

    from rich.console import Console

    from maou.cli.results import print_upstream

    text = render(upstream_args(train_config_from_dict({"stage": 2, "data": {"dir": "/data/[b]uild :x:"}})))
    buffer = io.StringIO()
    print_upstream(Console(file=buffer, width=60), text)
    assert buffer.getvalue().splitlines()[1] == text.splitlines()[0]  # no markup, no emoji, no wrap
