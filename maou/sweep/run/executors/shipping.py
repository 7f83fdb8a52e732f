"""Datasets for trials on other nodes: a per-node copy, keyed by the dataset's content hash.

No shared file system is needed. When a Ray cluster has more than one node, the driver offers the
dataset a step trains on (:func:`offer_dataset`): a small actor on the driver's node serves the
files of that stage (and the manifests) in chunks through Ray's object store, and every trial
gets a :class:`DatasetOffer` (plain data: the content hash, the files with their sizes and
SHA-256, the driver's node and folder). In the trial (:func:`local_dataset`):

* on the driver's node, the driver's folder is used as it is;
* on another node, ``$MAOU_DATASET_CACHE/<content hash>`` (default ``~/.cache/maou/datasets``):
  fetched once per node (concurrent trials wait on a file lock), every file checked against its
  size and SHA-256 and the manifest against the content hash, then renamed into place. Trials of
  later steps and sweeps on the same data find it there.

The trial then trains on that folder (its job's dataset, :func:`maou.data.resolve.local_copy`), never on the
driver's paths. Ray is imported only when this runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maou.data.sources import file_sha256
from maou.layout import MANIFEST, Dataset, manifest_content_hash, stage_prefix

#: Where a node keeps the datasets it was sent (one folder per content hash).
CACHE_ENV = "MAOU_DATASET_CACHE"
CHUNK_BYTES = 16 << 20
#: Chunks requested ahead of the one being written.
IN_FLIGHT = 4


@dataclass(frozen=True)
class DatasetOffer:
    content_hash: str
    driver_node: str
    driver_dir: str
    #: ``(path relative to the dataset folder, bytes, sha256)`` of every file a trial needs.
    files: tuple[tuple[str, int, str], ...]
    server: str
    namespace: str


class _Server:
    """The Ray actor on the driver's node that reads the offered files (and nothing else)."""

    def __init__(self, directory: str, names: list[str]) -> None:
        self.directory, self.names = Path(directory), set(names)

    def read(self, name: str, offset: int, size: int) -> bytes:
        if name not in self.names:
            raise ValueError(f"{name} is not offered")
        with open(self.directory / name, "rb") as f:
            f.seek(offset)
            return f.read(size)


def offered_files(dataset: Dataset) -> tuple[tuple[str, int, str], ...]:
    """The manifests and the stage's data files of a resolved dataset, with sizes and hashes."""
    assert dataset.folder is not None
    directory, prefix = Path(dataset.folder), stage_prefix(dataset.stage)
    manifests = (MANIFEST, prefix + MANIFEST)
    return tuple((name, (directory / name).stat().st_size, file_sha256(directory / name))
                 for name in manifests) + dataset.files


def offer_dataset(dataset: Dataset) -> tuple[DatasetOffer, Any]:
    """Start the driver-side server of the dataset's stage files; the offer and the actor (kill
    it when the step ends)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    context = ray.get_runtime_context()
    node = context.get_node_id()
    assert dataset.folder is not None and dataset.content_hash is not None
    directory, content_hash = str(Path(dataset.folder).resolve()), dataset.content_hash
    files = offered_files(dataset)
    name = f"maou-dataset-{content_hash[:16]}-{uuid.uuid4().hex[:12]}"  # one per step: names are not reused
    server = ray.remote(num_cpus=0)(_Server).options(
        name=name, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
        directory, [f for f, _, _ in files])
    offer = DatasetOffer(content_hash, node, directory, files, name, context.namespace)
    return offer, server


def offer_for(dataset: Dataset, cluster: bool) -> tuple[DatasetOffer | None, Any]:
    """The offer of the run's resolved ``dataset``, when trials may run on other nodes (a joined
    ``cluster``, or more than one node alive); ``(None, None)`` otherwise or for synthetic data."""
    import ray

    if dataset.folder is None or dataset.content_hash is None:
        return None, None
    if not cluster and sum(1 for node in ray.nodes() if node.get("Alive")) < 2:
        return None, None
    return offer_dataset(dataset)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "maou" / "datasets")


def _complete(folder: Path, offer: DatasetOffer) -> bool:
    """The folder holds every offered file at its size and the manifest names the offer's data."""
    return manifest_content_hash(folder) == offer.content_hash and all(
        (folder / name).is_file() and (folder / name).stat().st_size == size for name, size, _ in offer.files)


def _fetch(offer: DatasetOffer, folder: Path) -> None:
    import ray

    server = ray.get_actor(offer.server, namespace=offer.namespace)
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    for name, size, sha256 in offer.files:
        target = partial / name
        target.parent.mkdir(parents=True, exist_ok=True)
        offsets = list(range(0, size, CHUNK_BYTES))
        pending: list[Any] = [server.read.remote(name, o, CHUNK_BYTES) for o in offsets[:IN_FLIGHT]]
        with open(target, "wb") as out:
            for i in range(len(offsets)):
                out.write(ray.get(pending[i]))
                if i + IN_FLIGHT < len(offsets):
                    pending.append(server.read.remote(name, offsets[i + IN_FLIGHT], CHUNK_BYTES))
                pending[i] = None
        if target.stat().st_size != size or file_sha256(target) != sha256:
            raise RuntimeError(f"dataset file {name} arrived damaged (size or SHA-256 differs from the driver's)")
    if manifest_content_hash(partial) != offer.content_hash:
        raise RuntimeError("the dataset's manifest does not name the offered content hash")
    # merge into a folder that may hold other stages already; the top manifest last
    for name, _, _ in sorted(offer.files, key=lambda file: file[0] == MANIFEST):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial / name, folder / name)
    shutil.rmtree(partial, ignore_errors=True)


def local_dataset(offer: DatasetOffer) -> str:
    """The folder this trial trains on: the driver's on its node, else this node's verified copy."""
    import ray

    if ray.get_runtime_context().get_node_id() == offer.driver_node:
        return offer.driver_dir
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    folder = root / offer.content_hash
    if not _complete(folder, offer):
        with open(root / f"{offer.content_hash}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not _complete(folder, offer):  # another trial of this node may have fetched it meanwhile
                    _fetch(offer, folder)
            finally:
                with contextlib.suppress(OSError):
                    fcntl.flock(lock, fcntl.LOCK_UN)
    return str(folder)


__all__ = ["CACHE_ENV", "DatasetOffer", "cache_root", "local_dataset", "offer_dataset", "offer_for", "offered_files"]
