"""Optuna storages: open by URL (credentials masked wherever a URL is shown), retry transient
errors, and list a sweep's step studies.

URLs: ``sqlite:///studies/x.db`` (default; the folder is created), any SQLAlchemy URL such as
``postgresql://user:password@host/db`` (several writers, several nodes; psycopg 3 is installed),
``journal:///path/to/file.log`` (Optuna's journal file, safe for several processes on one file
system), or ``memory:`` (tests).

Every storage is wrapped in :class:`RetryingStorage`: an operation that fails because the
database is unreachable (a restart, a network blip, a locked SQLite file) is retried with
exponential backoff for ``MAOU_STORAGE_RETRY_SECONDS`` (default 60) before the sweep stops with
one line naming the storage.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage

from maou.errors import UserError

RETRY_SECONDS_ENV = "MAOU_STORAGE_RETRY_SECONDS"
#: What a database says when another driver created Optuna's tables a moment earlier.
_SCHEMA_RACES = ("already exists", "UNIQUE constraint failed", "duplicate key value")
DEFAULT_RETRY_SECONDS = 60.0
_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@]*:)(?P<password>[^@/]*)@", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)[^&]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (what consoles, errors and titles show)."""
    url = _PASSWORD.sub(lambda m: f"{m.group('head')}***@", url)
    return _QUERY_PASSWORD.sub(lambda m: f"{m.group('head')}***", url)


def _file_of(url: str) -> Path | None:
    """The local file behind a ``sqlite:///`` or ``journal://`` URL (None for other storages)."""
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):].split("?", 1)[0])
    if url.startswith("journal://"):
        return Path(url[len("journal://"):])
    return None


def storage_exists(url: str) -> bool:
    """False only when the URL names a local file that does not exist (never run there yet)."""
    path = _file_of(url)
    return path is None or path.exists()


def open_storage(url: str, create: bool = True) -> BaseStorage:
    """The storage at ``url``, wrapped to retry transient errors. With ``create=False`` a local
    storage file that does not exist is an error (``status`` and ``export`` never create one)."""
    if url == "memory:":
        return retrying(optuna.storages.InMemoryStorage(), url)
    path = _file_of(url)
    if path is not None and not path.exists():
        if not create:
            raise UserError(f"no storage at {mask_url(url)}: this sweep has not run yet")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the storage folder {path.parent}: {exc.strerror}") from None
    if url.startswith("journal://"):
        from optuna.storages.journal import JournalFileBackend

        inner: BaseStorage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        return retrying(inner, url)
    engine = ({"connect_args": {"timeout": 60}} if url.startswith("sqlite")
              else {"pool_pre_ping": True})  # a connection dropped by a server restart is replaced
    for attempt in range(3):
        try:
            inner = _retry(lambda: optuna.storages.RDBStorage(url, engine_kwargs=engine), url, "open")
            break
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds; the user needs the URL
            # two drivers creating Optuna's tables in a new database at once: the loser retries
            if any(race in str(exc) for race in _SCHEMA_RACES) and attempt < 2:
                time.sleep(0.5)
                continue
            raise UserError(f"cannot open Optuna storage {mask_url(url)}: {_reason(exc)}") from None
    return retrying(inner, url)


def _reason(exc: BaseException) -> str:
    """The root cause of a storage error in one line, credentials masked."""
    while exc.__cause__ is not None and isinstance(exc, optuna.exceptions.StorageInternalError):
        exc = exc.__cause__
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return mask_url(f"{type(exc).__name__}: {first}")[:300]


def is_transient(exc: BaseException) -> bool:
    """A storage error worth retrying: the database was unreachable, not the request invalid."""
    import sqlalchemy.exc

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__
    return False


def _retry(call: Callable[[], Any], url: str, what: str) -> Any:
    budget = float(os.environ.get(RETRY_SECONDS_ENV, DEFAULT_RETRY_SECONDS))
    deadline, delay, warned = time.monotonic() + budget, 0.25, False
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise UserError(f"storage {mask_url(url)} unreachable for {budget:g} s ({what}): "
                                f"{_reason(exc)}") from None
            if not warned:
                print(f"storage {mask_url(url)} unreachable ({_reason(exc)}); retrying for up to {budget:g} s",
                      file=sys.stderr)
                warned = True
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class RetryingStorage(BaseStorage):
    """Any Optuna storage, every operation retried while the database is unreachable."""

    def __init__(self, inner: BaseStorage, url: str) -> None:
        self.inner, self.url = inner, url

    def __getattr__(self, name: str) -> Any:  # attributes that are not storage operations
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"RetryingStorage({mask_url(self.url)})"


def _retrying(name: str) -> Callable[..., Any]:
    def method(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        return _retry(lambda: getattr(self.inner, name)(*args, **kwargs), self.url, name)

    method.__name__ = name
    return method


for _name, _ in inspect.getmembers(BaseStorage, inspect.isfunction):  # every storage operation
    if not _name.startswith("_"):
        setattr(RetryingStorage, _name, _retrying(_name))
RetryingStorage.__abstractmethods__ = frozenset()


def retrying(inner: BaseStorage, url: str) -> BaseStorage:
    """``inner`` with every operation retried while its database is unreachable."""
    return RetryingStorage(inner, url)  # type: ignore[abstract]  # its operations are set just above


def step_study_names(storage: BaseStorage, sweep_name: str) -> list[str]:
    """Names of the studies of one sweep (``<sweep>/<NN>-<step>``) in the storage, sorted."""
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    return sorted(n for n in names if n.startswith(f"{sweep_name}/"))


__all__ = ["RetryingStorage", "is_transient", "mask_url", "open_storage", "retrying", "step_study_names",
           "storage_exists"]
