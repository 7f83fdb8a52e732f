"""Checks before anything trains: what would otherwise fail after hours, found in a second.

:func:`refuse_unrunnable` comes first, before ``sweep plan`` or ``sweep run`` creates anything (a
storage file, a lock study, a build folder, ``runs/``, ``results/``): for the spec and each
prerequisite that is to run, the storage can be opened (or created), the stage has games to build
from (or a build), and, for a run, the runs and results folders can be created and every explicit
``init_from`` checkpoint exists. A refusal is one line.

:func:`preflight` runs with the sweep's lock held (the lock is the storage's write check) and the
datasets built: the runs and results folders are writable and have room, every explicit
``init_from`` checkpoint exists, and no batch is larger than the training split.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from maou.errors import UserError
from maou.strict import lookup
from maou.sweep.spec import WINNER_OF, SweepSpec, step_candidates

#: Free space the runs folder must have before a sweep starts (checkpoints, Ray's files).
MIN_FREE_BYTES = int(float(os.environ.get("MAOU_MIN_FREE_MB", 256)) * 2**20)


def check_writable(folder: Path, what: str) -> None:
    """``folder`` exists (created if needed), takes a file and has ``MIN_FREE_BYTES`` free."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".maou-write-check-"):
            pass
    except OSError as exc:
        raise UserError(f"{what} {folder} is not writable: {exc.strerror or exc}") from None
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise UserError(f"{what} {folder} has only {free / 2**20:.0f} MiB free "
                        f"(a sweep needs at least {MIN_FREE_BYTES / 2**20:.0f} MiB; MAOU_MIN_FREE_MB sets it)")


def _values_of(spec: SweepSpec, key: str) -> list[tuple[str, Any]]:
    """(where, value) of every value ``key`` takes in the spec: the base and each step."""
    found = [("base", lookup(spec.base_config(), key))]
    for i, step in enumerate(spec.steps):
        for overrides in step_candidates(step):
            if key in overrides:
                found.append((f"steps[{i}] ({step.name})", overrides[key]))
        if step.search is not None and key in step.search.params:
            r = step.search.params[key]
            found += [(f"steps[{i}].search", v) for v in (r.choices or (r.low, r.high))]
    return found


def _check_init_from(spec: SweepSpec) -> None:
    for where, path in _values_of(spec, "init_from"):
        if isinstance(path, str) and not WINNER_OF.match(path) and not Path(path).is_file():
            raise UserError(f"{where}: init_from {path} is not a checkpoint file")


def _check_one(spec: SweepSpec, url: str, run: bool, new_storage: bool) -> None:
    from maou.data.resolve import check_games
    from maou.sweep.locate import project_root
    from maou.sweep.storage import check_openable, folder_problem, refuse_storage_typo

    check_games(spec.base_config())
    check_openable(url, write=run)
    if not run:
        return
    if not new_storage:  # a typo in the storage URL would run the whole sweep again elsewhere
        refuse_storage_typo(spec.name, url, project_root(Path(spec.source)) if spec.source else Path.cwd())
    for folder, what in ((spec.runs_path, "runs_dir"), (spec.results_path, "the results folder")):
        why = folder_problem(folder)
        if why is not None:
            raise UserError(f"{what} {folder} is not writable: {why}")
    _check_init_from(spec)


def refuse_unrunnable(spec: SweepSpec, url: str | None = None, prerequisites: list[SweepSpec] | None = None,
                      run: bool = False, new_storage: bool = False) -> None:
    """Refuse, in one line and before anything is created, a spec that ``sweep plan`` (``run``
    False) or ``sweep run`` (``run``) cannot carry out: its storage (``url``, default the spec's)
    cannot be opened or created, its games are missing or hold no record file (and no build is
    there; a synthetic stage needs none), and for a run: the storage is a likely typo (unless
    ``new_storage``), the runs or results folder cannot be created, an ``init_from`` checkpoint is
    missing. Each spec of ``prerequisites`` (default: the chain's specs not done yet) is checked
    the same way, first, on its own storage."""
    if prerequisites is None:
        from maou.sweep.chain import chain_of

        prerequisites = [link.spec for link in chain_of(spec) if not link.done]
    for needed in prerequisites:
        try:
            _check_one(needed, needed.storage_url, run, new_storage)
        except UserError as exc:
            raise UserError(f"prerequisite {needed.name}: {exc}") from None
    _check_one(spec, url or spec.storage_url, run, new_storage)


def preflight(spec: SweepSpec, train_rows: int) -> None:
    """Refuse a sweep that cannot finish, before it trains anything."""
    check_writable(spec.runs_path, "runs_dir")
    check_writable(spec.results_path, "the results folder")
    for where, batch in _values_of(spec, "batch_size"):
        if isinstance(batch, (int, float)) and batch > train_rows:
            raise UserError(f"{where}: batch_size {batch:g} is larger than the training split "
                            f"({train_rows} rows)")
    _check_init_from(spec)


__all__ = ["MIN_FREE_BYTES", "check_writable", "preflight", "refuse_unrunnable"]
