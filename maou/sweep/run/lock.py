"""One driver per sweep, on any storage: a fenced lock held in the storage itself.

The lock of sweep ``S`` is the study ``S@lock``. A driver that wants it adds a RUNNING trial there
(adding a trial is atomic on every Optuna storage, and numbers it) with its owner and a heartbeat
it refreshes every ``HEARTBEAT_S`` seconds from a background thread. The trial's number is the
driver's **token**: tokens only grow, so a later owner always holds a larger one.

The holder is the lowest-numbered RUNNING trial whose owner is alive. An owner is identified by its
host, boot id, pid namespace, pid and the pid's start time:

* on this host (same boot id) in this pid namespace: a process that no longer exists (or is another
  process with the same pid) is dead, taken over at once; a live one that stopped beating for
  ``STALE_S`` (frozen by SIGSTOP or Ctrl-Z) is taken over then;
* elsewhere (another host, another boot, another pid namespace whose pids this driver cannot see):
  alive while its heartbeat is fresher than ``STALE_S``.

A driver that finds an earlier live holder gives up (one line naming it); one whose earlier trials
are all stale marks them FAIL and takes over.

**Fencing.** Every write the driver makes to the storage (trials, attributes, decisions, notes) goes
through :class:`FencedStorage`, which first checks the :class:`Fence`: the driver's last successful
heartbeat is younger than half the stale time (so a driver that was frozen, or could not beat,
stops itself before anyone may take over), and its lock trial is still RUNNING in the storage
(checked at most every ``RECHECK_S`` seconds). A driver that lost the lock raises
:class:`LostLock` (exit code 3, one line naming the new owner) and writes nothing more.

The fence fails closed: only the operations on :data:`READS` pass unchecked; every other one (each
other method of Optuna's ``BaseStorage``, one a newer Optuna adds, any other method of the storage
reached through the wrapper) is a write. The fence is a policy of the one delegating storage
(:mod:`maou.sweep.storage.delegating`), as retrying is.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from maou.errors import UserError
from maou.sweep.storage.delegating import DelegatingStorage, StoragePolicy

HEARTBEAT_S = 10.0
#: A lock whose heartbeat is older than this is the lock of a dead (or frozen) driver.
STALE_S = 60.0
#: How often the fence reads the lock trial's state back (between, the heartbeat's age stands).
RECHECK_S = 2.0
#: The operations of Optuna's BaseStorage that only read: the only ones the fence lets through
#: unchecked (a driver that lost its lock may still look). ``remove_session`` is here too: it writes
#: nothing, only gives a connection back. Anything else is fenced, a method a newer Optuna adds
#: included, until it is added here (tests/test_storage_delegation.py checks this list against
#: Optuna's). Reads with a default implementation in BaseStorage run the inner storage's own
#: version, one read (see maou.sweep.storage.delegating).
READS = frozenset({
    "check_trial_is_updatable", "get_all_studies", "get_all_trials", "get_best_trial", "get_n_trials",
    "get_study_directions", "get_study_id_from_name", "get_study_name_from_id", "get_study_system_attrs",
    "get_study_user_attrs", "get_trial", "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id",
    "get_trial_param", "get_trial_params", "get_trial_system_attrs", "get_trial_user_attrs", "remove_session",
})


def lock_study_name(sweep_name: str) -> str:
    return f"{sweep_name}@lock"


class LostLock(BaseException):
    """This driver no longer holds its sweep's lock: it stops at once and writes nothing more.

    A BaseException, like KeyboardInterrupt: no handler of a trial's error may catch it and record
    anything."""

    exit_code = 3


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _boot_id() -> str | None:
    return _read("/proc/sys/kernel/random/boot_id")


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _start_time(pid: int) -> int | None:
    """The pid's start time in clock ticks since boot (field 22 of ``/proc/<pid>/stat``)."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def this_owner() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "boot_id": _boot_id(), "pid_ns": _pid_namespace(),
            "start_time": _start_time(pid), "since": datetime.now(UTC).isoformat(timespec="seconds")}


def _beat(trial: FrozenTrial) -> float:
    """Seconds since the epoch of a lock trial's last sign of life (Optuna stores local times)."""
    started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
    return max(started, float(trial.user_attrs.get("heartbeat", 0.0)))


def _process_gone(owner: dict[str, Any]) -> bool:
    """True only when the owner is certainly dead: a process of this host and pid namespace that no
    longer exists, or whose pid now belongs to a process started at another time."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    boot = owner.get("boot_id")
    if boot is not None and boot != _boot_id():
        return False  # another boot (or another machine of the same name): only the heartbeat tells
    if "pid_ns" in owner and owner["pid_ns"] != _pid_namespace():
        return False  # its pids are not ours to look up: wait for the heartbeat to go stale
    started = _start_time(owner["pid"])
    if started is None:
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # a live process of another user
            return False
        return False
    return owner.get("start_time") is not None and started != owner["start_time"]


def _alive(trial: FrozenTrial, now: float, stale_s: float) -> bool:
    """The owner of a lock trial still holds it: not certainly dead, and beating."""
    owner = trial.user_attrs.get("owner", {})
    if _process_gone(owner):
        return False
    return now - _beat(trial) < stale_s


def _describe(owner: dict[str, Any]) -> str:
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} since {owner.get('since', '?')}"


class Fence(StoragePolicy):
    """Whether this driver still holds its lock, checked before every write it makes: the policy of
    :class:`FencedStorage` (every operation not on :data:`READS` is a write)."""

    def __init__(self, storage: BaseStorage, study_id: int, trial_id: int, token: int, stale_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.storage, self.study_id, self.trial_id, self.token = storage, study_id, trial_id, token
        self.stale_s, self.clock = stale_s, clock
        self.last_beat = clock()
        self.last_beat_wall = time.time()
        self.last_checked = clock()
        #: Why this driver lost the lock (None while it holds it).
        self.lost: str | None = None
        self.failed_beats = 0
        self._mutex = threading.Lock()

    def beat_ok(self) -> None:
        with self._mutex:
            self.last_beat, self.last_beat_wall = self.clock(), time.time()
            self.failed_beats = 0

    def beat_failed(self) -> None:
        with self._mutex:
            self.failed_beats += 1

    def check(self) -> None:
        """Raise :class:`LostLock` unless this driver may still write."""
        if self.lost is not None:
            raise LostLock(self.lost)
        now = self.clock()
        if now - self.last_beat > self.stale_s / 2:
            self._lose(f"no heartbeat for {now - self.last_beat:.0f} s (more than half the lock's stale time "
                       f"of {self.stale_s:.0f} s: frozen, or the storage was unreachable)")
        if now - self.last_checked >= RECHECK_S:
            state = self.storage.get_trial(self.trial_id).state
            if state != TrialState.RUNNING:
                self._lose("its lock was taken over")
            self.last_checked = now

    def call(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if name not in READS:
            self.check()
        return fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Fence(token {self.token})"

    def _lose(self, why: str) -> None:
        holder = self._holder()
        written = datetime.fromtimestamp(self.last_beat_wall, UTC).isoformat(timespec="seconds")
        self.lost = (f"lost the sweep lock{' to ' + _describe(holder) if holder else ''} ({why}); this driver "
                     f"wrote nothing after {written}")
        raise LostLock(self.lost)

    def _holder(self) -> dict[str, Any] | None:
        try:
            trials = self.storage.get_all_trials(self.study_id, deepcopy=False, states=(TrialState.RUNNING,))
        except Exception:  # noqa: BLE001 - naming the new owner is a courtesy
            return None
        others = [t for t in trials if t._trial_id != self.trial_id]
        return others[0].user_attrs.get("owner", {}) if others else None


class _Heartbeat(threading.Thread):
    def __init__(self, storage: BaseStorage, fence: Fence, interval_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(name="maou-sweep-lock-heartbeat", daemon=True)
        self.storage, self.fence, self.interval_s, self.clock = storage, fence, interval_s, clock
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            if self.fence.lost is not None:
                return
            try:
                # a beat on a lock trial that was taken over fails (it is finished): the fence notices
                if self.storage.get_trial(self.fence.trial_id).state != TrialState.RUNNING:
                    self.fence.beat_failed()
                    continue
                self.storage.set_trial_user_attr(self.fence.trial_id, "heartbeat", self.clock())
            except Exception:  # noqa: BLE001 - counted; a driver that cannot beat stops itself (Fence)
                self.fence.beat_failed()
                continue
            self.fence.beat_ok()


class FencedStorage(DelegatingStorage):
    """``inner`` with every write checked against the driver's :class:`Fence` first."""

    policy: Fence

    def __init__(self, inner: BaseStorage, fence: Fence) -> None:
        super().__init__(inner, fence)

    @property
    def fence(self) -> Fence:
        return self.policy

    def __repr__(self) -> str:
        return f"FencedStorage({self.inner!r}, token {self.fence.token})"


@contextmanager
def sweep_lock(storage: BaseStorage, sweep_name: str, heartbeat_s: float | None = None,
               stale_s: float | None = None, clock: Callable[[], float] = time.time) -> Iterator[FencedStorage]:
    """Hold the lock of ``sweep_name`` in ``storage`` for the ``with`` block, or raise UserError;
    yields the storage to write through (every write fenced). The heartbeat and stale times default
    to ``MAOU_LOCK_HEARTBEAT_S`` and ``MAOU_LOCK_STALE_S`` when set, else ``HEARTBEAT_S`` and ``STALE_S``.
    ``clock``: the wall clock of the heartbeats written and read (seconds since the epoch; tests pass
    their own)."""
    heartbeat_s = heartbeat_s if heartbeat_s is not None else float(os.environ.get("MAOU_LOCK_HEARTBEAT_S",
                                                                                      HEARTBEAT_S))
    stale_s = stale_s if stale_s is not None else float(os.environ.get("MAOU_LOCK_STALE_S", STALE_S))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=lock_study_name(sweep_name), storage=storage, load_if_exists=True)
    study.set_user_attr("purpose", f"the lock of sweep {sweep_name}: one driver at a time (maou-sweep)")
    mine = study.ask()
    mine.set_user_attr("owner", this_owner())
    mine.set_user_attr("heartbeat", clock())
    now = clock()
    earlier = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number < mine.number]
    holder = next((t for t in earlier if _alive(t, now, stale_s)), None)
    if holder is not None:
        study.tell(mine, state=TrialState.FAIL)
        raise UserError(f"sweep {sweep_name!r} is already running ({_describe(holder.user_attrs.get('owner', {}))})"
                        f"; wait for it or stop it first")
    for stale in earlier:  # drivers that died (or froze) holding the lock
        try:
            storage.set_trial_user_attr(stale._trial_id, "released", f"stale: taken over by token {mine.number}")
            storage.set_trial_state_values(stale._trial_id, TrialState.FAIL)
        except RuntimeError:  # another contender failed it first (UpdateFinishedTrialError)
            pass
    fence = Fence(storage, study._study_id, mine._trial_id, mine.number, stale_s)
    heartbeat = _Heartbeat(storage, fence, heartbeat_s, clock)
    heartbeat.start()
    try:
        yield FencedStorage(storage, fence)  # type: ignore[abstract]  # operations set on DelegatingStorage
    finally:
        heartbeat.stopped.set()
        heartbeat.join()
        if fence.lost is None:  # a driver that lost the lock releases nothing: it is not its own
            try:
                fence.check()
                storage.set_trial_user_attr(mine._trial_id, "released", "at the end of the run")
                storage.set_trial_state_values(mine._trial_id, TrialState.COMPLETE, [0.0])
            except LostLock:
                pass


__all__ = ["HEARTBEAT_S", "READS", "RECHECK_S", "STALE_S", "Fence", "FencedStorage", "LostLock", "lock_study_name",
           "sweep_lock", "this_owner"]
