"""Checks before anything trains: what would otherwise fail after hours, found in a second.

The storage is checked by taking the sweep's lock (a write); here: the runs and results folders
are writable and have room, every explicit ``init_from`` checkpoint exists, and no batch is
larger than the training split.
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


def preflight(spec: SweepSpec, train_rows: int) -> None:
    """Refuse a sweep that cannot finish, before it trains anything."""
    check_writable(spec.runs_path, "runs_dir")
    check_writable(spec.results_path, "the results folder")
    for where, batch in _values_of(spec, "batch_size"):
        if isinstance(batch, (int, float)) and batch > train_rows:
            raise UserError(f"{where}: batch_size {batch:g} is larger than the training split "
                            f"({train_rows} rows)")
    for where, path in _values_of(spec, "init_from"):
        if isinstance(path, str) and not WINNER_OF.match(path) and not Path(path).is_file():
            raise UserError(f"{where}: init_from {path} is not a checkpoint file")


__all__ = ["MIN_FREE_BYTES", "check_writable", "preflight"]
