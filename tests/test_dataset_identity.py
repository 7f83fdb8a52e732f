"""The data a trial trains on is the data its sweep recorded: default build folders keyed by the
corpus, a corpus changed under a sweep refused with what changed, the loaded data verified
against the recorded hash, two corpora swept at once without sharing files."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import yaml
from sweep_helpers import REPO, SWEEP

from maou.data.build import build_dir, ensure_datasets
from maou.data.resolve import DatasetChanged, dataset_of, load_datasets
from maou.trainer.config import DataConfig, train_config_from_dict

GAMES = sorted((REPO / "data" / "games").glob("*.csa"))


def corpus(folder: Path, games: list[Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for game in games:
        shutil.copy(game, folder / game.name)
    return folder


def test_default_build_folders_are_keyed_by_the_corpus_and_split(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert build_dir(DataConfig(games=(a,))) != build_dir(DataConfig(games=(b,)))
    assert build_dir(DataConfig(games=(a,))) == build_dir(DataConfig(games=(a,)))
    assert build_dir(DataConfig(games=(a,))) != build_dir(DataConfig(games=(a,), split_seed=1))
    assert build_dir(DataConfig(games=(a,), dir="mine")) == Path("mine")  # an explicit folder is kept
    assert build_dir(DataConfig(games=(a,))).parent == Path("data/build")


def test_loaded_data_is_verified_against_the_recorded_hash(tmp_path):
    games = corpus(tmp_path / "games", GAMES[:12])
    config = train_config_from_dict({"stage": 2, "data": {"games": [str(games)], "dir": str(tmp_path / "d")}})
    recorded = dataset_of(config)
    assert load_datasets(config, recorded).content_hash == recorded.content_hash
    with pytest.raises(DatasetChanged, match="changed under this sweep"):
        load_datasets(config, replace(recorded, content_hash="0" * 64))
    shutil.copy(GAMES[20], games / GAMES[20].name)  # the corpus grows: the folder is rebuilt on load...
    with pytest.raises(DatasetChanged):  # ... and the trial refuses data other than its sweep's
        load_datasets(config, recorded)
    ensure_datasets(config.data, progress=False)


def tiny_spec(folder: Path, name: str, games: Path) -> Path:
    data = {"name": name, "stage": 2, "seeds": 1, "steps": [{"name": "baseline"}],
            "data": {"games": [str(games)]},  # the default data.dir: data/build/<key> under the cwd
            "base": {"model": {"blocks": 1, "channels": 8}, "threads": 1, "eval_rows": 64, "batch_size": 32},
            "budget": {"max_steps": 10, "eval_every": 5},
            "storage": f"sqlite:///{folder}/{name}.db", "runs_dir": str(folder / "runs" / name),
            "executor": {"kind": "local"}}  # in process: one training, no worker to start
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def sweep(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([SWEEP, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "COLUMNS": "200"})


def trials(spec: Path) -> list[optuna.trial.FrozenTrial]:
    data = yaml.safe_load(spec.read_text())
    return optuna.load_study(study_name=f"{data['name']}/01-baseline", storage=data["storage"]).get_trials()


@pytest.mark.slow
def test_a_corpus_changed_under_a_sweep_is_refused_with_what_changed(tmp_path):
    games = corpus(tmp_path / "games", GAMES[:12])
    spec = tiny_spec(tmp_path, "grows", games)
    first = sweep("run", str(spec), cwd=tmp_path)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out[-2000:] + err[-2000:]
    shutil.copy(GAMES[30], games / GAMES[30].name)
    again = sweep("run", str(spec), cwd=tmp_path)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 2, out[-2000:] + err[-2000:]
    assert "game records under data.games changed" in err and "dataset_hash" in err and "Traceback" not in err


@pytest.mark.slow
def test_two_corpora_swept_at_once_each_train_on_their_own(tmp_path):
    games = {"left": corpus(tmp_path / "left", GAMES[:12]), "right": corpus(tmp_path / "right", GAMES[12:24])}
    together, alone = tmp_path / "together", tmp_path / "alone"
    for folder in (together, alone):
        folder.mkdir()
    specs = {name: tiny_spec(together, name, g) for name, g in games.items()}
    running = [sweep("run", str(spec), cwd=together) for spec in specs.values()]  # both build at once
    for driver in running:
        out, err = driver.communicate(timeout=300)
        assert driver.returncode == 0, out[-2000:] + err[-2000:]
    hashes = {name: {t.user_attrs["dataset_hash"] for t in trials(spec)} for name, spec in specs.items()}
    assert all(len(h) == 1 for h in hashes.values()) and hashes["left"] != hashes["right"]
    for name, spec in specs.items():
        solo = tiny_spec(alone, name, games[name])
        driver = sweep("run", str(solo), cwd=alone)
        out, err = driver.communicate(timeout=300)
        assert driver.returncode == 0, out[-2000:] + err[-2000:]
        assert [t.value for t in trials(spec)] == [t.value for t in trials(solo)]
        assert {t.user_attrs["dataset_hash"] for t in trials(solo)} == hashes[name]
    built = sorted(p.name for p in (together / "data" / "build").iterdir())
    assert len(built) == 2  # one folder each
