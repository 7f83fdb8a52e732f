"""Opening a storage by URL (each one a :class:`~maou.sweep.storage.retries.RetryingStorage`),
finding one ``sweep run`` could not open before anything is built (:func:`check_openable`), and
readers that never create, stamp or migrate a storage."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage

from maou.errors import UserError
from maou.sweep.storage.retries import reason, retry, retrying
from maou.sweep.storage.urls import file_of, mask_url, unknown_scheme, url_typo

#: What a database says when another driver created Optuna's tables a moment earlier.
_SCHEMA_RACES = ("already exists", "UNIQUE constraint failed", "duplicate key value")
#: Optuna's own tables; a readable storage has every one.
_OPTUNA_TABLES = frozenset({"studies", "trials", "version_info", "alembic_version"})
_SQLITE_HEADER = b"SQLite format 3\x00"


class NoStorage(UserError):
    """Nothing at the URL yet (no file, or a database without a single table): the sweep has not
    run there. ``sweep plan`` reads that as "nothing done"; the other readers refuse it."""


class NotAStorage(UserError):
    """Something at the URL that readers must not touch: not Optuna's, or another Optuna's schema."""


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
    path = file_of(url)
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
            retry(lambda: _check_schema(url, engine, path), url, "open")
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds; the user needs the URL
            raise UserError(f"cannot open Optuna storage {mask_url(url)}: {reason(exc)}") from None
    for attempt in range(3):
        try:
            inner = retry(lambda: optuna.storages.RDBStorage(url, engine_kwargs=engine,
                                                              skip_table_creation=not create), url, "open")
            break
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds; the user needs the URL
            # two drivers creating Optuna's tables in a new database at once: the loser retries
            if any(race in str(exc) for race in _SCHEMA_RACES) and attempt < 2:
                time.sleep(0.5)
                continue
            hint = unknown_scheme(url, exc)
            if hint is not None:
                raise UserError(f"cannot open Optuna storage {mask_url(url)}: {hint}") from None
            raise UserError(f"cannot open Optuna storage {mask_url(url)}: {reason(exc)}") from None
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
    path = file_of(url)
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
        retry(connect, url, "open")
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds; the user needs the URL
        hint = unknown_scheme(url, exc)
        raise UserError(f"cannot open Optuna storage {mask_url(url)}: {hint or reason(exc)}") from None


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


__all__ = ["NoStorage", "NotAStorage", "check_openable", "folder_problem", "open_storage"]
