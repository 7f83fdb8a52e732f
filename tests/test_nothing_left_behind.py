"""Refused runs leave nothing behind, and retraining never overwrites (issue 27, parts 4 and 5).

Through the real CLI in a temporary project (``sweeps/`` with the default storage, runs, results
and build folders inside it), on real SQLite: a spec whose games are missing or empty, whose
storage cannot be opened or which cannot be read is refused by ``sweep plan`` and ``sweep run`` in
one line before anything is created; ``sweep report`` refuses a storage without a step as
``sweep export`` does, and no reader creates a storage; two ``sweep train`` runs of one config keep
both checkpoints, each in the folder it prints."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from sweep_helpers import bundled_games, one_line_error, run_cli

#: What a refused command may leave in the project: the folders the test made itself.
CREATED = ("studies", "results", "runs", "data")


def write_spec(root: Path, name: str = "tiny", stage: int = 2, **changes) -> Path:
    """``root/sweeps/<name>.yaml``: a one-step, one-training spec with the default storage
    (``studies/<name>.db``), runs, results and build folders, its games in ``root/games``."""
    (root / "sweeps").mkdir(parents=True, exist_ok=True)
    data = {"name": name, "stage": stage, "seeds": 1, "steps": [{"name": "baseline"}],
            "base": {"model": {"blocks": 1, "channels": 8}, "threads": 1, "batch_size": 16, "device": "cpu"},
            "budget": {"max_steps": 4, "eval_every": 2}, "executor": {"kind": "local"}}
    if stage != 1:
        data["data"] = {"games": ["games"]}
    data.update(changes)
    path = root / "sweeps" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def assert_nothing_created(root: Path, *also: Path) -> None:
    for name in CREATED:
        assert not (root / name).exists(), f"{name}/ was created: {sorted(p.name for p in (root / name).rglob('*'))}"
    for path in also:
        assert not path.exists(), f"{path} was created"


# --- sweep plan / sweep run: refused before anything is created ----------------------------------------


@pytest.mark.parametrize("games", ["missing", "empty", "no record files"])
@pytest.mark.parametrize("command", ["plan", "run"])
def test_missing_or_empty_games_are_one_line_and_nothing_is_created(tmp_path, command, games):
    write_spec(tmp_path)
    if games == "empty":
        (tmp_path / "games").mkdir()
    elif games == "no record files":
        (tmp_path / "games" / "notes").mkdir(parents=True)
        (tmp_path / "games" / "notes" / "readme.txt").write_text("not a game")
    result = run_cli(command, "tiny", cwd=tmp_path)
    if games == "missing":
        one_line_error(result, f"sweep {command}: error: no such game record file or folder: {tmp_path / 'games'}")
    else:
        one_line_error(result, f"sweep {command}: error: no readable games in {tmp_path / 'games'}:")
    assert_nothing_created(tmp_path)


def test_a_stage_with_synthetic_rows_needs_no_games(tmp_path):
    write_spec(tmp_path, stage=1, data={"games": ["no/such/games"]})
    result = run_cli("plan", "tiny", "--no-measure", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert_nothing_created(tmp_path)


@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_storage_under_a_regular_file_is_one_line_and_nothing_is_created(tmp_path, command):
    (tmp_path / "afile").write_text("a file, not a folder")
    write_spec(tmp_path, stage=1, storage="sqlite:///afile/tiny.db")
    one_line_error(run_cli(command, "tiny", cwd=tmp_path),
                   f"sweep {command}: error: cannot create the storage {tmp_path / 'afile' / 'tiny.db'}: "
                   f"{tmp_path / 'afile'} is not a folder")
    assert_nothing_created(tmp_path)
    assert (tmp_path / "afile").read_text() == "a file, not a folder"


@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_storage_path_that_is_a_folder_or_not_sqlite_is_one_line(tmp_path, command):
    write_spec(tmp_path, stage=1)
    (tmp_path / "folder.db").mkdir()
    one_line_error(run_cli(command, "tiny", "--storage", f"sqlite:///{tmp_path}/folder.db", cwd=tmp_path),
                   f"the storage {tmp_path / 'folder.db'} is a folder, not a file")
    (tmp_path / "junk.db").write_text("not a database")
    one_line_error(run_cli(command, "tiny", "--storage", f"sqlite:///{tmp_path}/junk.db", cwd=tmp_path),
                   f"not an Optuna storage: {tmp_path / 'junk.db'} (not an SQLite database)")
    assert_nothing_created(tmp_path)
    assert (tmp_path / "junk.db").read_text() == "not a database"


@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_malformed_storage_url_is_one_line_and_nothing_is_created(tmp_path, command):
    write_spec(tmp_path, stage=1, storage="sqlite:/studies/tiny.db")
    one_line_error(run_cli(command, "tiny", cwd=tmp_path), "bad storage URL", "did you mean sqlite:///studies/tiny.db")
    assert_nothing_created(tmp_path)


@pytest.mark.parametrize("text, fragment", [
    ("name: tiny\nstage: [1\n", "not valid YAML"),
    ("name: tiny\nstage: 1\nsteps: [{name: baseline}]\nbogus: 1\n", "bogus: unknown key"),
])
@pytest.mark.parametrize("command", ["plan", "run"])
def test_an_unreadable_spec_is_one_line_and_nothing_is_created(tmp_path, command, text, fragment):
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "tiny.yaml").write_text(text)
    one_line_error(run_cli(command, "tiny", cwd=tmp_path), f"sweep {command}: error:", fragment)
    assert_nothing_created(tmp_path)


@pytest.mark.parametrize("command", [["run", "--with-deps"], ["plan"]])
def test_a_prerequisite_without_games_is_refused_before_anything_runs(tmp_path, command):
    """The chain is checked whole first: the main spec is fine, the spec it starts from has no
    games; `sweep run --with-deps` would run that one first, so neither runs."""
    (tmp_path / "games").mkdir()
    shutil.copy(bundled_games(1)[0], tmp_path / "games")
    write_spec(tmp_path, "first", data={"games": ["other-games"]})
    write_spec(tmp_path, "second", base={"model": {"blocks": 1, "channels": 8}, "threads": 1, "batch_size": 16,
                                         "device": "cpu", "init_from": "winner-of:sweeps/first.yaml"})
    one_line_error(run_cli(command[0], "second", *command[1:], cwd=tmp_path),
                   "prerequisite first: no such game record file or folder", str(tmp_path / "other-games"))
    assert_nothing_created(tmp_path)


# --- readers: a storage without a step, or none at all ----------------------------------------------------


@pytest.mark.parametrize("content", ["no study", "a lock study only"])
def test_report_refuses_a_storage_without_a_step_as_export_does(tmp_path, content):
    import optuna

    write_spec(tmp_path, stage=1)
    (tmp_path / "studies").mkdir()
    url = f"sqlite:///{tmp_path}/studies/tiny.db"
    if content == "no study":
        optuna.storages.RDBStorage(url)  # Optuna's tables, not one study
    else:
        optuna.create_study(study_name="tiny@lock", storage=url)
    for command in ("report", "export"):
        one_line_error(run_cli(command, "tiny", cwd=tmp_path), f"sweep {command}: error: sweep 'tiny' has no step in",
                       "run `sweep run` first")
    assert not (tmp_path / "results").exists()


def test_readers_never_create_a_storage(tmp_path):
    write_spec(tmp_path, stage=1)
    for command in ("report", "export", "status"):
        one_line_error(run_cli(command, "tiny", cwd=tmp_path), "has not run yet")
    assert_nothing_created(tmp_path)


# --- sweep train: a new folder each run --------------------------------------------------------------------


def write_config(root: Path, name: str = "tiny-train", **changes) -> Path:
    config = {"stage": 1, "model": {"blocks": 1, "channels": 8}, "threads": 1, "device": "cpu",
              "budget": {"max_steps": 2, "eval_every": 2}, **changes}
    path = root / "results" / "tiny" / f"{name}.yaml"  # where `sweep export` writes best.yaml
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_two_trainings_of_one_config_keep_both_checkpoints(tmp_path):
    (tmp_path / "sweeps").mkdir()  # the project: runs/ is read against it, as specs are
    config = write_config(tmp_path)
    first = run_cli("train", "results/tiny/tiny-train.yaml", cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert "wrote runs/tiny-train: checkpoint.pt, metrics.json, config.yaml" in first.stdout, first.stdout[-2000:]
    checkpoint = tmp_path / "runs" / "tiny-train" / "checkpoint.pt"
    kept = checkpoint.read_bytes()
    # again, from a folder inside the project: the same runs/, a folder of its own
    second = run_cli("train", "tiny-train.yaml", cwd=config.parent)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert f"wrote {tmp_path / 'runs' / 'tiny-train-2'}: checkpoint.pt" in second.stdout, second.stdout[-2000:]
    assert checkpoint.read_bytes() == kept
    assert (tmp_path / "runs" / "tiny-train-2" / "checkpoint.pt").is_file()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["tiny-train", "tiny-train-2"]
    assert not (config.parent / "runs").exists()
    # an explicit --out that holds a checkpoint: refused, nothing overwritten
    refused = run_cli("train", str(config), "--out", "runs/tiny-train", cwd=tmp_path)
    one_line_error(refused, "sweep train: error: --out runs/tiny-train already holds a checkpoint")
    assert checkpoint.read_bytes() == kept
    # a fresh --out is written as given
    out = run_cli("train", str(config), "--out", str(tmp_path / "elsewhere"), cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert (tmp_path / "elsewhere" / "checkpoint.pt").is_file()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["tiny-train", "tiny-train-2"]


@pytest.mark.parametrize("case", ["invalid", "missing games", "empty games"])
def test_a_training_that_cannot_start_creates_nothing(tmp_path, case):
    (tmp_path / "sweeps").mkdir()
    if case == "invalid":
        config = write_config(tmp_path, bogus=1)
        fragment = "bogus: unknown key"
    else:
        if case == "empty games":
            (tmp_path / "games").mkdir()
        config = write_config(tmp_path, stage=2, data={"games": [str(tmp_path / "games")]})
        fragment = "no such game record file or folder" if case == "missing games" else "no readable games in"
    one_line_error(run_cli("train", str(config), cwd=tmp_path), "sweep train: error:", fragment)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()
