"""The record files of a build, their fingerprints and content hash, and the seeded split by game."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from maou.data.records import FileScan, scan_record_files

#: Per-file entries listed in the manifest (the content hash always covers every file).
MAX_LISTED_SOURCES = 2000


def scan_sources(games: Sequence[str | Path]) -> tuple[list[tuple[int, Path, Path]], FileScan]:
    """(input index, file, path relative to its input) of every record file, and what the search
    found besides (files of other kinds, broken links, loops, unreadable folders); UserError if an
    input is missing."""
    out = []
    scan = FileScan()
    for i, raw in enumerate(games):
        root = Path(raw)
        found = scan_record_files([root])
        scan.merge(found)
        out += [(i, f, f.relative_to(root) if root.is_dir() else Path(f.name)) for f in found.files]
    return out, scan


def source_files(games: Sequence[str | Path]) -> list[tuple[int, Path, Path]]:
    """(input index, file, path relative to its input) of every record file; UserError if an input is missing."""
    return scan_sources(games)[0]


def sources_fingerprint(files: list[tuple[int, Path, Path]]) -> str:
    """Cheap fingerprint: input index, relative path, size and mtime of every file."""
    digest = hashlib.sha256()
    for i, f, rel in files:
        st = f.stat()
        digest.update(f"{i}\0{rel.as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of ``path``, streamed in 1 MiB reads into one buffer (no copy per read)."""
    digest = hashlib.sha256()
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while read := f.readinto(buffer):
            digest.update(view[:read])
    return digest.hexdigest()


def sources_content_hash(files: list[tuple[int, Path, Path]]) -> tuple[str, list[dict]]:
    digest = hashlib.sha256()
    listed: list[dict] = []
    for i, f, rel in files:
        data_hash = file_sha256(f)
        digest.update(f"{i}\0{rel.as_posix()}\0{data_hash}\n".encode())
        if len(listed) < MAX_LISTED_SOURCES:
            listed.append({"input": i, "path": rel.as_posix(), "bytes": f.stat().st_size, "sha256": data_hash})
    return digest.hexdigest(), listed


def split_games(n: int, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean (n,) mask of validation games (the build's games in order of first appearance, the
    rows of an HCPE game one game): a seeded random ``round(n * val_fraction)``, at least one game
    on each side when ``n >= 2`` (no validation games when ``n == 1``)."""
    is_val = np.zeros(n, dtype=bool)
    if n >= 2:
        n_val = min(max(int(round(n * val_fraction)), 1), n - 1)
        is_val[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return is_val


__all__ = ["file_sha256", "scan_sources", "source_files", "sources_content_hash", "sources_fingerprint", "split_games"]
