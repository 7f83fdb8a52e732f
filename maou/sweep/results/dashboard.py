"""What ``sweep dashboard`` serves: optuna-dashboard on a sweep's storage, showing the sweeps' steps
and not their lock studies, read-only unless ``--allow-writes``, with a warning when other machines
can reach it.

The lock studies (``<sweep>@lock``) stay where they are: :class:`StepsOnlyStorage` is the storage as
the dashboard sees it, where they do not exist (not listed, not found by id or by name): one more
policy (:class:`HideLocks`) on the one delegating storage (:mod:`maou.sweep.storage.delegating`). Writes are
refused by :func:`read_only`, a WSGI middleware in front of optuna-dashboard: every request that is
not a GET, HEAD or OPTIONS answers 403, except the dashboard's LLM helpers (POSTs that only ask a
language model for a query and store nothing). Every page and figure of the dashboard is fetched
with GET (optuna-dashboard 0.21).
"""

from __future__ import annotations

import inspect
import ipaddress
import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from optuna.storages import BaseStorage

from maou.sweep.run.lock import lock_study_name
from maou.sweep.storage.delegating import OPERATIONS, DelegatingStorage, StoragePolicy

#: The end of every lock study's name.
_LOCK_SUFFIX = lock_study_name("")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: POSTs that change nothing stored: optuna-dashboard's LLM helpers.
_STORES_NOTHING = re.compile(r"^/api/llm/[A-Za-z_]+/*$")
WRITES_OFF = ("this dashboard is read-only: writes are off (start it with `sweep dashboard --allow-writes` "
              "to change or delete studies and trials)")


def is_lock_study(study_name: str) -> bool:
    """A sweep's lock study (no step study's name ends so: step names have no '@')."""
    return study_name.endswith(_LOCK_SUFFIX)


class HideLocks(StoragePolicy):
    """The policy of the dashboard's storage: lock studies are not listed, and every operation on
    one by id or by name raises ``KeyError`` as for a study that is not there (the dashboard answers
    404). Everything else goes to the storage unchanged."""

    def __init__(self, inner: BaseStorage) -> None:
        self.inner = inner

    def call(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if name == "get_all_studies":
            studies = [s for s in fn(*args, **kwargs) if not is_lock_study(s.study_name)]
            return sorted(studies, key=lambda s: s._study_id)
        if name == "get_study_id_from_name":
            study_name = kwargs["study_name"] if "study_name" in kwargs else args[0]
            if is_lock_study(study_name):
                raise KeyError(f"No such study {study_name}.")
        elif name in _BY_STUDY:
            study_id = kwargs["study_id"] if "study_id" in kwargs else args[0]
            if is_lock_study(self.inner.get_study_name_from_id(study_id)):
                raise KeyError(f"No study with study_id {study_id} exists.")
        return fn(*args, **kwargs)

    def __repr__(self) -> str:
        return "HideLocks()"


#: The storage operations that name a study by its id (their first parameter).
_BY_STUDY = frozenset(name for name in OPERATIONS
                      if list(inspect.signature(getattr(BaseStorage, name)).parameters)[1:2] == ["study_id"])


class StepsOnlyStorage(DelegatingStorage):
    """A storage as the dashboard sees it: lock studies do not exist (:class:`HideLocks`)."""

    def __init__(self, inner: BaseStorage) -> None:
        super().__init__(inner, HideLocks(inner))

    def __repr__(self) -> str:
        return f"StepsOnlyStorage({self.inner!r})"


def read_only(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """``app`` answering 403 (a JSON ``reason``, which the dashboard shows) to every request that
    could change the storage."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        if method in SAFE_METHODS or (method == "POST" and _STORES_NOTHING.match(environ.get("PATH_INFO", ""))):
            return app(environ, start_response)
        body = json.dumps({"reason": WRITES_OFF}).encode()
        start_response("403 Forbidden", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return guarded


def dashboard_app(storage: BaseStorage, allow_writes: bool = False) -> Callable[..., Iterable[bytes]]:
    """optuna-dashboard's WSGI app on ``storage``: lock studies hidden, read-only unless ``allow_writes``."""
    import optuna_dashboard

    app = optuna_dashboard.wsgi(StepsOnlyStorage(storage))  # type: ignore[abstract]  # operations set above
    return app if allow_writes else read_only(app)


def is_loopback(host: str) -> bool:
    """Only this machine can connect to ``host``: ``localhost`` or a loopback address (127.0.0.0/8,
    ::1). Any other name or address (0.0.0.0, ::, a LAN address) is reachable from elsewhere."""
    host = host.strip().strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def exposure_warning(host: str, allow_writes: bool) -> str | None:
    """The one-line warning for a dashboard served on ``host``; None when only this machine can reach it."""
    if is_loopback(host):
        return None
    bare = host.strip().strip("[]")
    try:
        everywhere = ipaddress.ip_address(bare).is_unspecified
    except ValueError:
        everywhere = False
    who = "every network interface" if everywhere else "other machines on its network"
    shown = f"[{bare}]" if ":" in bare else bare
    return (f"warning: serving on {shown}: {who} can reach this dashboard"
            + (" and writes are allowed" if allow_writes else ""))


__all__ = ["SAFE_METHODS", "WRITES_OFF", "StepsOnlyStorage", "dashboard_app", "exposure_warning", "is_lock_study",
           "is_loopback", "read_only"]
