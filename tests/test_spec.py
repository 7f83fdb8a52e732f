"""Sweep spec validation: every error names the key path and the bad value; nothing is created."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from maou.cli import main
from maou.strict import ConfigError
from maou.sweep.locate import load_spec
from maou.sweep.spec import step_candidates

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "sweeps").glob("*.yaml"))

GOOD = {
    "name": "t",
    "stage": 2,
    "base": {"model": {"blocks": 2, "channels": 16}, "batch_size": 32},
    "budget": {"max_steps": 20, "eval_every": 10},
    "seeds": 2,
    "steps": [{"name": "baseline"}, {"name": "gamma-neg", "grid": {"loss.gamma_neg": [1, 2]}}],
}


def write(tmp_path, data) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def with_change(path: str, value):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    node = data
    parts = path.split("/")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[parts[-1]] = value
    return data


@pytest.mark.parametrize("spec", SHIPPED, ids=lambda p: p.name)
def test_shipped_specs_are_valid(spec):
    loaded = load_spec(spec)
    assert loaded.steps


def test_good_spec_loads(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    assert spec.seed_list == (0, 1)
    assert spec.storage_url == f"sqlite:///{tmp_path}/studies/t.db"  # the spec's project: its folder
    assert spec.study_name(1) == "t/02-gamma-neg"
    assert step_candidates(spec.steps[1]) == [{"loss.gamma_neg": 1}, {"loss.gamma_neg": 2}]
    assert spec.base_config().loss.gamma_neg == 0.0


@pytest.mark.parametrize("change,path_in_message,value_in_message", [
    (("base/loss", {"gama_neg": 2}), "base.loss.gama_neg", "unknown key"),
    (("base/batch_size", "big"), "base.batch_size", "'big'"),
    (("base/loss", {"gamma_neg": -1}), "base.loss.gamma_neg", "-1"),
    (("steps/1/grid", {"loss.gamma_neg": []}), "steps[1].grid.loss.gamma_neg", "empty grid"),
    (("steps/1/grid", {"loss.gamma_neg": [1, -2]}), "steps[1].grid.loss.gamma_neg", "-2"),
    (("steps/1/grid", {"loss.clip": [0.01]}), "steps[1].grid.loss.clip", "not a searchable"),
    (("budget/eval_every", 0), "budget.eval_every", "0"),
    (("stage", 4), "stage", "4"),
    (("seeds", []), "seeds", "at least one seed"),
    (("steps/0/name", "bad name!"), "steps[0].name", "bad name!"),
    (("executor", {"kind": "slurm"}), "executor.kind", "'slurm'"),
    (("unknown_top", 1), "unknown_top", "unknown key"),
])
def test_spec_errors_name_path_and_value(tmp_path, change, path_in_message, value_in_message):
    key, value = change
    with pytest.raises(ConfigError) as info:
        load_spec(write(tmp_path, with_change(key, value)))
    message = str(info.value)
    assert path_in_message in message
    assert value_in_message in message


def test_cli_rejects_bad_spec_without_creating_a_study(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = with_change("base/loss", {"gamma_neg": -1})
    bad["storage"] = f"sqlite:///{tmp_path}/studies/t.db"
    code = main(["run", str(write(tmp_path, bad))])
    err = capsys.readouterr().err
    assert code == 2
    assert "base.loss.gamma_neg" in err and "-1" in err
    assert not (tmp_path / "studies").exists()


def test_missing_spec_file_is_a_one_line_error(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no such sweep spec" in err and "\n" not in err


def test_base_must_not_set_budget_or_stage(tmp_path):
    data = with_change("base/max_steps", 100)
    with pytest.raises(ConfigError, match=r"base\.max_steps"):
        load_spec(write(tmp_path, data))


def test_a_spec_is_found_by_name_from_anywhere_in_its_project(tmp_path, monkeypatch):
    from maou.errors import UserError
    from maou.sweep.locate import locate_spec

    (tmp_path / "sweeps").mkdir()
    target = tmp_path / "sweeps" / "stage2-asl.yaml"
    target.write_text(yaml.safe_dump(GOOD))
    deep = tmp_path / "notebooks" / "today"
    deep.mkdir(parents=True)
    for name in ("stage2-asl", "stage2-asl.yaml", "sweeps/stage2-asl.yaml"):
        assert locate_spec(name, deep).resolve() == target.resolve()
    with pytest.raises(UserError, match="no such sweep spec: stage2-als; did you mean stage2-asl"):
        locate_spec("stage2-als", deep)


def test_one_walk_finds_the_projects_of_a_folder_for_specs_and_for_sweep_train(tmp_path):
    from maou.cli.train import project_runs
    from maou.sweep.locate import projects_above

    inner = tmp_path / "outer" / "inner"
    (inner / "sweeps").mkdir(parents=True)
    (tmp_path / "outer" / "sweeps").mkdir()
    deep = inner / "results" / "x"
    deep.mkdir(parents=True)
    assert projects_above(deep)[:2] == [inner, tmp_path / "outer"]  # nearest first
    assert project_runs(deep / "best.yaml") == inner / "runs"
    assert projects_above(inner)[0] == inner  # a project is in itself


def test_relative_paths_inside_a_spec_are_read_against_its_project_root(tmp_path, monkeypatch):
    (tmp_path / "sweeps").mkdir()
    data = {**GOOD, "data": {"games": ["data/games"]}, "runs_dir": "runs/here",
            "base": {**GOOD["base"], "init_from": "runs/stage1/checkpoint.pt"},
            "steps": [{"name": "pre", "grid": {"init_from": [None, "winner-of:sweeps/other.yaml"]}}]}
    path = tmp_path / "sweeps" / "rel.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path / "sweeps")  # started from elsewhere
    spec = load_spec(path)
    assert spec.data.games == (str(tmp_path / "data" / "games"),)
    assert spec.data.dir.startswith(str(tmp_path / "data" / "build"))
    assert spec.runs_dir == str(tmp_path / "runs" / "here")
    assert spec.storage_url == f"sqlite:///{tmp_path}/studies/t.db" and spec.results_path == tmp_path / "results" / "t"
    assert spec.base["init_from"] == str(tmp_path / "runs" / "stage1" / "checkpoint.pt")
    assert spec.steps[0].grid["init_from"] == [None, f"winner-of:{tmp_path}/sweeps/other.yaml"]
