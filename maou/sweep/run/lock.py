"""One driver per sweep, on any storage: a lock held in the storage itself.

The lock of sweep ``S`` is the study ``S@lock``. A driver that wants it adds a RUNNING trial there
(adding a trial is atomic on every Optuna storage, and numbers it) with its owner (host, pid,
time) and a heartbeat it refreshes every ``HEARTBEAT_S`` seconds from a background thread. The
holder is the lowest-numbered RUNNING trial whose owner is alive (a live process on this host, or
a heartbeat fresher than ``STALE_S`` from another host): a driver that finds a
fresher, earlier one gives up (one line naming the owner); one whose earlier trials are all stale
(a driver that died) marks them FAIL and takes over. Two drivers that race both see each other's
trials, and the earlier number wins. While a driver holds its sweep's lock, a trial RUNNING in the
sweep's studies can only be the holder's own, or left by a dead driver and safe to re-run.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from maou.errors import UserError

HEARTBEAT_S = 10.0
#: A lock whose heartbeat is older than this is the lock of a dead driver.
STALE_S = 60.0


def lock_study_name(sweep_name: str) -> str:
    return f"{sweep_name}@lock"


def _beat(trial: FrozenTrial) -> float:
    """Seconds since the epoch of a lock trial's last sign of life (Optuna stores local times)."""
    started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
    return max(started, float(trial.user_attrs.get("heartbeat", 0.0)))


def _alive(trial: FrozenTrial, now: float, stale_s: float) -> bool:
    """The owner of a lock trial still runs: a live process on this host, or a fresh heartbeat."""
    owner = trial.user_attrs.get("owner", {})
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # a live process of another user
            return True
    return now - _beat(trial) < stale_s


class _Heartbeat(threading.Thread):
    def __init__(self, storage: BaseStorage, trial_id: int, interval_s: float) -> None:
        super().__init__(name="maou-sweep-lock-heartbeat", daemon=True)
        self.storage, self.trial_id, self.interval_s = storage, trial_id, interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
            except Exception:  # noqa: BLE001 - a missed beat is retried at the next interval
                continue


@contextmanager
def sweep_lock(storage: BaseStorage, sweep_name: str, heartbeat_s: float = HEARTBEAT_S,
               stale_s: float = STALE_S) -> Iterator[None]:
    """Hold the lock of ``sweep_name`` in ``storage`` for the ``with`` block, or raise UserError."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=lock_study_name(sweep_name), storage=storage, load_if_exists=True)
    study.set_user_attr("purpose", f"the lock of sweep {sweep_name}: one driver at a time (maou-sweep)")
    mine = study.ask()
    owner = {"host": socket.gethostname(), "pid": os.getpid(),
             "since": datetime.now(UTC).isoformat(timespec="seconds")}
    mine.set_user_attr("owner", owner)
    mine.set_user_attr("heartbeat", time.time())
    now = time.time()
    earlier = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number < mine.number]
    holder = next((t for t in earlier if _alive(t, now, stale_s)), None)
    if holder is not None:
        study.tell(mine, state=TrialState.FAIL)
        who = holder.user_attrs.get("owner", {})
        raise UserError(f"sweep {sweep_name!r} is already running (pid {who.get('pid', '?')} on "
                        f"{who.get('host', '?')} since {who.get('since', '?')}); wait for it or stop it first")
    for stale in earlier:  # drivers that died holding the lock
        try:
            storage.set_trial_user_attr(stale._trial_id, "released", "stale: taken over")
            storage.set_trial_state_values(stale._trial_id, TrialState.FAIL)
        except RuntimeError:  # another contender failed it first (UpdateFinishedTrialError)
            pass
    heartbeat = _Heartbeat(storage, mine._trial_id, heartbeat_s)
    heartbeat.start()
    try:
        yield
    finally:
        heartbeat.stopped.set()
        heartbeat.join()
        mine.set_user_attr("released", "at the end of the run")
        study.tell(mine, 0.0)  # a COMPLETE lock trial: released


__all__ = ["HEARTBEAT_S", "STALE_S", "lock_study_name", "sweep_lock"]
