"""Transient storage errors retried: an operation that fails because the database is unreachable (a
restart, a network blip, a locked SQLite file) is retried with exponential backoff for
``MAOU_STORAGE_RETRY_SECONDS`` (default 60) before the sweep stops with one line naming the storage.
A server that refuses the connection (a wrong password, a role or a database that does not exist) is
not unreachable: that stops at once, with the server's words.

:class:`RetryingStorage` is the :class:`~maou.sweep.storage.delegating.DelegatingStorage` with the
:class:`Retrying` policy: every storage :func:`~maou.sweep.storage.open_storage` opens is one."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages import BaseStorage

from maou.errors import UserError
from maou.sweep.storage.delegating import DelegatingStorage, StoragePolicy
from maou.sweep.storage.urls import mask_url

RETRY_SECONDS_ENV = "MAOU_STORAGE_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 60.0
#: What a database server says when it refuses these credentials or this database (PostgreSQL's
#: libpq, MySQL): no retry makes them right.
_REFUSALS = re.compile(
    r"password authentication failed|(?:peer|ident|ldap|radius|pam|cert|gss|sspi) authentication failed"
    r"|role \"[^\"]*\" does not exist|database \"[^\"]*\" does not exist|no pg_hba\.conf entry"
    r"|no password supplied|permission denied for database|access denied for user|unknown database",
    re.IGNORECASE)


def refusal(exc: BaseException) -> str | None:
    """The server's words when it refused the connection itself (credentials, role, database): an
    error to report at once, never one to retry. None for any other error."""
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen)
        match = _REFUSALS.search(text)
        if match is not None:
            line = next(line for line in text.splitlines() if match.group(0) in line)
            line = line.split("FATAL:", 1)[-1]
            return mask_url(" ".join(line.split()))[:300]
        seen = seen.__cause__
    return None


def reason(exc: BaseException) -> str:
    """The root cause of a storage error in one line, credentials masked."""
    while exc.__cause__ is not None and isinstance(exc, optuna.exceptions.StorageInternalError):
        exc = exc.__cause__
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return mask_url(f"{type(exc).__name__}: {first}")[:300]


def is_transient(exc: BaseException) -> bool:
    """A storage error worth retrying: the database was unreachable, not the request invalid."""
    import sqlalchemy.exc

    if refusal(exc) is not None:  # libpq reports a refused login as an OperationalError too
        return False
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__
    return False


def retry(call: Callable[[], Any], url: str, what: str) -> Any:
    """``call()``, retried while the database at ``url`` is unreachable; ``what``: the operation, as
    the one line that stops the sweep names it."""
    budget = float(os.environ.get(RETRY_SECONDS_ENV, DEFAULT_RETRY_SECONDS))
    deadline, delay, warned = time.monotonic() + budget, 0.25, False
    while True:
        try:
            return call()
        except Exception as exc:
            refused = refusal(exc)
            if refused is not None:
                raise UserError(f"storage {mask_url(url)} refused the connection ({what}): {refused}; "
                                f"not retried: check the user, password and database in the URL") from None
            if not is_transient(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise UserError(f"storage {mask_url(url)} unreachable for {budget:g} s ({what}): "
                                f"{reason(exc)}") from None
            if not warned:
                print(f"storage {mask_url(url)} unreachable ({reason(exc)}); retrying for up to {budget:g} s",
                      file=sys.stderr)
                warned = True
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class Retrying(StoragePolicy):
    """Every operation retried while the database at ``url`` is unreachable (:func:`retry`)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return retry(lambda: fn(*args, **kwargs), self.url, name)

    def __repr__(self) -> str:
        return f"Retrying({mask_url(self.url)})"


class RetryingStorage(DelegatingStorage):
    """Any Optuna storage, every operation retried while the database is unreachable."""

    policy: Retrying

    def __init__(self, inner: BaseStorage, url: str) -> None:
        super().__init__(inner, Retrying(url))

    @property
    def url(self) -> str:
        return self.policy.url

    def __repr__(self) -> str:
        return f"RetryingStorage({mask_url(self.url)})"


def retrying(inner: BaseStorage, url: str) -> BaseStorage:
    """``inner`` with every operation retried while its database is unreachable."""
    return RetryingStorage(inner, url)  # type: ignore[abstract]  # its operations are set on DelegatingStorage


__all__ = ["DEFAULT_RETRY_SECONDS", "RETRY_SECONDS_ENV", "Retrying", "RetryingStorage", "is_transient", "reason",
           "refusal", "retry", "retrying"]
