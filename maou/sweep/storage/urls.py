"""Storage URLs: credentials masked wherever a URL is shown (:func:`mask_url`), the local file
behind a URL, and a URL that cannot work as written refused with the likely fix (:func:`url_typo`)."""

from __future__ import annotations

import re
from pathlib import Path

_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@]*:)(?P<password>[^@/]*)@", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)[^&]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (what consoles, errors and titles show)."""
    url = _PASSWORD.sub(lambda m: f"{m.group('head')}***@", url)
    return _QUERY_PASSWORD.sub(lambda m: f"{m.group('head')}***", url)


def file_of(url: str) -> Path | None:
    """The local file behind a ``sqlite:///`` or ``journal://`` URL (None for other storages)."""
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):].split("?", 1)[0])
    if url.startswith("journal://"):
        return Path(url[len("journal://"):])
    return None


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


def unknown_scheme(url: str, exc: BaseException) -> str | None:
    """The hint for a URL SQLAlchemy cannot open for want of a dialect or its driver."""
    import sqlalchemy.exc

    scheme = url.partition(":")[0]
    if isinstance(exc, sqlalchemy.exc.NoSuchModuleError):
        return f"unknown storage scheme {scheme}:; supported: {SUPPORTED}"
    if isinstance(exc, ImportError):
        return f"no driver installed for {scheme}:; supported: {SUPPORTED}"
    return None


__all__ = ["SUPPORTED", "file_of", "mask_url", "unknown_scheme", "url_typo"]
