"""Fenced ownership: a driver that lost its sweep's lock (frozen past the stale time, or unable to
beat) writes nothing more and exits 3; a live owner in another pid namespace is never taken over;
a step whose trainings did not all finish (a full disk) does not decide, and its resume decides as
a clean run. Drivers are real processes (``tests/fakes.py``: the CLI with a fake trainer)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from sweep_helpers import SWEEP
from test_locks import outcome_of, running_trials, solo_outcome, start_driver, wait_for, write_spec

from maou.sweep.run import lock as lock_module
from maou.sweep.run.lock import Fence, LostLock, lock_study_name, sweep_lock
from maou.sweep.storage import open_storage

#: Lock timing for driver processes in these tests: a frozen driver is stale after 3 s.
FAST_LOCK = {"MAOU_LOCK_HEARTBEAT_S": "0.3", "MAOU_LOCK_STALE_S": "3"}


def driver(spec: Path, gate: Path | None = None, prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    """A driver process (the CLI with the fake trainer) with the fast lock timing; with ``gate``, its
    evaluations wait for that file."""
    return start_driver(spec, gate=gate, env=FAST_LOCK, prefix=prefix)


def _heartbeat(url: str, sweep: str) -> float:
    """The last beat of the running lock trial of ``sweep``."""
    (holder,) = [t for t in lock_trials(url, sweep) if t.state == TrialState.RUNNING]
    return float(holder.user_attrs["heartbeat"])


def lock_trials(url: str, sweep: str) -> list:
    return optuna.load_study(study_name=lock_study_name(sweep), storage=url).get_trials()


# --- the fence itself, in one process ------------------------------------------------------------
def test_a_write_after_a_takeover_is_refused_and_names_the_new_owner(monkeypatch):
    monkeypatch.setattr(lock_module, "RECHECK_S", 0.0)  # read the lock back at every write
    storage = open_storage("memory:")
    with pytest.raises(LostLock, match=r"lost the sweep lock to pid 4242 on elsewhere .*wrote nothing after"):
        with sweep_lock(storage, "s") as fenced:
            study = optuna.create_study(study_name="s/01-x", storage=fenced)
            study.set_user_attr("before", 1)
            (mine,) = lock_trials_of(storage, "s")
            # another driver took over: it failed our lock trial and holds its own
            storage.set_trial_state_values(mine._trial_id, TrialState.FAIL)
            lock = optuna.load_study(study_name=lock_study_name("s"), storage=storage)
            theirs = lock.ask()
            theirs.set_user_attr("owner", {"host": "elsewhere", "pid": 4242, "since": "now"})
            study.set_user_attr("after", 2)
    assert optuna.load_study(study_name="s/01-x", storage=storage).user_attrs == {"before": 1}
    assert [t.state for t in lock_trials_of(storage, "s")] == [TrialState.FAIL, TrialState.RUNNING]  # not released


def lock_trials_of(storage, sweep: str) -> list:
    return optuna.load_study(study_name=lock_study_name(sweep), storage=storage).get_trials()


def test_a_driver_that_cannot_beat_stops_itself_before_anyone_may_take_over():
    storage = open_storage("memory:")
    study = optuna.create_study(study_name=lock_study_name("s"), storage=storage)
    trial = study.ask()
    now = [100.0]
    fence = Fence(storage, study._study_id, trial._trial_id, trial.number, stale_s=10.0, clock=lambda: now[0])
    fence.check()
    now[0] += 4.9  # a few missed beats: still the owner
    fence.check()
    now[0] += 0.2  # more than half the stale time without a beat: nobody may take over yet, but it stops
    with pytest.raises(LostLock, match="no heartbeat for 5 s"):
        fence.check()
    with pytest.raises(LostLock):  # and stays stopped
        fence.beat_ok()
        fence.check()


# --- drivers in processes --------------------------------------------------------------------------
@pytest.mark.slow
def test_a_frozen_owner_is_taken_over_after_the_stale_time_and_wakes_to_write_nothing(tmp_path):
    url = f"sqlite:///{tmp_path}/studies.db"
    spec = write_spec(tmp_path, "frozen", url)
    gate = tmp_path / "gate"  # the first driver's trial stays running until the test is done with it
    first = driver(spec, gate=gate)
    try:
        wait_for(lambda: running_trials(url, "frozen") > 0)
        os.killpg(first.pid, signal.SIGSTOP)  # Ctrl-Z, or a debugger: the whole driver freezes
        early = driver(spec)  # a live process with a fresh heartbeat: not taken over
        out, err = early.communicate(timeout=120)
        assert early.returncode == 2 and "is already running" in err, out[-2000:] + err[-2000:]
        wait_for(lambda: time.time() - _heartbeat(url, "frozen") > 3.0)  # the stale time, silent
        second = driver(spec)
        out, err = second.communicate(timeout=300)
        assert second.returncode == 0, out[-2000:] + err[-2000:]  # took the frozen driver's lock over
    finally:
        os.killpg(first.pid, signal.SIGCONT)
        gate.touch()  # it wakes, and goes on to write
    out, err = first.communicate(timeout=120)
    assert first.returncode == 3, out[-2000:] + err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "lost the sweep lock" in lines[0] and "wrote nothing after" in lines[0], err
    assert "Traceback" not in err
    # nothing duplicated (outcome_of fails on a pair finished twice), no decision rewritten
    assert outcome_of(url, "frozen") == solo_outcome(tmp_path, "frozen")
    assert running_trials(url, "frozen") == 0
    states = [t.state for t in lock_trials(url, "frozen")]
    assert states[0] == TrialState.FAIL and states[-1] == TrialState.COMPLETE and TrialState.RUNNING not in states


@pytest.mark.slow
def test_a_driver_in_another_pid_namespace_never_takes_over_a_live_owner(tmp_path):
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-p", "-f", "--mount-proc", "true"],
                                                         capture_output=True).returncode != 0:
        pytest.skip("unshare (a new pid namespace) is not available here")
    url = f"sqlite:///{tmp_path}/studies.db"
    spec = write_spec(tmp_path, "ns", url)
    gate = tmp_path / "gate"
    first = driver(spec, gate=gate)
    wait_for(lambda: running_trials(url, "ns") > 0)
    second = driver(spec, prefix=("unshare", "-p", "-f", "--mount-proc"))
    out, err = second.communicate(timeout=120)
    assert second.returncode == 2 and "is already running" in err, out[-2000:] + err[-2000:]
    gate.touch()
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out[-2000:] + err[-2000:]
    assert outcome_of(url, "ns") == solo_outcome(tmp_path, "ns")


# --- a disk that fills during a step ----------------------------------------------------------------
def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _disk_spec(folder: Path, name: str, runs: Path) -> Path:
    data = {"name": name, "stage": 1, "seeds": 2, "storage": f"sqlite:///{folder}/{name}.db", "runs_dir": str(runs),
            "base": {"model": {"blocks": 1, "channels": 8}, "threads": 1, "device": "cpu"},
            "budget": {"max_steps": 6, "eval_every": 3}, "executor": {"kind": "local"},
            "steps": [{"name": "baseline"}, {"name": "lr", "grid": {"optim.lr": [0.01, 0.0003]}}]}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _decisions(url: str, name: str) -> dict:
    storage = open_storage(url, create=False)
    out = {}
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if s.study_name.startswith(f"{name}/"):
            decision = optuna.load_study(study_name=s.study_name, storage=storage).user_attrs["decision"]
            out[s.study_name] = (decision["winner_key"], [(c["config"], c["gain"]) for c in decision["comparisons"]])
    return out


@pytest.mark.slow
def test_a_disk_that_fills_stops_the_step_undecided_and_the_resume_decides_as_a_clean_run(tmp_path):
    runs = tmp_path / "small-disk"
    if os.geteuid() != 0 or not _mount_tmpfs(runs, "300k"):  # room for two checkpoints of this model
        pytest.skip("mounting a small tmpfs needs root")
    try:
        spec = _disk_spec(tmp_path, "disk", runs)
        # the disk has room when the sweep starts (its preflight wants none here), not for every checkpoint
        env = {**os.environ, "MAOU_MIN_FREE_MB": "0"}
        full = subprocess.run([SWEEP, "run", str(spec)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env=env)
        assert full.returncode == 1, full.stdout[-2000:] + full.stderr[-2000:]
        line = full.stderr.strip().splitlines()[-1]
        assert "trainings did not finish (failed disk full:" in line and "does not decide" in line, full.stderr
        assert "Traceback" not in full.stderr
        failed = [t for s in optuna.get_all_study_summaries(f"sqlite:///{tmp_path}/disk.db")
                  if s.study_name.startswith("disk/")
                  for t in optuna.load_study(study_name=s.study_name, storage=f"sqlite:///{tmp_path}/disk.db").trials
                  if t.state == TrialState.FAIL]
        assert failed and all(t.user_attrs["fail_reason"] == "disk full" for t in failed)
        assert f"disk full: cannot write the checkpoint {runs}" in failed[0].user_attrs["error"]
        assert not list(runs.rglob("*.tmp"))  # no partial checkpoint left behind
        subprocess.run(["mount", "-o", "remount,size=8m", str(runs)], check=True)
        resumed = subprocess.run([SWEEP, "run", str(spec)], cwd=tmp_path, capture_output=True, text=True,
                                 timeout=300, env=env)
        assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    finally:
        subprocess.run(["umount", "-l", str(runs)], capture_output=True)
    (tmp_path / "clean").mkdir()
    clean = _disk_spec(tmp_path / "clean", "disk", tmp_path / "clean" / "runs")  # the same sweep on a roomy disk
    ran = subprocess.run([SWEEP, "run", str(clean)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert _decisions(f"sqlite:///{tmp_path}/disk.db", "disk") == _decisions(f"sqlite:///{tmp_path}/clean/disk.db",
                                                                              "disk")
