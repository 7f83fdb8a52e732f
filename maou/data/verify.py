"""A built dataset proves itself before anything trains on it: every file of a stage against its manifest.

The top ``manifest.json`` lists every dataset file with its rows, bytes and SHA-256, and its
``content_hash`` (what a sweep records) is a hash of that list. :func:`verify_dataset` checks, for
the stage folders a config trains on:

* the list against the ``content_hash`` (a hand-edited manifest names other data);
* each file's size against the manifest (``"size"``: a few ``stat`` calls, every time);
* each file's SHA-256 against the manifest (``"full"``), streamed in 1 MiB reads. A file whose
  (size, mtime, ctime) equal those recorded in ``.verified.json`` after its last good hash (or
  written by its build, which hashes what it writes) is not read again: resuming on an untouched
  dataset costs a ``stat`` per file.

A mismatch is a :class:`Mismatch`; :mod:`maou.data.build` rebuilds from the games, or refuses
naming the file and the command that rebuilds it (:func:`rebuild_command`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from maou.data.sources import file_sha256
from maou.layout import MANIFEST, content_hash_of, read_manifest, stage_entries

#: ``size``: sizes only (every load); ``full``: sizes and SHA-256 (once per ``sweep run``/``sweep train``).
Check = Literal["size", "full"]
#: The files hashed good, with the (size, mtime, ctime) they had then; in the build folder.
VERIFIED = ".verified.json"


@dataclass(frozen=True)
class Mismatch:
    """A dataset file that is not what its manifest says: ``what`` is ``missing``, ``size`` or
    ``sha256`` (or ``manifest``: the list does not give the manifest's ``content_hash``)."""

    path: Path
    what: str
    expected: str = ""
    found: str = ""

    def describe(self) -> str:
        if self.what == "missing":
            return f"dataset file {self.path} is missing"
        if self.what == "manifest":
            return (f"{self.path} does not match itself: its file list hashes to {self.found[:12]}, "
                    f"its content_hash is {self.expected[:12]}")
        if self.what == "size":
            return (f"dataset file {self.path} does not match its manifest: {int(self.expected):,} bytes expected, "
                    f"found {int(self.found):,}")
        return (f"dataset file {self.path} does not match its manifest: SHA-256 {self.expected[:12]} expected, "
                f"found {self.found[:12]}")


@dataclass
class Verification:
    """What :func:`verify_dataset` found, and which files it read through (relative names)."""

    mismatch: Mismatch | None = None
    hashed: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mismatch is None


def _stamp(stat: os.stat_result) -> dict[str, int]:
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _verified(out: Path) -> dict[str, dict]:
    files = _read_json(out / VERIFIED).get("files")
    return files if isinstance(files, dict) else {}


def _write_verified(out: Path, files: dict[str, dict]) -> None:
    """``.verified.json``, replaced atomically (a reader never sees half of it)."""
    tmp = out / f"{VERIFIED}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps({"version": 1, "files": files}, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, out / VERIFIED)
    except OSError:  # a read-only folder: verified again next time
        with contextlib.suppress(OSError):
            tmp.unlink()


def record_verified(out: Path, files: Mapping[str, Mapping[str, Any]]) -> None:
    """Record ``files`` (name -> manifest entry) as hashed good as they are now on disk: the build
    calls this with what it wrote (and hashed while writing)."""
    entries = {}
    for name, entry in files.items():
        with contextlib.suppress(OSError):
            entries[name] = {**_stamp((out / name).stat()), "sha256": str(entry["sha256"])}
    _write_verified(out, entries)


def verify_dataset(out: Path, stage_numbers: Sequence[int] | None = None, check: Check = "full",
                 manifest: Mapping[str, Any] | None = None) -> Verification:
    """Check the dataset files of ``stage_numbers`` (default: every file listed) in the build folder
    ``out`` against its top manifest: sizes always, SHA-256 when ``check`` is ``full`` (files
    unchanged since their last good hash are not read). Stops at the first mismatch."""
    out = Path(out)
    manifest = manifest if manifest is not None else read_manifest(out / MANIFEST) or {}
    result = Verification()
    listed = manifest.get("files") or {}
    if content_hash_of(listed) != manifest.get("content_hash"):
        result.mismatch = Mismatch(out / MANIFEST, "manifest", str(manifest.get("content_hash")),
                                   content_hash_of(listed))
        return result
    files = ({name: dict(entry) for name, entry in sorted(listed.items())} if stage_numbers is None else
             {name: entry for number in stage_numbers
              for name, entry in sorted(stage_entries(manifest, number).items())})
    stats: dict[str, os.stat_result] = {}
    for name, entry in files.items():  # every size first: a truncated file costs no hashing
        try:
            stats[name] = (out / name).stat()
        except OSError:
            result.mismatch = Mismatch(out / name, "missing")
            return result
        if stats[name].st_size != int(entry["bytes"]):
            result.mismatch = Mismatch(out / name, "size", str(entry["bytes"]), str(stats[name].st_size))
            return result
        result.checked.append(name)
    if check == "size":
        return result
    cache = _verified(out)
    changed = False
    for name, entry in files.items():
        known = cache.get(name)
        if known == {**_stamp(stats[name]), "sha256": entry["sha256"]}:
            continue
        found = file_sha256(out / name)
        result.hashed.append(name)
        if found != entry["sha256"]:
            cache.pop(name, None)
            _write_verified(out, cache)
            result.mismatch = Mismatch(out / name, "sha256", str(entry["sha256"]), found)
            return result
        stat = (out / name).stat()
        if stat.st_size == stats[name].st_size and stat.st_mtime_ns == stats[name].st_mtime_ns:
            cache[name] = {**_stamp(stat), "sha256": entry["sha256"]}  # unchanged while it was read
            changed = True
    if changed:
        _write_verified(out, cache)
    return result


def rebuild_command(out: Path, games: Sequence[str] | None = None, val_fraction: float | None = None,
                    split_seed: int | None = None) -> str:
    """The ``sweep data build`` line that rebuilds ``out`` as it was built (its manifest's games and
    split where not given)."""
    manifest = read_manifest(Path(out) / MANIFEST) or {}
    games = list(games) if games else list((manifest.get("sources") or {}).get("inputs") or ["GAMES"])
    val_fraction = val_fraction if val_fraction is not None else manifest.get("val_fraction", 0.1)
    split_seed = split_seed if split_seed is not None else manifest.get("split_seed", 0)
    line = f"sweep data build --games {' '.join(shlex.quote(str(g)) for g in games)} --out {shlex.quote(str(out))}"
    if val_fraction != 0.1:
        line += f" --val-fraction {val_fraction}"
    if split_seed != 0:
        line += f" --split-seed {split_seed}"
    return line


__all__ = ["Check", "Mismatch", "VERIFIED", "Verification", "rebuild_command", "record_verified", "verify_dataset"]
