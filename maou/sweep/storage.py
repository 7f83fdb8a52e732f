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

A URL that cannot work as written (``postgres://``, ``sqlite:/x.db``, a driver that is not
installed, an unknown scheme) is refused with the likely fix (:func:`url_typo`). A run about to
create a new SQLite file while another storage in the project holds the same sweep's studies is
refused as a likely typo (:func:`refuse_storage_typo`; ``sweep run --new-storage`` proceeds).

A server that refuses the connection (a wrong password, a role or a
database that does not exist) is not unreachable: that stops at once, with the server's words.

:func:`check_openable` finds, creating nothing, a storage ``sweep run`` could not open or create (a
folder where its file would go, a parent that is a file, an unwritable folder, a file that is not
SQLite, a server unreachable or refusing): ``sweep plan`` and ``sweep run`` refuse it before they
build, lock or write anything.

Readers (``create=False``: status, export, report, plan, dashboard) never create, stamp or migrate
a storage: a missing file is "not run yet", a file or database without Optuna's tables is "not an
Optuna storage", and a schema of another Optuna version is an error naming the upgrade command.
"""

from __future__ import annotations

import contextlib
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
#: What a database server says when it refuses these credentials or this database (PostgreSQL's
#: libpq, MySQL): no retry makes them right.
_REFUSALS = re.compile(
    r"password authentication failed|(?:peer|ident|ldap|radius|pam|cert|gss|sspi) authentication failed"
    r"|role \"[^\"]*\" does not exist|database \"[^\"]*\" does not exist|no pg_hba\.conf entry"
    r"|no password supplied|permission denied for database|access denied for user|unknown database",
    re.IGNORECASE)
#: Optuna's own tables; a readable storage has every one.
_OPTUNA_TABLES = frozenset({"studies", "trials", "version_info", "alembic_version"})
_SQLITE_HEADER = b"SQLite format 3\x00"


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


class NoStorage(UserError):
    """Nothing at the URL yet (no file, or a database without a single table): the sweep has not
    run there. ``sweep plan`` reads that as "nothing done"; the other readers refuse it."""


class NotAStorage(UserError):
    """Something at the URL that readers must not touch: not Optuna's, or another Optuna's schema."""


#: The storage URLs maou-sweep supports, as an error message lists them.
SUPPORTED = ("sqlite:///PATH (relative to the project; sqlite:////PATH for an absolute one), "
             "postgresql://USER:PASSWORD@HOST/DB (psycopg 3), journal://PATH, memory:")
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):(?P<rest>.*)$", re.DOTALL)


def url_typo(url: str) -> str | None:
    """What is wrong with a storage URL that cannot work as written, with the likely fix (None when
    it looks right): ``postgres://`` for ``postgresql://``, ``sqlite:`` with the wrong number of
    slashes, a driver that is not installed, a bare path."""
    match = _SCHEME.match(url)
    if match is None:  # a bare path
        return f"{url!r} is not a storage URL; did you mean sqlite:///{url}?"
    scheme, rest = match.group("scheme").lower(), match.group("rest")
    dialect, _, driver = scheme.partition("+")
    if dialect == "sqlite":
        if rest.startswith("///") or rest in ("", "//"):  # a file, or SQLAlchemy's in-memory database
            return None
        path = rest.lstrip("/")
        return (f"{mask_url(url)} is not a SQLite file URL (it takes three slashes); did you mean "
                f"sqlite:///{path} (a relative path) or sqlite:////{path} (an absolute one)?")
    if dialect == "postgres":
        fixed = "postgresql" + (f"+{driver}" if driver else "") + ":" + rest
        return f"SQLAlchemy has no dialect 'postgres'; did you mean {mask_url(fixed)}?"
    if dialect == "postgresql" and driver and driver != "psycopg":
        import importlib.util

        module = {"psycopg2": "psycopg2", "pg8000": "pg8000", "asyncpg": "asyncpg"}.get(driver, driver)
        if importlib.util.find_spec(module) is None:
            return (f"the PostgreSQL driver {driver!r} of {mask_url(url)} is not installed; "
                    f"did you mean {mask_url('postgresql:' + rest)} (psycopg 3, installed)?")
    if dialect == "journal" and not rest.startswith("//"):
        return f"{mask_url(url)} is not a journal URL (journal://PATH); did you mean journal://{rest}?"
    return None


def _unknown_scheme(url: str, exc: BaseException) -> str | None:
    """The hint for a URL SQLAlchemy cannot open for want of a dialect or its driver."""
    import sqlalchemy.exc

    scheme = url.partition(":")[0]
    if isinstance(exc, sqlalchemy.exc.NoSuchModuleError):
        return f"unknown storage scheme {scheme}:; supported: {SUPPORTED}"
    if isinstance(exc, ImportError):
        return f"no driver installed for {scheme}:; supported: {SUPPORTED}"
    return None


def open_storage(url: str, create: bool = True) -> BaseStorage:
    """The storage at ``url``, wrapped to retry transient errors.

    ``create=False`` (every read command) opens only a storage that is already Optuna's, as it is:
    a local file that does not exist is :class:`NoStorage`; an empty or non-SQLite file, a database
    without Optuna's tables, or a schema of another Optuna version is :class:`NotAStorage`; and
    nothing is created, stamped or migrated.
    A URL that cannot work as written (:func:`url_typo`) is refused with the likely fix."""
    if url == "memory:":
        return retrying(optuna.storages.InMemoryStorage(), url)
    typo = url_typo(url)
    if typo is not None:
        raise UserError(f"bad storage URL: {typo}")
    path = _file_of(url)
    if path is not None and not path.exists():
        if not create:
            raise NoStorage(f"no storage at {mask_url(url)}: this sweep has not run yet")
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
    if not create:
        if path is not None:
            _check_sqlite_file(path)
        try:
            _retry(lambda: _check_schema(url, engine, path), url, "open")
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds; the user needs the URL
            raise UserError(f"cannot open Optuna storage {mask_url(url)}: {_reason(exc)}") from None
    for attempt in range(3):
        try:
            inner = _retry(lambda: optuna.storages.RDBStorage(url, engine_kwargs=engine,
                                                              skip_table_creation=not create), url, "open")
            break
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds; the user needs the URL
            # two drivers creating Optuna's tables in a new database at once: the loser retries
            if any(race in str(exc) for race in _SCHEMA_RACES) and attempt < 2:
                time.sleep(0.5)
                continue
            hint = _unknown_scheme(url, exc)
            if hint is not None:
                raise UserError(f"cannot open Optuna storage {mask_url(url)}: {hint}") from None
            raise UserError(f"cannot open Optuna storage {mask_url(url)}: {_reason(exc)}") from None
    return retrying(inner, url)


def folder_problem(folder: Path) -> str | None:
    """Why ``folder`` could not be made or written (None when it can), found without creating
    anything: the nearest part of it that exists must be a folder this process may write."""
    for existing in (folder, *folder.parents):
        if existing.exists() or existing.is_symlink():
            break
    if not existing.is_dir():
        return f"{existing} is not a folder" if existing.exists() else f"{existing} is a broken link"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable (permission denied)" if existing != folder else "permission denied"
    return None


def check_openable(url: str, write: bool = True) -> None:
    """Refuse, in one line and creating nothing, a storage that ``sweep run`` could not open
    (``write``) or ``sweep plan`` could not read: a URL that cannot work as written, a local file
    that is a folder, is not an SQLite database or cannot be read (or written, with its folder), a
    file whose folder cannot be created, a server that refuses the connection or stays unreachable
    (retried for ``MAOU_STORAGE_RETRY_SECONDS``, as every operation is). A server's database is
    only connected to: its tables are the business of :func:`open_storage`."""
    if url == "memory:":
        return
    typo = url_typo(url)
    if typo is not None:
        raise UserError(f"bad storage URL: {typo}")
    path = _file_of(url)
    if path is None:
        if not url.lower().startswith("sqlite"):  # sqlite:// is SQLAlchemy's in-memory database
            _reach(url)
        return
    if not path.exists():
        why = folder_problem(path.parent)
        if why is not None:
            raise UserError(f"cannot create the storage {path}: {why}")
        return
    if path.is_dir():
        raise UserError(f"the storage {path} is a folder, not a file")
    mode = os.R_OK | (os.W_OK if write else 0)
    if not os.access(path, mode):
        raise UserError(f"cannot {'write' if write else 'read'} the storage {path}: permission denied")
    if write and not os.access(path.parent, os.W_OK | os.X_OK):  # SQLite and the journal write beside it
        raise UserError(f"cannot write beside the storage {path}: its folder is not writable (permission denied)")
    if url.startswith("sqlite:///") and (not write or path.stat().st_size):  # an empty file is a new database
        _check_sqlite_file(path)


def _reach(url: str) -> None:
    """Connect to the server of ``url`` once (retried while it is unreachable, a refused login at once)."""
    import sqlalchemy

    def connect() -> None:
        engine = sqlalchemy.create_engine(url, pool_pre_ping=True)
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()

    try:
        _retry(connect, url, "open")
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds; the user needs the URL
        hint = _unknown_scheme(url, exc)
        raise UserError(f"cannot open Optuna storage {mask_url(url)}: {hint or _reason(exc)}") from None


def _check_sqlite_file(path: Path) -> None:
    """A reader's SQLite file must be an SQLite database (SQLite would take an empty file for a new one)."""
    try:
        with path.open("rb") as file:
            header = file.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise UserError(f"cannot read the storage {path}: {exc.strerror}") from None
    if not header:
        raise NotAStorage(f"not an Optuna storage: {path} (an empty file; read commands never create one)")
    if header != _SQLITE_HEADER:
        raise NotAStorage(f"not an Optuna storage: {path} (not an SQLite database)")


def _optuna_schemas() -> tuple[str, set[str]] | None:
    """(head, every known) revision of Optuna's storage schema, as its own migrations name them."""
    try:
        from alembic.script import ScriptDirectory
        from optuna.storages import _rdb

        script = ScriptDirectory(str(Path(_rdb.__file__).parent / "alembic"))
        head = script.get_current_head()
        return (head, {r.revision for r in script.walk_revisions()}) if head else None
    except Exception:  # noqa: BLE001 - Optuna moved its migrations: its own check still refuses a stale schema
        return None


def _check_schema(url: str, engine_kwargs: dict[str, Any], path: Path | None) -> None:
    """Refuse, before Optuna opens it (and would create its tables or stamp a version), a database a
    reader must not touch: without Optuna's tables, or with another Optuna version's schema."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        with engine.connect() as connection:
            tables = set(sqlalchemy.inspect(connection).get_table_names())
            revision = (connection.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar()
                        if "alembic_version" in tables else None)
    finally:
        engine.dispose()
    where = str(path) if path is not None else mask_url(url)
    if not tables and path is None:
        raise NoStorage(f"no Optuna storage at {where} (the database has no tables): this sweep has not run yet")
    if not _OPTUNA_TABLES <= tables:
        raise NotAStorage(f"not an Optuna storage: {where} (no Optuna tables)")
    schemas = _optuna_schemas()
    if schemas is None or revision == schemas[0]:
        return
    head, known = schemas
    if revision is None or revision in known:
        raise NotAStorage(f"{where} holds an older Optuna schema ({revision or 'unversioned'}; Optuna "
                          f"{optuna.__version__} reads {head}): read commands never migrate a storage; upgrade it with "
                          f"`optuna storage upgrade --storage {mask_url(url)}`")
    raise NotAStorage(f"{where} holds an Optuna schema this Optuna ({optuna.__version__}) does not know "
                      f"({revision}): a newer Optuna wrote it; upgrade optuna to read it")


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


def _reason(exc: BaseException) -> str:
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


def _retry(call: Callable[[], Any], url: str, what: str) -> Any:
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


def wrap_operations(cls: type, make: Callable[[str], Callable[..., Any]]) -> None:
    """Give ``cls`` (a wrapper around another storage) every public operation of Optuna's
    ``BaseStorage``, each ``make(name)``; the one place that lists a storage's operations."""
    for name, _ in inspect.getmembers(BaseStorage, inspect.isfunction):
        if not name.startswith("_"):
            setattr(cls, name, make(name))
    cls.__abstractmethods__ = frozenset()  # type: ignore[attr-defined]


wrap_operations(RetryingStorage, _retrying)


def retrying(inner: BaseStorage, url: str) -> BaseStorage:
    """``inner`` with every operation retried while its database is unreachable."""
    return RetryingStorage(inner, url)  # type: ignore[abstract]  # its operations are set just above


#: SQLite files looked at for another storage of a sweep, and how many at most.
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_MAX_CANDIDATES = 200


def _sqlite_study_names(path: Path) -> list[str]:
    """Study names in a SQLite file, read-only through ``sqlite3`` (not Optuna: it would create or
    upgrade its tables); [] for a file that is not an Optuna storage."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)) as db:
            return [row[0] for row in db.execute("SELECT study_name FROM studies")]
    except (sqlite3.Error, OSError, ValueError):
        return []


def other_storages_of(sweep_name: str, url: str, root: Path) -> list[tuple[Path, int]]:
    """SQLite storages other than ``url``'s that hold studies of sweep ``sweep_name``, with their number
    of step studies. Cheap: only ``*.db``/``*.sqlite``/``*.sqlite3`` files in the project root, its
    ``studies/`` folder, the folders right under the root and the folder of ``url``'s file are opened
    (no deeper search, at most a few hundred files)."""
    target = _file_of(url)
    target = target.resolve() if target is not None else None
    folders = [root, root / "studies"]
    with contextlib.suppress(OSError):
        folders += sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if target is not None:
        folders.append(target.parent)
    candidates: list[Path] = []
    for folder in dict.fromkeys(f.resolve() for f in folders):
        with contextlib.suppress(OSError):
            candidates += sorted(p for p in folder.iterdir() if p.suffix in _SQLITE_SUFFIXES and p.is_file())
    found = []
    for path in list(dict.fromkeys(candidates))[:_MAX_CANDIDATES]:
        if path == target:
            continue
        steps = [n for n in _sqlite_study_names(path) if n.startswith(f"{sweep_name}/")]
        if steps:
            found.append((path, len(steps)))
    return found


def refuse_storage_typo(sweep_name: str, url: str, root: Path) -> None:
    """A run about to create a new SQLite storage while another storage in the project already holds
    the sweep's studies is most likely a typo that would run the whole sweep again: refuse it, naming
    both files (``sweep run --new-storage`` creates the new one anyway)."""
    path = _file_of(url)
    if path is None or not url.startswith("sqlite:///") or path.exists():
        return
    others = other_storages_of(sweep_name, url, root)
    if not others:
        return

    def shown(p: Path) -> str:
        p = p.resolve()
        return str(p.relative_to(root.resolve())) if p.is_relative_to(root.resolve()) else str(p)

    existing = "; ".join(f"{shown(p)} ({n} step{'s' if n != 1 else ''})" for p, n in others)
    raise UserError(f"storage {shown(path)} does not exist, and creating it would run sweep {sweep_name} "
                    f"from the start, but {existing} already holds its studies: fix the storage URL "
                    f"(a typo?), or pass --new-storage to start over in {shown(path)}")


def step_study_names(storage: BaseStorage, sweep_name: str) -> list[str]:
    """Names of the studies of one sweep (``<sweep>/<NN>-<step>``) in the storage, sorted."""
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    return sorted(n for n in names if n.startswith(f"{sweep_name}/"))


__all__ = ["SUPPORTED", "NoStorage", "NotAStorage", "RetryingStorage", "check_openable", "folder_problem",
           "is_transient", "mask_url", "open_storage", "other_storages_of", "refusal", "refuse_storage_typo",
           "retrying", "step_study_names", "url_typo", "wrap_operations"]
