"""The record files of a build: found (:func:`scan_record_files`), read in order into games
(:func:`iter_records`), their fingerprints and content hash, and the seeded split by game.

Sources are files or folders (searched recursively for ``RECORD_SUFFIXES``, following links, loops
and broken links counted in a :class:`FileScan`: :func:`scan_record_files`). Each record file is
read by its format's reader: CSA and KIF (``.gz`` of those too) by :mod:`maou.data.kifu`, HCPE
``.feather`` by :mod:`maou.data.hcpe`, every skip counted in one :class:`~maou.data.games.ReadStats`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maou.data.games import GameRecord, ReadStats
from maou.data.hcpe import HcpeReader
from maou.data.kifu import GZIP_SUFFIX, KifuReader
from maou.data.tally import Tally
from maou.errors import UserError

#: File name endings read from folders (and accepted as explicit files), with their format.
RECORD_SUFFIXES = {".csa": "csa", ".kif": "kif", ".kifu": "kif", ".feather": "hcpe"}
#: Per-file entries listed in the manifest (the content hash always covers every file).
MAX_LISTED_SOURCES = 2000


def record_format(path: Path) -> str | None:
    """``csa``, ``kif`` or ``hcpe`` from the file name (``.gz`` allowed for text records), else None."""
    name = path.name.lower()
    gz = name.endswith(GZIP_SUFFIX)
    if gz:
        name = name[: -len(GZIP_SUFFIX)]
    fmt = RECORD_SUFFIXES.get(os.path.splitext(name)[1])
    return None if fmt == "hcpe" and gz else fmt


@dataclass
class FileScan:
    """What a search of the game-record inputs found: the record files (sorted within each input,
    each real file once), every file seen by kind, and every path left out, by reason.

    Kinds: ``csa``, ``kif``, ``hcpe`` (the record files), ``other`` (files inside folders without a
    record suffix, their suffixes in ``other_suffixes``). Left out: ``broken link`` (a link whose
    target is missing), ``link loop`` (a linked folder that is one of its own parents),
    ``folder linked twice`` / ``file listed twice`` (reached again through another path: read once),
    ``unreadable folder`` / ``unreadable file`` (no permission, an I/O error).
    """

    files: list[Path] = field(default_factory=list)
    kinds: Counter = field(default_factory=Counter)
    other_suffixes: Counter = field(default_factory=Counter)
    #: The paths left out, by reason (``left_out`` and ``examples`` are its counts and examples).
    omitted: Tally = field(default_factory=Tally)

    @property
    def left_out(self) -> Counter:
        return self.omitted.counts

    @property
    def examples(self) -> dict[str, list[str]]:
        return self.omitted.examples

    def leave_out(self, reason: str, where: Path | str, detail: str = "") -> None:
        self.omitted.add(reason, where, detail)

    def merge(self, other: FileScan) -> None:
        self.files += other.files
        self.kinds.update(other.kinds)
        self.other_suffixes.update(other.other_suffixes)
        self.omitted.merge(other.omitted)

    def common_suffixes(self, n: int = 3) -> list[str]:
        """The most frequent suffixes of the other files (ties in name order)."""
        ranked = sorted(self.other_suffixes.items(), key=lambda item: (-item[1], item[0]))
        return [suffix or "no suffix" for suffix, _ in ranked[:n]]

    def describe(self) -> str:
        """The files seen, in a few words: ``3 files: csa 2, other 1 (.txt)`` or ``no files found``."""
        seen = sum(self.kinds.values())
        if not seen:
            return "no files found"
        kinds = []
        for kind, n in sorted(self.kinds.items(), key=lambda item: (item[0] == "other", item[0])):
            suffixes = ", ".join(self.common_suffixes())
            kinds.append(f"{kind} {n}" + (f" ({suffixes})" if kind == "other" and suffixes else ""))
        return f"{seen} file{'s' if seen != 1 else ''}: {', '.join(kinds)}"

    def describe_left_out(self) -> str:
        """``broken link 2 (e.g. games/x: -> /gone)``, one reason after another ("" when none)."""
        return ", ".join(f"{reason} {n} (e.g. {self.examples[reason][0]})"
                         for reason, n in self.left_out.most_common())

    def to_dict(self) -> dict:
        return {"kinds": dict(sorted(self.kinds.items())), "other_suffixes": dict(self.other_suffixes.most_common(20)),
                "left_out": self.omitted.counts_by_reason(), "left_out_examples": self.omitted.examples_by_reason()}


def scan_record_files(paths: Iterable[str | Path]) -> FileScan:
    """The record files of ``paths`` and what else was found; :class:`UserError` if an input is missing.

    Explicit files are taken whatever their name (an unsupported one is counted as skipped when
    read); inside folders only files with a record suffix are. Folders are searched recursively,
    following links to folders and files: a linked folder that is one of its own parents (a loop),
    or a folder or file reached a second time, is read once and counted; a broken link or an
    unreadable folder is counted, never fatal.
    """
    scan = FileScan()
    files: set[tuple[int, int]] = set()
    folders: set[tuple[int, int]] = set()

    def take(path: Path, st: os.stat_result, explicit: bool = False) -> None:
        kind = record_format(path)
        scan.kinds[kind or "other"] += 1
        if kind is None:
            scan.other_suffixes[path.suffix.lower()] += 1
            if not explicit:  # inside a folder only record files are read
                return
        if (st.st_dev, st.st_ino) in files:
            scan.leave_out("file listed twice", path, "read once")
            return
        files.add((st.st_dev, st.st_ino))
        if not os.access(path, os.R_OK):
            scan.leave_out("unreadable file", path, "permission denied")
            return
        scan.files.append(path)

    for raw in paths:
        path = Path(raw)
        try:
            st = path.stat()
        except FileNotFoundError:
            link = f" (a broken link to {os.readlink(path)})" if path.is_symlink() else ""
            raise UserError(f"no such game record file or folder: {path}{link}") from None
        except OSError as exc:
            raise UserError(f"cannot read the game record path {path}: {exc.strerror}") from None
        start = len(scan.files)
        if not stat.S_ISDIR(st.st_mode):
            take(path, st, explicit=True)
        else:
            _walk(path, (st.st_dev, st.st_ino), frozenset(), scan, folders, take)
            scan.files[start:] = sorted(scan.files[start:])
    return scan


def _walk(folder: Path, key: tuple[int, int], parents: frozenset[tuple[int, int]], scan: FileScan,
          seen: set[tuple[int, int]], take: Callable[[Path, os.stat_result], None]) -> None:
    """Every file under ``folder`` (its identity ``key``) to ``take``, what cannot be read to
    ``scan``; ``parents``: the identities of the folders above it (a link back to one is a loop)."""
    seen.add(key)
    parents = parents | {key}
    here = os.path.realpath(folder)
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError as exc:
        scan.leave_out("unreadable folder", folder, exc.strerror or type(exc).__name__)
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            st = entry.stat()  # follows links
        except FileNotFoundError:
            if entry.is_symlink():
                scan.leave_out("broken link", path, f"-> {os.readlink(path)}")
            continue
        except OSError as exc:
            reason = "link loop" if exc.errno == errno.ELOOP else "unreadable file"
            scan.leave_out(reason, path, exc.strerror or type(exc).__name__)
            continue
        if stat.S_ISDIR(st.st_mode):
            child, target = (st.st_dev, st.st_ino), os.path.realpath(path)
            if child in parents or here == target or here.startswith(target.rstrip(os.sep) + os.sep):
                scan.leave_out("link loop", path, f"-> {target}, a folder above it")
            elif child in seen:
                scan.leave_out("folder linked twice", path, f"-> {target}, read once")
            else:
                _walk(path, child, parents, scan, seen, take)
        elif stat.S_ISREG(st.st_mode):
            take(path, st)


def find_record_files(paths: Iterable[str | Path]) -> list[Path]:
    """Record files of ``paths`` (folders searched recursively, links followed, sorted);
    :class:`UserError` if one is missing. :func:`scan_record_files` also says what was left out."""
    return scan_record_files(paths).files


def iter_records(paths: Iterable[str | Path], stats: ReadStats | None = None,
                 files: list[Path] | None = None, detect_duplicates: bool = True) -> Iterator[GameRecord]:
    """Valid games of ``paths`` in order (files sorted within folders); skips are counted in ``stats``.

    ``files`` (from :func:`find_record_files`) saves searching the paths again. With
    ``detect_duplicates`` off, a game with the same start and moves as an earlier one is yielded
    too (a parallel build finds those across its shards: :func:`~maou.data.games.game_digest`).
    """
    stats = stats if stats is not None else ReadStats()
    kifu, hcpe = KifuReader(stats, detect_duplicates), HcpeReader(stats)
    for path in files if files is not None else find_record_files(paths):
        stats.files += 1
        source = str(path)
        fmt = record_format(path)
        if fmt is None:
            stats.skip("unsupported file", source, "not .csa, .kif, .kifu (optionally .gz) or .feather")
            continue
        yield from (hcpe.read(source, path) if fmt == "hcpe" else kifu.read(source, path, fmt))


def read_records(paths: Iterable[str | Path]) -> tuple[list[GameRecord], ReadStats]:
    """All valid games of ``paths`` and the read statistics."""
    stats = ReadStats()
    return list(iter_records(paths, stats)), stats
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


__all__ = ["RECORD_SUFFIXES", "FileScan", "file_sha256", "find_record_files", "iter_records", "read_records",
           "record_format", "scan_record_files", "scan_sources", "source_files",
           "sources_content_hash", "sources_fingerprint", "split_games"]
