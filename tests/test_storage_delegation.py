"""One delegating storage, two policies: every method of Optuna's BaseStorage is forwarded (a
default-implemented one as itself), retried by RetryingStorage, and fenced by FencedStorage unless
it is on the fence's list of reads, a method a newer Optuna adds included (the fence fails closed)."""

from __future__ import annotations

import inspect
import runpy
import types
from typing import Any

import optuna
import pytest
import sqlalchemy.exc
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState
from test_fencing import lock_trials_of

from maou.sweep.run import lock as lock_module
from maou.sweep.run.lock import READS, Fence, FencedStorage, LostLock, lock_study_name, sweep_lock
from maou.sweep.storage import OPERATIONS, DelegatingStorage, RetryingStorage, StoragePolicy, open_storage
from maou.sweep.storage import delegating as delegating_module
from maou.sweep.storage import retries as retries_module

#: Every public method of the installed Optuna's BaseStorage, abstract or with a default.
BASE_METHODS = {name for name, _ in inspect.getmembers(BaseStorage, inspect.isfunction) if not name.startswith("_")}
WRITES = sorted(BASE_METHODS - READS)


class Recorder:
    """A stand-in inner storage: every method (bound, as a real storage's) records its call and
    returns its name."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def method(_self: Recorder, *args: Any, **kwargs: Any) -> str:
            self.calls.append((name, args, kwargs))
            return name

        return types.MethodType(method, self)


class Seen(StoragePolicy):
    def __init__(self) -> None:
        self.names: list[str] = []

    def call(self, name: str, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.names.append(name)
        return fn(*args, **kwargs)


def lost_fence() -> Fence:
    """A fence that has lost its lock (no heartbeat for more than half the stale time)."""
    storage = open_storage("memory:")
    study = optuna.create_study(study_name=lock_study_name("s"), storage=storage)
    trial = study.ask()
    now = [100.0]
    fence = Fence(storage, study._study_id, trial._trial_id, trial.number, stale_s=10.0, clock=lambda: now[0])
    now[0] += 6.0
    with pytest.raises(LostLock):
        fence.check()
    return fence


# --- the lists against Optuna's BaseStorage ------------------------------------------------------
def test_the_reads_list_names_only_real_reads_of_base_storage():
    assert READS <= BASE_METHODS, f"not BaseStorage methods: {sorted(READS - BASE_METHODS)}"
    for name in READS:  # no read is named like a write
        assert not name.startswith(("set_", "create_", "delete_")), name
    assert {"create_new_trial", "set_trial_state_values", "set_trial_user_attr", "delete_study"} <= set(WRITES)


def test_every_public_method_of_base_storage_is_delegated_none_inherited():
    assert set(OPERATIONS) == BASE_METHODS
    for name in BASE_METHODS:  # a default of BaseStorage would run against the wrapper, not the inner storage
        assert name in vars(DelegatingStorage), f"{name} is inherited from BaseStorage, not delegated"
    assert not DelegatingStorage.__abstractmethods__
    inner, policy = Recorder(), Seen()
    storage = DelegatingStorage(inner, policy)
    for name in sorted(BASE_METHODS):
        assert getattr(storage, name)(1, key=2) == name
    # each one call of the inner storage's own method: get_best_trial is the inner's, not
    # BaseStorage's default reading every trial through the wrapper
    assert inner.calls == [(name, (1,), {"key": 2}) for name in sorted(BASE_METHODS)]
    assert policy.names == sorted(BASE_METHODS)


def test_every_write_is_fenced_and_every_read_passes_once_the_fence_is_lost():
    inner = Recorder()
    fenced = FencedStorage(inner, lost_fence())
    for name in WRITES:
        with pytest.raises(LostLock, match="lost the sweep lock"):
            getattr(fenced, name)(1, 2)
    assert inner.calls == []  # not one write reached the storage
    for name in sorted(READS):
        assert getattr(fenced, name)(1) == name
    assert [c[0] for c in inner.calls] == sorted(READS)
    with pytest.raises(LostLock):  # a method of the inner storage that BaseStorage does not have
        fenced.upgrade()
    assert len(inner.calls) == len(READS)


def test_a_method_a_newer_optuna_adds_is_delegated_and_fenced(monkeypatch):
    def set_trial_colour(self: BaseStorage, trial_id: int, colour: str) -> None:
        raise NotImplementedError

    monkeypatch.setattr(BaseStorage, "set_trial_colour", set_trial_colour, raising=False)
    newer = runpy.run_path(delegating_module.__file__)  # the module as a newer Optuna would import it
    assert "set_trial_colour" in newer["OPERATIONS"]
    inner = Recorder()
    storage = newer["DelegatingStorage"](inner, lost_fence())
    with pytest.raises(LostLock):
        storage.set_trial_colour(1, "red")
    assert inner.calls == []


def test_every_operation_is_retried_while_the_database_is_unreachable(monkeypatch, capsys):
    monkeypatch.setattr(retries_module.time, "sleep", lambda _s: None)
    failed: set[str] = set()

    class Flaky(Recorder):
        def __getattr__(self, name: str) -> Any:
            recorded = super().__getattr__(name)

            def method(*args: Any, **kwargs: Any) -> Any:
                if name not in failed:
                    failed.add(name)
                    raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
                return recorded(*args, **kwargs)

            return method

    inner = Flaky()
    storage = RetryingStorage(inner, "postgresql://u:secret@db/x")
    for name in sorted(BASE_METHODS):
        assert getattr(storage, name)(1) == name
    assert failed == BASE_METHODS and [c[0] for c in inner.calls] == sorted(BASE_METHODS)
    err = capsys.readouterr().err
    assert "storage postgresql://u:***@db/x unreachable" in err and "secret" not in err
    assert repr(storage) == "RetryingStorage(postgresql://u:***@db/x)"


def test_a_request_error_is_not_retried():
    class Invalid(Recorder):
        def __getattr__(self, name: str) -> Any:
            def method(*args: Any, **kwargs: Any) -> Any:
                self.calls.append((name, args, kwargs))
                raise KeyError("no such study")

            return method

    inner = Invalid()
    storage = RetryingStorage(inner, "memory:")
    with pytest.raises(KeyError, match="no such study"):
        storage.get_study_id_from_name("nope")
    assert len(inner.calls) == 1


# --- through the real lock -------------------------------------------------------------------------
def _snapshot(storage: BaseStorage) -> list[tuple[Any, ...]]:
    return [(s.study_name, s.user_attrs, s.system_attrs,
             [(t.number, t.state, t.values, t.params, t.user_attrs, t.system_attrs, t.intermediate_values)
              for t in storage.get_all_trials(s._study_id)])
            for s in storage.get_all_studies()]


def test_after_a_takeover_every_write_is_refused_and_reads_still_answer(monkeypatch):
    monkeypatch.setattr(lock_module, "RECHECK_S", 0.0)  # read the lock back at every write
    storage = open_storage("memory:")
    with pytest.raises(LostLock, match="lost the sweep lock"):
        with sweep_lock(storage, "s") as fenced:
            study = optuna.create_study(study_name="s/01-x", storage=fenced)
            trial = study.ask()
            (mine,) = lock_trials_of(storage, "s")
            storage.set_trial_state_values(mine._trial_id, TrialState.FAIL)  # another driver took over
            optuna.load_study(study_name=lock_study_name("s"), storage=storage).ask()
            before = _snapshot(storage)
            args: dict[str, tuple[Any, ...]] = {
                "create_new_study": ([StudyDirection.MINIMIZE], "s/02-y"), "delete_study": (study._study_id,),
                "create_new_trial": (study._study_id,), "set_trial_state_values": (trial._trial_id, TrialState.FAIL),
                "set_trial_param": (trial._trial_id, "lr", 0.5, optuna.distributions.FloatDistribution(0, 1)),
                "set_trial_intermediate_value": (trial._trial_id, 0, 1.0)}
            for name in WRITES:
                with pytest.raises(LostLock, match="lost the sweep lock"):
                    getattr(fenced, name)(*args.get(name, (study._study_id, "key", "value")))
            assert _snapshot(storage) == before  # nothing written
            assert fenced.get_trial(trial._trial_id).state == TrialState.RUNNING  # reads answer
            assert fenced.get_n_trials(study._study_id) == 1
            assert [s.study_name for s in fenced.get_all_studies()] == [lock_study_name("s"), "s/01-x"]
            study.tell(trial, 1.0)
    assert _snapshot(storage) == before
