"""Which built datasets a training config trains on: built on demand, its files checked against their
manifest, verified against the content hash its sweep recorded, read once per process (``sweep run``,
``sweep train`` and every executor's worker resolve data here).

:func:`dataset_of` (``sweep run``'s preparation once per run, ``sweep train``) checks every file of
the stage with its SHA-256 (:mod:`maou.data.verify`; untouched files are not read again) and
returns the :class:`~maou.layout.Dataset` every job of the run carries; :func:`load_datasets`
(every trial) opens the job's dataset, checking sizes only: the files were proven when the run
began. A node-local copy of the driver's build (multi-node Ray,
:mod:`maou.sweep.run.executors.shipping`) is a dataset with ``copy`` set: used as it is, never
rebuilt. :func:`check_games` refuses, creating nothing, a config with no games to build from and
no build. A file Arrow cannot read is refused here with the line that rebuilds its folder
(:func:`open_dataset`): the trainer does not know how a folder was built.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from maou.data.verify import Check
from maou.errors import UserError
from maou.layout import MANIFEST, Dataset, read_manifest
from maou.stages import stage
from maou.trainer.config import TrainConfig

if TYPE_CHECKING:
    from maou.trainer.tensors import StageData


class DatasetChanged(UserError):
    """The data a trial would train on is not the data its sweep recorded."""


def rebuild_hint(folder: str | Path) -> str:
    """How to rebuild a dataset folder: its manifest's ``sweep data build`` line, or the generic one."""
    from maou.data.verify import rebuild_command

    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        return f"rebuild it with `{rebuild_command(folder)}`"
    return "rebuild it with `sweep data build --games GAMES --out FOLDER`"


def open_dataset(stage_number: int, folder: str | Path | None) -> StageData:
    """The trainer's open of a stage's files; a file Arrow cannot read names the line that rebuilds it."""
    from maou.trainer.columns import UnreadableDataset
    from maou.trainer.tensors import load_stage_data

    try:
        return load_stage_data(stage_number, folder)
    except UnreadableDataset as exc:
        raise exc.with_hint(rebuild_hint(exc.path.parent.parent)) from exc


@lru_cache(maxsize=4)
def _cached_stage_data(stage: int, dataset_dir: str | None, dataset_hash: str | None,
                       written_ns: int | None = None) -> StageData:
    return open_dataset(stage, dataset_dir)


def dataset_of(config: TrainConfig, progress: bool = False, check: Check = "full") -> Dataset:
    """Build the stage's datasets if needed, check their files (``full``: sizes and SHA-256, files
    untouched since their last good hash not read again; ``size``: sizes) and return the stage's
    :class:`~maou.layout.Dataset` (no folder for a stage whose rows are synthetic)."""
    if stage(config.stage).data_source == "synthetic":
        return Dataset(config.stage)
    from maou.data.build import datasets_ready

    with datasets_ready(config.data, progress=progress, stages=(config.stage,), check=check) as (path, _):
        return Dataset.of_folder(config.stage, path)


def check_games(config: TrainConfig) -> None:
    """Refuse, reading only and creating nothing, a games-built stage with nothing to build from and
    no build: a missing input (one line naming it), or inputs without a single record file (one line
    counting what they hold). A build folder that holds a build is left to :func:`dataset_of`, which
    uses a verified build whose games are gone as it is. Call it before :func:`dataset_of`: that one
    creates the build folder and its lock before it reads the games."""
    if stage(config.stage).data_source == "synthetic":
        return
    from maou.data.build import build_dir, no_readable_games
    from maou.data.sources import scan_sources

    games = list(config.data.games)
    if not games:
        raise UserError("data.games is empty: no game records to build the datasets from")
    if (build_dir(config.data) / MANIFEST).is_file():  # a build: checked (or rebuilt) where it is read
        return
    files, scan = scan_sources(games)  # a missing input: UserError naming it
    if not files:
        raise no_readable_games(games, scan)


def load_datasets(config: TrainConfig, dataset: Dataset | None = None, progress: bool = False) -> StageData:
    """The stage's data (cached per process by content hash and build): ``dataset``, the one its
    run resolved (None: the config's build folder); :class:`DatasetChanged` when the data differs
    from it. The files' sizes are checked against the manifest; their SHA-256 was when the run began
    (:func:`dataset_of`). The build folder's lock is held while the files are opened, and a damaged
    or outdated build is rebuilt first; a node-local ``copy`` is used as it is."""
    if stage(config.stage).data_source == "synthetic":
        return _cached_stage_data(config.stage, None, None)
    with _opened(config, dataset, progress) as (directory, content_hash):
        if dataset is not None and content_hash != (recorded := dataset.content_hash):
            raise DatasetChanged(
                f"the datasets in {directory} changed under this sweep (recorded {(recorded or 'none')[:12]}, "
                f"found {(content_hash or 'none')[:12]}): their games changed, or another sweep rebuilt the folder; "
                f"give each corpus its own data.dir (the default does) and run the sweep again")
        return _cached_stage_data(config.stage, str(directory), content_hash, _written_ns(directory))


@contextlib.contextmanager
def _opened(config: TrainConfig, dataset: Dataset | None, progress: bool) -> Iterator[tuple[str, str | None]]:
    """The folder to open and its content hash: a node-local copy checked by size as it is, else
    the build folder, built if needed, its lock held while the block opens it."""
    if dataset is not None and dataset.copy and dataset.folder is not None:
        from maou.data.verify import verify_dataset

        folder = Path(dataset.folder)
        manifest = read_manifest(folder / MANIFEST) or {}  # read once: checked, then its hash compared
        mismatch = verify_dataset(folder, (config.stage,), "size", manifest).mismatch
        if mismatch is not None:
            raise UserError(f"{mismatch.describe()} (this node's copy of the driver's datasets)")
        yield dataset.folder, manifest.get("content_hash")
        return
    from maou.data.build import datasets_ready

    with datasets_ready(config.data, progress=progress, stages=(config.stage,), check="size") as (path, content_hash):
        yield str(path), content_hash


def local_copy(dataset: Dataset, folder: str) -> Dataset:
    """``dataset`` as the node-local copy in ``folder`` (shipped to a node without the build)."""
    return replace(dataset, folder=folder, copy=True)


def _written_ns(directory: str) -> int | None:
    """When the folder's build finished (its top manifest's mtime): a rebuild is read anew."""
    try:
        return (Path(directory) / MANIFEST).stat().st_mtime_ns
    except OSError:
        return None


__all__ = ["DatasetChanged", "check_games", "dataset_of", "load_datasets", "local_copy", "open_dataset", "rebuild_hint"]
