"""The Ray executor against the local one: same trials and states, collapse pruning, a dead worker
retried, a killed driver resumed. One Ray session for the module (2 CPUs, 2 concurrent trials)."""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import ray_fakes
import yaml
from optuna.trial import TrialState
from sweep_helpers import step_studies
from test_locks import FAKES, start_driver

from maou.strict import from_dict
from maou.sweep.identity import ConfigKey
from maou.sweep.run.executors.local import LocalExecutor
from maou.sweep.run.protocol import run_sweep
from maou.sweep.spec import ExecutorSection, SweepSpec

RAY = ExecutorSection(kind="ray", cpus_per_trial=1, max_concurrent=2, max_retries=1)
#: SGD at the largest learning rate and positive weight validation allows, no clipping: NaN in a few steps.
EXPLODES = {"optim.name": "sgd", "optim.lr": 100.0, "optim.grad_clip": 0.0, "loss.pos_weight": 1e6}


def tiny_spec(tmp_path: Path, name: str, steps, seeds=2, max_steps=20, eval_every=10, **extra) -> dict:
    """A Stage 1 spec (no game data needed) on a tiny model, storage and runs under ``tmp_path``."""
    return {"name": name, "stage": 1, "seeds": seeds, "steps": steps,
            "base": {"model": {"blocks": 1, "channels": 8}, "optim": {"lr": 0.003}},
            "budget": {"max_steps": max_steps, "eval_every": eval_every},
            "storage": f"sqlite:///{tmp_path}/{name}.db", "runs_dir": str(tmp_path / "runs" / name),
            "executor": dataclasses.asdict(RAY), **extra}


def outcome_table(url: str) -> dict[tuple[str, str, int], tuple[str, float | None]]:
    """(study, config_key, seed) -> (state, value) for every trial of every study in ``url``."""
    table = {}
    for summary in step_studies(url):
        for t in optuna.load_study(study_name=summary.study_name, storage=url).get_trials():
            key = (summary.study_name, t.user_attrs["config_key"], t.user_attrs["seed"])
            assert key not in table, f"{key} ran twice"
            table[key] = (t.state.name, t.value)
    return table


@pytest.fixture(scope="module")
def ray_session():
    os.environ["RAY_AUTH_MODE"] = "disabled"
    from maou.sweep.run.executors.ray import init_ray

    ray = init_ray(RAY)
    ray.cloudpickle.register_pickle_by_value(ray_fakes)  # workers need not import tests/
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def both_runs(ray_session, tmp_path_factory):
    """The same sweep (baseline, then lr 0.01 and a recipe that goes NaN) locally and on Ray."""
    from maou.sweep.run.executors.ray import RayExecutor

    tmp = tmp_path_factory.mktemp("compare")
    steps = [{"name": "baseline"}, {"name": "lr", "configs": [{"optim.lr": 0.01}, EXPLODES]}]
    exhaustive = {"racing": {"enabled": False}}  # trial for trial: racing decides as results arrive
    local = from_dict(SweepSpec, tiny_spec(tmp / "local", "cmp", steps, **exhaustive))
    remote = from_dict(SweepSpec, tiny_spec(tmp / "ray", "cmp", steps, **exhaustive))
    local_outcome = run_sweep(local, executor=LocalExecutor())
    started = time.perf_counter()
    ray_outcome = run_sweep(remote, executor=RayExecutor(remote.executor))
    return local, local_outcome, remote, ray_outcome, time.perf_counter() - started


@pytest.mark.ray
def test_ray_sweep_matches_the_local_sweep(both_runs):
    local, local_outcome, remote, ray_outcome, _ = both_runs
    local_table, ray_table = outcome_table(local.storage_url), outcome_table(remote.storage_url)
    assert set(ray_table) == set(local_table)
    assert len(ray_table) == 2 + 3 * 2  # baseline x 2 seeds, then (carried, 0.01, explodes) x 2 seeds
    assert {k: s for k, (s, _) in ray_table.items()} == {k: s for k, (s, _) in local_table.items()}
    for key, (state, value) in ray_table.items():  # the same deterministic training, in another process
        if state == "COMPLETE":
            assert value == pytest.approx(local_table[key][1], abs=1e-6)
    assert [d.winner_key for d in ray_outcome.decisions] == [d.winner_key for d in local_outcome.decisions]
    assert ray_outcome.carried == local_outcome.carried


@pytest.mark.ray
def test_ray_trials_carry_curves_placement_and_ray_files_under_runs(both_runs):
    _, _, remote, _, _ = both_runs
    study = optuna.load_study(study_name="cmp/02-lr", storage=remote.storage_url)
    for t in study.get_trials():
        assert t.user_attrs["executor"] == "ray" and t.user_attrs["ray_trial_id"]
        assert t.user_attrs["node_id"]
        assert "cuda_visible_devices" in t.user_attrs
        assert t.user_attrs["config"]["threads"] == 1
        if t.state == TrialState.COMPLETE:
            assert sorted(t.intermediate_values) == [10, 20]  # step 0 (untrained) stays out
            assert Path(t.user_attrs["checkpoint"]).is_file()
            assert t.user_attrs["final_metrics"]["val_accuracy"] == pytest.approx(t.value)
    ray_dir = remote.runs_path / "ray"
    assert sorted(p.name for p in ray_dir.iterdir() if p.is_dir()) == ["01-baseline", "02-lr"]
    assert any((ray_dir / "02-lr").glob("trial-*/result.json"))


@pytest.mark.ray
def test_a_diverging_configuration_is_pruned_with_its_reason(both_runs):
    _, _, remote, ray_outcome, _ = both_runs
    study = optuna.load_study(study_name="cmp/02-lr", storage=remote.storage_url)
    diverged = [t for t in study.get_trials() if ConfigKey.parse(t.user_attrs["config_key"]).overrides == EXPLODES]
    assert len(diverged) == 2
    for t in diverged:
        assert t.state == TrialState.PRUNED
        # the collapse rules run inside the job under Ray as locally: the same reason, from the worker
        assert t.user_attrs["prune_reason"] in {"non_finite", "nan_loss", "divergence"}
        assert t.user_attrs["prune_detail"]
        assert t.user_attrs["stop_reason"] == t.user_attrs["prune_reason"]
    stats = {s.key: s for s in ray_outcome.decisions[1].stats}
    assert stats[ConfigKey.of(EXPLODES)].pruned == 2


@pytest.mark.ray
def test_a_dead_worker_is_retried_and_a_python_error_is_not(ray_session, tmp_path):
    from maou.sweep.run.executors.ray import RayExecutor

    steps = [{"name": "flaky", "grid": {"optim.lr": [20.0]}}]
    spec = from_dict(SweepSpec, tiny_spec(tmp_path, "flaky", steps))
    from maou.sweep.run.protocol import StepIncomplete

    with pytest.raises(StepIncomplete, match=r"2 of 4 trainings did not finish \(failed cuda out of memory: 2\)"):
        run_sweep(spec, executor=RayExecutor(spec.executor, train=ray_fakes.flaky))
    study = optuna.load_study(study_name="flaky/01-flaky", storage=spec.storage_url)
    by_key = {(t.params["optim.lr"], t.user_attrs["seed"]): t for t in study.get_trials()}
    assert len(by_key) == 4 and len(study.get_trials()) == 4
    # the carried configuration, seed 0: its worker process died after one evaluation; Ray re-ran it
    crashed = by_key[(0.003, 0)]
    assert (Path(crashed.user_attrs["checkpoint"]).parent / "crashed-once").is_file()
    assert crashed.state == TrialState.COMPLETE and crashed.user_attrs["ray_failures"] == 1
    assert crashed.user_attrs["steps_done"] == 20 and sorted(crashed.intermediate_values) == [10, 20]
    assert crashed.value == pytest.approx(crashed.intermediate_values[20])
    assert by_key[(0.003, 1)].state == TrialState.COMPLETE and "ray_failures" not in by_key[(0.003, 1)].user_attrs
    for seed in (0, 1):  # a Python exception is a result: FAIL with its traceback, no retry
        failed = by_key[(20.0, seed)]
        assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"] == "cuda out of memory"
        assert "CUDA out of memory (simulated)" in failed.user_attrs["error"]
        assert "ray_failures" not in failed.user_attrs
    assert study.user_attrs["decision"] is None  # a step with failed pairs does not decide (a resume re-runs them)


@pytest.mark.ray
def test_resources_the_local_ray_lacks_and_ray_client_are_refused(ray_session):
    from maou.errors import UserError
    from maou.sweep.run.executors.ray import init_ray

    if ray_session.cluster_resources().get("GPU", 0) == 0:
        with pytest.raises(UserError, match="gpus_per_trial is 1 but the Ray cluster has 0 GPUs"):
            init_ray(dataclasses.replace(RAY, gpus_per_trial=1.0))
    with pytest.raises(UserError, match="Ray Client"):
        init_ray(dataclasses.replace(RAY, address="ray://head:10001"))


def count_states(db: Path) -> Counter:
    if not db.exists():
        return Counter()
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return Counter(dict(conn.execute("select state, count(*) from trials group by state").fetchall()))
    except sqlite3.OperationalError:
        return Counter()


def ray_processes_of(pid: int) -> list[str]:
    """Live (not zombie) processes of the process group ``pid``."""
    out = subprocess.run(["ps", "-eo", "pid,pgid,stat,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()[1:]
            if line.split()[1] == str(pid) and not line.split()[2].startswith("Z")]


@pytest.mark.ray
def test_a_killed_driver_resumes_without_lost_or_duplicated_trials(tmp_path):
    """SIGKILL of a Ray driver's process group with one trial finished and one running, then the
    sweep run again. What is tested is what the sweep records and what Ray leaves behind, so the
    trainer is the fake one (``tests/fakes.py``, shipped to Ray's workers by value): seed 1 holds at
    a gate, so the kill lands while it runs."""
    steps = [{"name": "baseline"}, {"name": "lr", "grid": {"optim.lr": [0.01]}}]
    data = tiny_spec(tmp_path, "resume", steps, max_steps=40, eval_every=10)
    spec = tmp_path / "resume.yaml"
    spec.write_text(yaml.safe_dump(data))
    db = tmp_path / "resume.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    proc = start_driver(spec, gate=tmp_path / "never", gate_seed=1, env={"RAY_AUTH_MODE": "disabled"},
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        states = count_states(db)
        if states["COMPLETE"] >= 1 and states["RUNNING"] >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything in its session, Ray's included
    proc.wait()
    url = f"sqlite:///{db}"
    before = {}
    for summary in step_studies(url):
        for t in optuna.load_study(study_name=summary.study_name, storage=url).get_trials():
            if t.state == TrialState.COMPLETE:
                before[(summary.study_name, t.number)] = t.value
    assert before and count_states(db)["RUNNING"] >= 1
    deadline = time.time() + 30
    while ray_processes_of(proc.pid) and time.time() < deadline:
        time.sleep(0.05)
    assert not ray_processes_of(proc.pid), "Ray processes outlived the killed driver"

    result = subprocess.run([sys.executable, FAKES, str(spec)], cwd=spec.parent, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    states = Counter()
    for summary in step_studies(url):
        study = optuna.load_study(study_name=summary.study_name, storage=url)
        finished = [(t.user_attrs["config_key"], t.user_attrs["seed"]) for t in study.get_trials()
                    if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(finished) == len(set(finished)), f"duplicate finished trials in {summary.study_name}"
        for t in study.get_trials():
            states[t.state.name] += 1
            if t.state == TrialState.FAIL:
                assert t.user_attrs["fail_reason"] == "interrupted"
        assert "decision" in study.user_attrs
    for (name, number), value in before.items():  # nothing finished before the kill changed or ran again
        assert optuna.load_study(study_name=name, storage=url).trials[number].value == value
    assert states["RUNNING"] == 0 and states["FAIL"] >= 1
    lr = optuna.load_study(study_name="resume/02-lr", storage=url)
    pairs = sorted((t.params["optim.lr"], t.user_attrs["seed"]) for t in lr.get_trials()
                   if t.state == TrialState.COMPLETE)
    assert pairs == [(0.003, 0), (0.003, 1), (0.01, 0), (0.01, 1)]
    assert all(t.user_attrs["executor"] == "ray" for t in lr.get_trials() if not t.user_attrs.get("reused_from"))


def test_local_runs_and_help_never_import_ray(tmp_path):
    code = ("import sys\n"
            "from maou.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "from maou.sweep.run.protocol import run_sweep\n"
            "from maou.sweep.spec import SweepSpec\n"
            "from maou.strict import from_dict\n"
            "spec = from_dict(SweepSpec, {'name': 'x', 'stage': 1, 'steps': [{'name': 'b'}], 'storage': 'memory:',"
            f" 'runs_dir': {str(tmp_path)!r}, 'base': {{'model': {{'blocks': 1, 'channels': 8}}}},"
            " 'budget': {'max_steps': 2, 'eval_every': 1}})\n"
            "run_sweep(spec)\n"
            "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.ray
def test_a_local_ray_listens_on_the_loopback_interface_only(ray_session):
    assert {n["NodeManagerAddress"] for n in ray_session.nodes() if n["Alive"]} == {"127.0.0.1"}
    listening = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout.splitlines()
    mine = [line for line in listening if any(name in line for name in ("raylet", "gcs_server", "ray::"))]
    assert mine, listening
    for line in mine:
        local = line.split()[3]
        assert local.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:")), line
