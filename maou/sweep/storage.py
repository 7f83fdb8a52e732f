"""Optuna storages: open by URL, one driver per sweep, list a sweep's step studies.

URLs: ``sqlite:///studies/x.db`` (default; the folder is created), any SQLAlchemy URL such as
``postgresql://...`` (several writers, several nodes), ``journal:///path/to/file.log`` (Optuna's
journal file, safe for several processes on one file system), or ``memory:`` (tests).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from maou.errors import UserError


def open_storage(url: str):
    import optuna

    if url == "memory:":
        return optuna.storages.InMemoryStorage()
    if url.startswith("journal://"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len("journal://"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except Exception as exc:
        raise UserError(f"cannot open Optuna storage {url!r}: {exc}") from exc


def _engine_kwargs(url: str) -> dict:
    # SQLite: wait for a busy database instead of failing at once (dashboard readers, Ray writers).
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


def step_study_names(storage, sweep_name: str) -> list[str]:
    """Names of the studies of one sweep (``<sweep>/<NN>-<step>``), in step order."""
    import optuna

    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    return sorted(n for n in names if n.startswith(f"{sweep_name}/"))


@contextmanager
def sweep_lock(url: str, sweep_name: str) -> Iterator[None]:
    """Refuse a second ``sweep run`` of the same sweep on the same local storage at the same time.

    With one driver per sweep, a trial left RUNNING in the storage can only come from a driver
    that died, and is safe to re-run. Remote storages (PostgreSQL) are not locked here.
    """
    if not url.startswith(("sqlite:///", "journal://")):
        yield
        return
    path = Path(url.split("///", 1)[1] if url.startswith("sqlite") else url[len("journal://"):])
    lock_path = path.with_name(f"{path.name}.{sweep_name}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise UserError(f"sweep {sweep_name!r} is already running on {url} (pid {handle.read().strip()}); "
                            f"wait for it or stop it first") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
