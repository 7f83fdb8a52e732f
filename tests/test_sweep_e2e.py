"""End to end through the real CLI: `sweep run` on SQLite, resume after a kill, export, dashboard."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from sweep_helpers import SWEEP, dashboard_studies, free_port, run_cli, step_studies, tmp_spec
from test_locks import outcome_of, running_trials, solo_outcome, start_driver, wait_for, write_spec

from maou.cli.view import _fmt

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, bundled_data_dir):
    tmp = tmp_path_factory.mktemp("smoke")
    spec = tmp_spec("smoke.yaml", tmp, bundled_data_dir)
    result = run_cli("run", str(spec))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = yaml.safe_load(spec.read_text())
    return spec, data["storage"], result


def finished_pairs(study):
    return [(t.user_attrs["config_key"], t.user_attrs["seed"]) for t in study.get_trials()
            if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]


def test_smoke_sweep_produces_every_step_in_sqlite(smoke_run):
    spec, url, result = smoke_run
    names = sorted(s.study_name for s in step_studies(url))
    assert names == ["smoke/01-baseline", "smoke/02-gamma-neg", "smoke/03-asl-clip"]
    for name in names:
        study = optuna.load_study(study_name=name, storage=url)
        assert "decision" in study.user_attrs
        pairs = finished_pairs(study)
        assert len(pairs) == len(set(pairs)), "a configuration and seed ran twice"
        for t in study.get_trials():
            assert t.user_attrs["config"]["stage"] == 2
            assert t.user_attrs["package_version"]
            assert t.user_attrs.get("dataset_hash")
            if t.state == optuna.trial.TrialState.COMPLETE:
                assert len(t.intermediate_values) >= 3  # evaluations at steps 10, 20, 30
                assert 0.0 <= t.value <= 1.0
    gamma = optuna.load_study(study_name="smoke/02-gamma-neg", storage=url)
    assert {t.params["loss.gamma_neg"] for t in gamma.get_trials()} == {0.0, 1.0, 2.0}
    assert "decision" in result.stdout and "leaderboard" in result.stdout
    printed = " ".join(result.stdout.split())  # rich wraps long lines at 80 columns
    for t in gamma.get_trials(states=[optuna.trial.TrialState.COMPLETE]):
        # the value recorded (on the whole validation split), not the last thinned evaluation
        assert f"seed={t.user_attrs['seed']} val_f1={_fmt(t.value)} at step" in printed


def test_status_counts_states(smoke_run):
    spec, url, _ = smoke_run
    result = run_cli("status", str(spec))
    assert result.returncode == 0, result.stderr
    for name in ("1. baseline", "2. gamma-neg", "3. asl-clip"):
        assert name in result.stdout
    assert "complete" in result.stdout


def test_export_writes_files_with_their_columns(smoke_run, tmp_path):
    spec, url, _ = smoke_run
    result = run_cli("export", str(spec), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    for column in ("study", "step", "trial", "state", "seed", "config", "value", "prune_reason",
                   "loss.gamma_neg", "optim.lr", "batch_size", "model.channels", "winner", "reused",
                   "final_val_f1", "best_val_f1", "wall_time_s", "device"):
        assert column in trials.columns, column
    # every row carries every resolved key, searched in its step or not
    assert trials["loss.gamma_neg"].notna().all() and trials["optim.lr"].notna().all()
    last = trials[trials["study"] == "smoke/03-asl-clip"]
    assert set(last["loss.gamma_neg"]) <= {0.0, 1.0, 2.0} and last["loss.asl_clip"].notna().all()
    # copies are marked: counting each (configuration, seed) once is one filter away
    fresh = trials[~trials["reused"]]
    assert len(fresh) == len(fresh.drop_duplicates(["config", "seed"]))
    assert trials.groupby("study")["winner"].any().all()
    assert set(trials["study"]) == {"smoke/01-baseline", "smoke/02-gamma-neg", "smoke/03-asl-clip"}
    steps = pd.read_csv(tmp_path / "out" / "steps.csv")
    assert list(steps.columns) == ["study", "step", "metric", "direction", "config", "mean", "std", "sem", "n",
                                   "pruned", "failed", "winner", "final_winner", "carried", "adopted", "gain",
                                   "gain_se", "p", "holm_level", "needed", "significant", "guard_failures", "edge",
                                   "raced", "device"]
    assert steps.groupby("study")["winner"].sum().eq(1).all()
    # the sweep's own winner: one row, on the last step, the configuration best.yaml holds
    (final,) = steps[steps["final_winner"]].itertuples()
    assert final.study == "smoke/03-asl-clip" and final.winner
    assert set(steps["metric"]) == {"val_f1"} and set(steps["direction"]) == {"maximize"}
    assert set(steps["device"]) == {"cpu"} and set(trials["device"]) == {"cpu"}  # where they ran, not "auto"
    assert set(trials["metric"]) == {"val_f1"} and set(trials["requested_device"]) == {"auto"}
    marked = trials[trials["final_winner"]]
    assert len(marked) and set(marked["study"]) == {final.study} and set(marked["config"]) == {final.config}
    challengers = steps[~steps["carried"]]  # each configuration has its own comparison with the carried one
    assert challengers["gain"].notna().all() and challengers["p"].notna().all()
    assert steps[steps["carried"]]["gain"].isna().all()
    best = yaml.safe_load((tmp_path / "out" / "best.yaml").read_text())
    assert best["stage"] == 2 and best["model"]["channels"] == 16
    args = (tmp_path / "out" / "best-args.txt").read_text()
    assert args.startswith("maou learn-model --stage 2 ")
    assert "--stage2-batch-size 64" in args and "--stage2-learning-rate" in args
    # best.yaml is runnable with `sweep train`
    best["budget"] = {"max_steps": 5, "eval_every": 5}
    (tmp_path / "best-short.yaml").write_text(yaml.safe_dump(best))
    train = run_cli("train", str(tmp_path / "best-short.yaml"), "--out", str(tmp_path / "retrain"))
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    assert (tmp_path / "retrain" / "metrics.json").is_file()


def test_export_upstream_data_writes_the_dense_copy_that_best_args_names(smoke_run, bundled_data_dir, tmp_path):
    """Without --upstream-data best-args.txt names the built file and says how to get upstream's dense
    copy; with it the copy is written (its rows, upstream's columns) and best-args.txt names it; a
    later plain export keeps naming the copy, and a second --upstream-data keeps it as it is."""
    import pyarrow as pa

    from maou.data.dense import size_text

    spec, _, _ = smoke_run
    out = tmp_path / "out"
    built = bundled_data_dir.resolve() / "stage2" / "train.feather"
    rows = json.loads((bundled_data_dir / "stage2" / "manifest.json").read_text())["rows"]["train"]

    def data_path() -> tuple[str, str]:
        command, *notes = (out / "best-args.txt").read_text().splitlines()
        flags = command.split()
        return flags[flags.index("--stage2-data-path") + 1], "\n".join(notes)

    plain = run_cli("export", str(spec), "--out", str(out))
    assert plain.returncode == 0, plain.stdout[-2000:] + plain.stderr[-2000:]
    path, notes = data_path()
    assert Path(path) == built
    (need,) = [n for n in notes.splitlines() if "upstream needs the dense copy" in n]
    assert "legalMovesLabel" in need and "legalMovesBits" in need
    assert f"run `sweep export {spec} --out {out} --upstream-data` to write it" in need
    assert f"({size_text(rows * (8 + 81 + 14 + 1496))} dense, less on disk: LZ4)" in need
    assert not (out / "upstream-data").exists()

    dense = run_cli("export", str(spec), "--out", str(out), "--upstream-data")
    assert dense.returncode == 0, dense.stdout[-2000:] + dense.stderr[-2000:]
    copy = out / "upstream-data" / "stage2" / "train.feather"
    path, notes = data_path()
    assert Path(path) == copy.resolve() and copy.is_file()
    assert f"upstream's dense copy (legalMovesLabel) of the training split the winner trained on ({rows:,} rows)" \
        in notes and str(built) in notes and "upstream needs the dense copy" not in notes
    assert f"upstream's dense copy: {rows:,} rows, " in dense.stdout and "rows/s" in dense.stdout
    assert "upstream_data: " + str(copy.resolve()) in " ".join(dense.stdout.split())
    with pa.memory_map(str(copy)) as source:
        table = pa.ipc.open_file(source).read_all()
    assert table.num_rows == rows
    assert table.column_names == ["id", "boardIdPositions", "piecesInHand", "legalMovesLabel"]

    again = run_cli("export", str(spec), "--out", str(out))  # the copy is current: still the one named
    assert again.returncode == 0 and Path(data_path()[0]) == copy.resolve()
    kept = run_cli("export", str(spec), "--out", str(out), "--upstream-data")
    assert kept.returncode == 0 and "kept (already a copy of the same built file)" in kept.stdout


def test_dashboard_serves_every_step_and_optuna_cli_lists_them(smoke_run, tmp_path):
    spec, url, _ = smoke_run
    port = free_port()
    server = subprocess.Popen([SWEEP, "dashboard", str(spec), "--port", str(port)], cwd=spec.parent,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        body = dashboard_studies(port)
        assert body is not None, "optuna-dashboard did not answer"
        names = {s["study_name"] for s in body["study_summaries"]}
        assert names == {"smoke/01-baseline", "smoke/02-gamma-neg", "smoke/03-asl-clip"}  # not the lock study
        browser = shutil.which("chromium")
        if browser:  # the page a person sees, rendered by a real browser (CI installs Debian's chromium)
            dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                  "--disable-background-networking", "--disable-component-update",
                                  "--disable-sync", f"--user-data-dir={tmp_path / 'chromium'}",
                                  "--virtual-time-budget=15000", "--dump-dom",
                                  f"http://127.0.0.1:{port}/dashboard/"],
                                 capture_output=True, text=True, timeout=120)
            assert "smoke/02-gamma-neg" in dom.stdout, dom.stderr[-2000:]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=300)
    optuna_cli = str(Path(SWEEP).with_name("optuna"))
    listed = subprocess.run([optuna_cli, "studies", "--storage", url, "-f", "json"], capture_output=True,
                            text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert {s["name"] for s in json.loads(listed.stdout)} == {
        "smoke/01-baseline", "smoke/02-gamma-neg", "smoke/03-asl-clip", "smoke@lock"}


def count_finished(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_resume_after_kill_loses_and_duplicates_nothing(tmp_path):
    """SIGKILL of a driver with three trainings finished and the fourth running, then `sweep run`
    again: nothing finished changes or runs again, the killed trial is marked interrupted, and the
    sweep ends as one never killed. What is tested is what the sweep records, so the trainer is the
    fake one (``tests/fakes.py``: the CLI's `sweep run` with a trainer of known results)."""
    db = tmp_path / "resume.db"
    url = f"sqlite:///{db}"
    spec = write_spec(tmp_path, "resume", url)
    proc = start_driver(spec, gate=tmp_path / "never", gate_after=3, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
    wait_for(lambda: count_finished(db) >= 3 and running_trials(url, "resume") >= 1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {}
    for summary in step_studies(url):
        for t in optuna.load_study(study_name=summary.study_name, storage=url).get_trials():
            if t.state == optuna.trial.TrialState.COMPLETE:
                before[(summary.study_name, t.number)] = t.value
    assert len(before) >= 3
    resumed = start_driver(spec)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-3000:] + err[-3000:]
    states = Counter()
    for summary in step_studies(url):
        study = optuna.load_study(study_name=summary.study_name, storage=url)
        pairs = finished_pairs(study)
        assert len(pairs) == len(set(pairs)), f"duplicate finished trials in {summary.study_name}"
        for t in study.get_trials():
            states[t.state.name] += 1
            if t.state == optuna.trial.TrialState.FAIL:
                assert t.user_attrs["fail_reason"] == "interrupted"
        assert "decision" in study.user_attrs
    # every trial finished before the kill is still there, unchanged
    for (name, number), value in before.items():
        assert optuna.load_study(study_name=name, storage=url).trials[number].value == value
    assert states["RUNNING"] == 0 and states["FAIL"] == 1
    assert outcome_of(url, "resume") == solo_outcome(tmp_path, "resume")  # every trial and decision


def test_changed_spec_is_refused_with_what_changed(smoke_run, tmp_path):
    spec, url, _ = smoke_run
    data = yaml.safe_load(spec.read_text())
    data["base"]["optim"]["lr"] = 0.01
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(data))
    result = run_cli("run", str(changed))
    assert result.returncode == 2
    assert "optim.lr" in result.stderr and "0.003" in result.stderr and "0.01" in result.stderr
