"""Which built datasets a training config trains on: built on demand, its files checked against their
manifest, verified against the content hash its sweep recorded, read once per process (``sweep run``,
``sweep train`` and every executor's worker resolve data here).

:func:`dataset_of` (``sweep run``'s preparation, ``sweep train``) checks every file of the stage
with its SHA-256 (:mod:`maou.data.verify`; untouched files are not read again);
:func:`load_datasets` (every trial) checks sizes only: the files were proven when the run began.
:func:`check_games` refuses, creating nothing, a config with no games to build from and no build.

A node-local copy of the driver's datasets (multi-node Ray: :mod:`maou.sweep.run.executors.shipping`)
is handed to the process with :func:`provide_dataset` and used as it is, never rebuilt.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from maou.data.verify import Check
from maou.errors import UserError
from maou.stages import stage
from maou.trainer.config import DataConfig, TrainConfig

if TYPE_CHECKING:
    from maou.trainer.tensors import StageData


class DatasetChanged(UserError):
    """The data a trial would train on is not the data its sweep recorded."""


#: Dataset folders handed to this process for a data config (a node-local copy of the driver's
#: datasets, the multi-node executor): used as they are, never rebuilt here.
_PROVIDED: dict[DataConfig, str] = {}


def provide_dataset(data: DataConfig, directory: str) -> None:
    """Train every config whose ``data`` is ``data`` on the built datasets in ``directory``."""
    _PROVIDED[data] = directory


@lru_cache(maxsize=4)
def _cached_stage_data(stage: int, dataset_dir: str | None, dataset_hash: str | None,
                       written_ns: int | None = None) -> StageData:
    from maou.trainer.tensors import load_stage_data

    return load_stage_data(stage, dataset_dir)


def dataset_of(config: TrainConfig, progress: bool = False, check: Check = "full") -> tuple[str | None, str | None]:
    """Build the stage's datasets if needed, check their files (``full``: sizes and SHA-256, files
    untouched since their last good hash not read again; ``size``: sizes) and return their folder and content hash
    (``(None, None)`` for a stage whose rows are synthetic)."""
    if stage(config.stage).data_source == "synthetic":
        return None, None
    with _ready(config, progress, check) as (directory, content_hash):
        return directory, content_hash


def check_games(config: TrainConfig) -> None:
    """Refuse, reading only and creating nothing, a games-built stage with nothing to build from and
    no build: a missing input (one line naming it), or inputs without a single record file (one line
    counting what they hold). A build folder that holds a build is left to :func:`dataset_of`, which
    uses a verified build whose games are gone as it is. Call it before :func:`dataset_of`: that one
    creates the build folder and its lock before it reads the games."""
    if stage(config.stage).data_source == "synthetic" or config.data in _PROVIDED:
        return
    from maou.data.build import MANIFEST, build_dir, no_readable_games
    from maou.data.sources import scan_sources

    games = list(config.data.games)
    if not games:
        raise UserError("data.games is empty: no game records to build the datasets from")
    if (build_dir(config.data) / MANIFEST).is_file():  # a build: checked (or rebuilt) where it is read
        return
    files, scan = scan_sources(games)  # a missing input: UserError naming it
    if not files:
        raise no_readable_games(games, scan)


@contextlib.contextmanager
def _ready(config: TrainConfig, progress: bool, check: Check) -> Iterator[tuple[str, str | None]]:
    """The stage's dataset folder and content hash: a node-local copy handed to this process as it
    is, else the build folder, built if needed, its lock held while the block reads it."""
    if config.data in _PROVIDED:
        from maou.trainer.tensors import dataset_content_hash

        directory = _PROVIDED[config.data]
        yield directory, dataset_content_hash(directory)
        return
    from maou.data.build import datasets_ready

    with datasets_ready(config.data, progress=progress, stages=(config.stage,), check=check) as (path, content_hash):
        yield str(path), content_hash


def load_datasets(config: TrainConfig, expected_hash: str | None = None, progress: bool = False) -> StageData:
    """The stage's data, read while holding its build folder's lock (cached per process by content
    hash and build); :class:`DatasetChanged` when ``expected_hash`` is given and the data differs.
    The files' sizes are checked against the manifest; their SHA-256 was when the run began
    (:func:`dataset_of`)."""
    if stage(config.stage).data_source == "synthetic":
        return _cached_stage_data(config.stage, None, None)
    with _ready(config, progress, "size") as (directory, content_hash):
        if expected_hash is not None and content_hash != expected_hash:
            raise DatasetChanged(
                f"the datasets in {directory} changed under this sweep (recorded {expected_hash[:12]}, found "
                f"{(content_hash or 'none')[:12]}): their games changed, or another sweep rebuilt the folder; "
                f"give each corpus its own data.dir (the default does) and run the sweep again")
        return _cached_stage_data(config.stage, str(directory), content_hash, _written_ns(directory))


def _written_ns(directory: str) -> int | None:
    """When the folder's build finished (its top manifest's mtime): a rebuild is read anew."""
    try:
        return (Path(directory) / "manifest.json").stat().st_mtime_ns
    except OSError:
        return None


__all__ = ["DatasetChanged", "check_games", "dataset_of", "load_datasets", "provide_dataset"]
