"""Bad input and failing sweeps through the real CLI: every user-caused error is one line with
exit code 2 and no traceback, found before anything trains; a sweep where no trial completes
stops with exit code 1 and its reasons; export then refuses a winner."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sweep_helpers import run_cli

from maou.sweep.locate import load_spec

TINY = {"name": "bad", "stage": 1, "seeds": 1, "steps": [{"name": "baseline"}],
        "base": {"model": {"blocks": 1, "channels": 8}, "threads": 1},
        "budget": {"max_steps": 10, "eval_every": 5}}
#: SGD at the largest learning rate and positive weight validation allows, no clipping: NaN at once.
EXPLODES = {"name": "sgd", "lr": 100.0, "grad_clip": 0.0, "warmup_fraction": 0.0}


def write_spec(tmp_path: Path, **changes) -> Path:
    data = {**TINY, "storage": f"sqlite:///{tmp_path}/studies/bad.db", "runs_dir": str(tmp_path / "runs"), **changes}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sweep "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_non_utf8_spec_and_config(tmp_path):
    spec = tmp_path / "latin1.yaml"
    spec.write_bytes("name: caf\u00e9\nstage: 1\n".encode("latin-1"))
    assert_one_line_error(run_cli("run", str(spec)), "not UTF-8")
    assert_one_line_error(run_cli("train", str(spec)), "not UTF-8")


def test_yaml_errors_in_a_training_config(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("stage: 1\nmodel: {blocks: 1\n")
    assert_one_line_error(run_cli("train", str(config)), "not valid YAML", "broken.yaml")


@pytest.mark.parametrize("change, fragments", [
    ({"base": {**TINY["base"], "optim": {"lr": float("inf")}}}, ("base.optim.lr", "finite")),
    ({"base": {**TINY["base"], "optim": {"lr": 1e30}}}, ("base.optim.lr", "(0, 100]")),
    ({"base": {**TINY["base"], "batch_size": 1_000_000_000}}, ("base.batch_size",)),
    ({"base": {**TINY["base"], "batch_size": 5000}}, ("batch_size 5000", "1105 rows")),
    ({"base": {**TINY["base"], "init_from": "no/such/checkpoint.pt"}}, ("init_from", "not a checkpoint file")),
    ({"runs_dir": "/proc/version/runs"}, ("runs_dir", "not writable")),
    ({"steps": [{"name": "lr", "grid": {"optim.lr": [0.01, -1]}}]}, ("steps[0].grid.optim.lr",)),
])
def test_bad_values_are_refused_before_training(tmp_path, change, fragments):
    spec = write_spec(tmp_path, **change)
    result = run_cli("run", str(spec))
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "runs" / "01-baseline").exists()  # nothing trained


def test_yaml_1_2_numbers(tmp_path):
    spec = write_spec(tmp_path, steps=[{"name": "lr", "search": {
        "trials": 2, "params": {"optim.lr": {"low": "PLACEHOLDER", "high": 1e-2, "log": True}}}}])
    spec.write_text(spec.read_text().replace("PLACEHOLDER", "1e-4").replace("0.01", "1e-2"))
    assert "low: 1e-4" in spec.read_text()
    params = load_spec(spec).steps[0].search.params["optim.lr"]
    assert params.low == pytest.approx(1e-4) and params.high == pytest.approx(1e-2)


def test_status_export_and_dashboard_of_a_sweep_never_run(tmp_path):
    spec = write_spec(tmp_path)
    for command in (["status"], ["export", "--out", str(tmp_path / "out")], ["dashboard", "--port", "1"]):
        assert_one_line_error(run_cli(*command, str(spec)), "has not run yet")
    assert not (tmp_path / "studies").exists()  # no empty storage created


def test_data_build_onto_a_file(tmp_path):
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    assert_one_line_error(run_cli("data", "build", "--games", str(tmp_path), "--out", str(target)), "is a file")


def test_a_missing_spec_is_one_line(tmp_path):
    assert_one_line_error(run_cli("run", str(tmp_path / "nope.yaml")), "no such sweep spec")


@pytest.mark.slow
def test_a_sweep_where_nothing_completes_exits_1_and_export_refuses_a_winner(tmp_path):
    spec = write_spec(tmp_path, base={**TINY["base"], "optim": EXPLODES, "loss": {"pos_weight": 1e6}},
                      budget={"max_steps": 40, "eval_every": 20})
    result = run_cli("run", str(spec))
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "no trial completed" in result.stderr and "pruned" in result.stderr
    assert "Traceback" not in result.stderr
    assert "PRUNED" in result.stdout  # the console shows how the trial ended, with its reason
    export = run_cli("export", str(spec), "--out", str(tmp_path / "out"))
    assert export.returncode == 1, export.stderr
    assert (tmp_path / "out" / "trials.csv").is_file()
    assert not (tmp_path / "out" / "best.yaml").exists() and not (tmp_path / "out" / "best-args.txt").exists()
    assert "no best.yaml" in export.stdout and "no trial completed" in export.stdout


@pytest.mark.slow
def test_a_corrupt_checkpoint_fails_its_trials_with_the_reason_shown(tmp_path):
    garbage = tmp_path / "corrupt.pt"
    garbage.write_bytes(b"\x00not a torch file" * 10)
    spec = write_spec(tmp_path, base={**TINY["base"], "init_from": str(garbage)})
    result = run_cli("run", str(spec))
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    shown = " ".join(result.stdout.split())  # the console wraps long lines
    assert "FAIL" in shown and "not a readable checkpoint" in shown
    assert "failed error: 1" in result.stderr


def _snapshot(url: str) -> dict:
    """Every study of a storage as plain data: names, attributes, directions, trials."""
    import optuna

    out = {}
    for summary in optuna.get_all_study_summaries(url, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=url)
        system = study._storage.get_study_system_attrs(study._study_id)  # metric names live there
        out[summary.study_name] = (study.user_attrs, system, [d.name for d in study.directions],
                                   [(t.number, t.state.name, t.values, t.params, t.user_attrs, t.system_attrs)
                                    for t in study.get_trials()])
    return out


def test_another_tools_study_under_a_steps_name_is_refused_before_anything_is_written(tmp_path):
    import optuna

    spec = write_spec(tmp_path, name="foreign")
    url = f"sqlite:///{tmp_path}/studies/bad.db"
    (tmp_path / "studies").mkdir()
    study = optuna.create_study(study_name="foreign/01-baseline", storage=url)  # plain Optuna, its own way
    study.set_user_attr("owner", "another tool")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    before = _snapshot(url)
    for command in (["run"], ["status"], ["export", "--out", str(tmp_path / "out")]):
        result = run_cli(*command, str(spec))
        assert_one_line_error(result, "'foreign/01-baseline'", "trial #0 (COMPLETE) has no config_key and seed")
        if command == ["run"]:
            assert "is not step 1 of sweep 'foreign'" in result.stderr and "nothing was written" in result.stderr
    assert _snapshot(url) == before  # no attribute, no metric name, no lock study
    assert not (tmp_path / "runs").exists()


def test_read_commands_never_create_or_migrate_a_storage(tmp_path):
    import hashlib
    import sqlite3

    import optuna

    spec = write_spec(tmp_path)
    db = tmp_path / "studies" / "bad.db"
    db.parent.mkdir()
    db.touch()
    readers = (["status"], ["export", "--out", str(tmp_path / "out")], ["report", "--out", str(tmp_path / "r.html")],
               ["plan", "--no-measure"], ["dashboard", "--port", "1"])
    for command in readers:
        assert_one_line_error(run_cli(*command, str(spec)), f"not an Optuna storage: {db} (an empty file")
        assert db.stat().st_size == 0, command
    db.write_text("notes, not a database\n")
    assert_one_line_error(run_cli("status", str(spec)), f"not an Optuna storage: {db} (not an SQLite database)")
    db.unlink()
    url = f"sqlite:///{db}"
    optuna.create_study(study_name="bad/01-baseline", storage=url)
    connection = sqlite3.connect(db)  # as an older Optuna left it (its tables are a detail here)
    connection.execute("UPDATE alembic_version SET version_num = 'v3.0.0.d'")
    connection.commit()
    connection.close()
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    for command in readers[:2]:
        assert_one_line_error(run_cli(*command, str(spec)), "older Optuna schema (v3.0.0.d",
                              f"optuna storage upgrade --storage {url}")
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest  # not stamped, not migrated
    assert sorted(p.name for p in db.parent.iterdir()) == ["bad.db"]
