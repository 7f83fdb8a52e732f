"""One driver per sweep on every storage (SQLite, journal file, PostgreSQL): the lock held in the
storage, a dead owner taken over, concurrent drivers, SIGTERM handled as Ctrl-C, the dashboard
stopping with its process. Drivers are real processes (``tests/fakes.py``: the CLI with a fake
trainer)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from fakes import GATE, GATE_AFTER, GATE_SEED, FakeTrainer, lr_batch_score
from optuna.trial import TrialState
from sweep_helpers import REPO, SWEEP, free_port

from maou.errors import UserError
from maou.strict import from_dict
from maou.sweep.run.executors.local import LocalExecutor
from maou.sweep.run.lock import lock_study_name, sweep_lock
from maou.sweep.run.protocol import run_sweep
from maou.sweep.spec import SweepSpec
from maou.sweep.storage import open_storage

FAKES = str(REPO / "tests" / "fakes.py")
STEPS = [{"name": "baseline"}, {"name": "lr", "grid": {"optim.lr": [0.01, 0.0001]}}]


# --- the lock itself, in one process -------------------------------------------------------------

def test_a_second_holder_is_refused_with_the_owner_named():
    storage = open_storage("memory:")
    with sweep_lock(storage, "s"):
        with pytest.raises(UserError, match=r"already running \(pid \d+ on "):
            with sweep_lock(storage, "s"):
                pass
        with sweep_lock(storage, "other"):  # another sweep on the same storage is free
            pass
    with sweep_lock(storage, "s"):  # released: taken again
        pass
    states = [t.state for t in optuna.load_study(study_name=lock_study_name("s"), storage=storage).get_trials()]
    assert states.count(TrialState.RUNNING) == 0 and states.count(TrialState.COMPLETE) == 2


def _lock_trial_of(storage, sweep: str, owner: dict) -> int:
    study = optuna.create_study(study_name=lock_study_name(sweep), storage=storage, load_if_exists=True)
    trial = study.ask()
    trial.set_user_attr("owner", owner)
    return trial._trial_id


def test_a_dead_owner_on_this_host_is_taken_over_at_once():
    storage = open_storage("memory:")
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = _lock_trial_of(storage, "s", {"host": socket.gethostname(), "pid": dead.pid})
    with sweep_lock(storage, "s"):
        assert storage.get_trial(stale).state == TrialState.FAIL
        assert storage.get_trial(stale).user_attrs["released"].startswith("stale")


def test_an_owner_elsewhere_is_taken_over_only_once_its_heartbeat_is_stale():
    storage = open_storage("memory:")
    _lock_trial_of(storage, "s", {"host": "another-host", "pid": 1})
    written = time.time()
    with pytest.raises(UserError, match="another-host"):
        with sweep_lock(storage, "s", stale_s=30.0, clock=lambda: written + 29.0):
            pass
    with sweep_lock(storage, "s", stale_s=30.0, clock=lambda: written + 31.0):
        pass


def test_the_heartbeat_keeps_a_long_run_fresh():
    storage = open_storage("memory:")
    now = [time.time()]
    with sweep_lock(storage, "s", heartbeat_s=0.05, stale_s=60.0, clock=lambda: now[0]):
        study = optuna.load_study(study_name=lock_study_name("s"), storage=storage)

        def heartbeat() -> float:
            (mine,) = study.get_trials(states=(TrialState.RUNNING,))
            return mine.user_attrs["heartbeat"]

        assert heartbeat() == now[0]
        now[0] += 3600.0  # an hour on: only the heartbeat keeps the lock fresh
        wait_for(lambda: heartbeat() == now[0])
        (mine,) = study.get_trials(states=(TrialState.RUNNING,))
        storage.set_trial_user_attr(mine._trial_id, "owner", {"host": "another-host", "pid": 1})  # seen from afar
        with pytest.raises(UserError, match="already running"):
            with sweep_lock(storage, "s", stale_s=60.0, clock=lambda: now[0] + 59.0):
                pass


# --- real drivers on every storage ---------------------------------------------------------------

@pytest.fixture(params=["sqlite", "journal", "postgresql"])
def storage_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/studies.db"
    if request.param == "journal":
        return f"journal://{tmp_path}/studies.log"
    return request.getfixturevalue("postgres").new_database()


def write_spec(tmp_path: Path, name: str, url: str, **changes) -> Path:
    data = {"name": name, "stage": 1, "seeds": 2, "steps": STEPS, "storage": url,
            "budget": {"max_steps": 40, "eval_every": 10}, "runs_dir": str(tmp_path / "runs" / name), **changes}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start_driver(spec: Path, gate: Path | None = None, gate_after: int = 0, gate_seed: int | None = None,
                 env: dict[str, str] | None = None, prefix: tuple[str, ...] = (), **popen) -> subprocess.Popen:
    """``sweep run`` with the fake trainer in a process (and session) of its own, after ``prefix``
    (``unshare ...``), with ``env`` added to the environment. With ``gate``, each of its evaluations
    (after ``gate_after`` trainings; of seed ``gate_seed`` only, when given) waits until that file
    exists: its trial stays RUNNING until the test opens it. ``popen``: Popen's own arguments
    (the streams are pipes unless given)."""
    held = {GATE: str(gate), GATE_AFTER: str(gate_after)} if gate is not None else {}
    if gate is not None and gate_seed is not None:
        held[GATE_SEED] = str(gate_seed)
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
    return subprocess.Popen([*prefix, sys.executable, FAKES, str(spec)], cwd=spec.parent, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **held, **(env or {})},
                            start_new_session=True, **streams)


def wait_for(predicate, timeout: float = 300.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def running_trials(url: str, sweep: str) -> int:
    try:
        storage = open_storage(url, create=False)
        summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    except Exception:  # noqa: BLE001 - the storage may not exist yet
        return 0
    count = 0
    for s in summaries:
        if s.study_name.startswith(f"{sweep}/"):
            trials = optuna.load_study(study_name=s.study_name, storage=storage).get_trials(deepcopy=False)
            count += sum(t.state == TrialState.RUNNING for t in trials)
    return count


def outcome_of(url: str, sweep: str) -> dict:
    """(study, config, seed) -> (state, value) of every trial a sweep finished, and its decisions."""
    table, decisions = {}, {}
    storage = open_storage(url, create=False)
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if not s.study_name.startswith(f"{sweep}/"):
            continue
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        decisions[s.study_name] = study.user_attrs["decision"]["winner_key"]
        for t in study.get_trials():
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
                key = (s.study_name, t.user_attrs["config_key"], t.user_attrs["seed"])
                assert key not in table, f"{key} finished twice"
                table[key] = (t.state.name, t.value)
    return {"trials": table, "decisions": decisions}


def solo_outcome(tmp_path: Path, name: str, **changes) -> dict:
    """The same spec run alone, in this process, on a storage of its own."""
    folder = tmp_path / "solo"
    folder.mkdir(exist_ok=True)
    url = f"sqlite:///{folder}/{name}.db"
    spec = from_dict(SweepSpec, yaml.safe_load(write_spec(folder, name, url, **changes).read_text()))
    run_sweep(spec, executor=LocalExecutor(FakeTrainer(lr_batch_score)))
    return outcome_of(url, name)


@pytest.mark.slow
def test_the_same_spec_twice_at_once_is_refused_and_the_first_is_unharmed(tmp_path, storage_url):
    spec = write_spec(tmp_path, "twice", storage_url)
    gate = tmp_path / "gate"
    first = start_driver(spec, gate=gate)
    wait_for(lambda: running_trials(storage_url, "twice") > 0)
    assert first.poll() is None
    second = subprocess.run([sys.executable, FAKES, str(spec)], cwd=spec.parent, capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 2 and "already running" in second.stderr, second.stderr
    gate.touch()
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out[-2000:] + err[-2000:]
    assert outcome_of(storage_url, "twice") == solo_outcome(tmp_path, "twice")


@pytest.mark.slow
def test_two_specs_on_one_storage_at_once_both_finish_as_alone(tmp_path, storage_url):
    gate = tmp_path / "gate"  # both hold a running trial before either goes on
    drivers = [start_driver(write_spec(tmp_path, name, storage_url), gate=gate) for name in ("one", "two")]
    wait_for(lambda: running_trials(storage_url, "one") > 0 and running_trials(storage_url, "two") > 0)
    gate.touch()
    for driver in drivers:
        out, err = driver.communicate(timeout=300)
        assert driver.returncode == 0, out[-2000:] + err[-2000:]
    for name in ("one", "two"):
        assert outcome_of(storage_url, name) == solo_outcome(tmp_path, name)


@pytest.mark.slow
def test_sigterm_marks_trials_interrupted_and_the_sweep_resumes(tmp_path):
    url = f"sqlite:///{tmp_path}/studies.db"
    spec = write_spec(tmp_path, "term", url)
    driver = start_driver(spec, gate=tmp_path / "never")
    wait_for(lambda: running_trials(url, "term") > 0)
    driver.send_signal(signal.SIGTERM)
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 143, out[-2000:] + err[-2000:]
    assert "terminated" in err and "again to resume" in err and "Traceback" not in err
    assert_left_clean(url, "term")  # the lock released on the way out
    resumed = subprocess.run([sys.executable, FAKES, str(spec)], cwd=spec.parent, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert outcome_of(url, "term") == solo_outcome(tmp_path, "term")


def assert_left_clean(url: str, sweep: str) -> None:
    """No trial of the sweep left RUNNING, the ones cut short marked interrupted, the lock released."""
    assert running_trials(url, sweep) == 0
    failed = [t for s in optuna.get_all_study_summaries(url) if s.study_name.startswith(f"{sweep}/")
              for t in optuna.load_study(study_name=s.study_name, storage=url).get_trials()
              if t.state == TrialState.FAIL]
    assert failed and all(t.user_attrs["fail_reason"] == "interrupted" for t in failed)
    lock = optuna.load_study(study_name=lock_study_name(sweep), storage=url).get_trials()
    assert lock and all(t.state != TrialState.RUNNING for t in lock)


@pytest.mark.slow
def test_sighup_is_handled_as_sigterm(tmp_path):
    url = f"sqlite:///{tmp_path}/studies.db"
    spec = write_spec(tmp_path, "hup", url)
    driver = start_driver(spec, gate=tmp_path / "never")
    wait_for(lambda: running_trials(url, "hup") > 0)
    driver.send_signal(signal.SIGHUP)
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 129, out[-2000:] + err[-2000:]
    assert "sweep run: hung up (SIGHUP); trials in progress were marked interrupted; " \
           f"run `sweep run {spec}` again to resume" in err and "Traceback" not in err, err
    assert_left_clean(url, "hup")


def _controlling_terminal() -> None:
    """In the child, after setsid: the pty on stdin becomes its controlling terminal, as a login
    shell's is (its hangup signals this session's leader)."""
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.mark.slow
def test_a_dropped_terminal_leaves_no_trial_running_and_no_lock_held(tmp_path):
    """An SSH session dropped: the terminal hangs up under the driver (SIGHUP, then every write
    to it fails); the driver still marks its trials interrupted and releases the lock."""
    import pty

    url = f"sqlite:///{tmp_path}/studies.db"
    spec = write_spec(tmp_path, "drop", url)
    controller, terminal = pty.openpty()
    driver = start_driver(spec, gate=tmp_path / "never", env={"TERM": "xterm", "COLUMNS": "120"}, stdin=terminal,
                          stdout=terminal, stderr=terminal, preexec_fn=_controlling_terminal)
    os.close(terminal)
    try:
        wait_for(lambda: running_trials(url, "drop") > 0)
        os.read(controller, 1 << 16)  # it drew on the terminal
    finally:
        os.close(controller)  # the terminal hangs up
    assert driver.wait(timeout=300) == 129
    assert_left_clean(url, "drop")


@pytest.mark.slow
def test_the_dashboard_serves_in_process_and_stops_on_sigterm(tmp_path):
    url = f"sqlite:///{tmp_path}/studies.db"
    spec = write_spec(tmp_path, "dash", url)
    run_sweep(from_dict(SweepSpec, yaml.safe_load(spec.read_text())),
              executor=LocalExecutor(FakeTrainer(lr_batch_score)))
    port = free_port()
    server = subprocess.Popen([SWEEP, "dashboard", str(spec), "--port", str(port)], cwd=spec.parent,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def serving() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    wait_for(serving)
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(server.pid)], capture_output=True, text=True)
    assert children.stdout.strip() == ""  # no child process to orphan
    server.send_signal(signal.SIGTERM)
    out, err = server.communicate(timeout=300)
    assert server.returncode == 143 and "Traceback" not in err, err
    assert not serving()
