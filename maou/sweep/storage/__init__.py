"""Optuna storages: open by URL (credentials masked wherever a URL is shown), retry transient
errors, and list a sweep's step studies. The modules of this package, one job each: ``urls``
(masking, typos), ``delegating`` (one storage forwarding every operation through a policy),
``retries`` (the retry policy), ``opening`` (open_storage, check_openable), ``studies`` (a sweep's
studies, here and in other files); everything public is importable from here.

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

from maou.sweep.storage.delegating import OPERATIONS, DelegatingStorage, StoragePolicy
from maou.sweep.storage.opening import NoStorage, NotAStorage, check_openable, folder_problem, open_storage
from maou.sweep.storage.retries import (
    DEFAULT_RETRY_SECONDS,
    RETRY_SECONDS_ENV,
    Retrying,
    RetryingStorage,
    is_transient,
    refusal,
    retrying,
)
from maou.sweep.storage.studies import other_storages_of, refuse_storage_typo, step_study_names
from maou.sweep.storage.urls import SUPPORTED, mask_url, url_typo

__all__ = ["DEFAULT_RETRY_SECONDS", "OPERATIONS", "RETRY_SECONDS_ENV", "SUPPORTED", "DelegatingStorage", "NoStorage",
           "NotAStorage", "Retrying", "RetryingStorage", "StoragePolicy", "check_openable", "folder_problem",
           "is_transient", "mask_url", "open_storage", "other_storages_of", "refusal", "refuse_storage_typo",
           "retrying", "step_study_names", "url_typo"]
