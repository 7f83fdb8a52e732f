"""A sweep's step studies in a storage, and its studies in other SQLite files of the project (a new
storage beside them is refused as a likely typo: :func:`refuse_storage_typo`)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import optuna
from optuna.storages import BaseStorage

from maou.errors import UserError
from maou.sweep.storage.urls import file_of

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
    target = file_of(url)
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
    path = file_of(url)
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


__all__ = ["other_storages_of", "refuse_storage_typo", "step_study_names"]
