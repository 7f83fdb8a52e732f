"""Memory of running processes, from /proc (Linux): peak RSS and PSS of a process and its descendants.

RSS counts every resident page a process maps, shared file pages (a memory-mapped dataset, the
libraries) in full in every process; PSS divides each shared page among the processes mapping
it, so PSS summed over processes is the memory they occupy together. ``Pss_Anon`` is the
private heap part, ``Pss_File`` the file-backed part.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

MB = 1 << 20


def _kb_fields(path: Path) -> dict[str, int]:
    out = {}
    try:
        for line in path.read_text().splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[name] = int(parts[0]) * 1024
    except (OSError, ValueError):
        pass
    return out


def rollup(pid: int) -> dict[str, int]:
    """``Rss``, ``Pss``, ``Pss_Anon``, ``Pss_File``, ... (bytes) of ``pid``; empty once it has ended."""
    return _kb_fields(Path(f"/proc/{pid}/smaps_rollup"))


def peak_rss(pid: int) -> int:
    """``VmHWM``: the process's peak resident set so far (bytes)."""
    return _kb_fields(Path(f"/proc/{pid}/status")).get("VmHWM", 0)


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out.extend(children)
            todo.extend(children)
    return out


def mapped_file_memory(pid: int, suffix: str) -> dict[str, int]:
    """Summed ``Rss`` and ``Pss`` of ``pid``'s mappings of files ending in ``suffix``."""
    totals = {"Rss": 0, "Pss": 0}
    current = False
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return totals
    for line in lines:
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping's header line
            current = len(head) >= 6 and head[-1].endswith(suffix)
        elif current and head and head[0].rstrip(":") in totals:
            totals[head[0].rstrip(":")] += int(head[1]) * 1024
    return totals


@dataclass
class TreeSample:
    """The peak over time of a set of process trees: summed PSS and RSS, and each process's peak RSS."""

    pss: int = 0
    rss: int = 0
    pss_anon: int = 0
    pss_file: int = 0
    #: Of the files mapped with the watched suffix (a dataset): peak summed PSS and RSS.
    data_pss: int = 0
    data_rss: int = 0
    peak_by_pid: dict[int, int] = field(default_factory=dict)


class TreeMonitor:
    """Samples the trees rooted at ``roots`` every ``interval`` seconds in a thread until stopped."""

    def __init__(self, roots: list[int], interval: float = 0.1, mapped_suffix: str | None = None) -> None:
        self.roots, self.interval, self.suffix = roots, interval, mapped_suffix
        self.sample = TreeSample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            time.sleep(self.interval)

    def poll(self) -> None:
        pids = [p for root in self.roots for p in (root, *descendants(root))]
        totals = {"Pss": 0, "Rss": 0, "Pss_Anon": 0, "Pss_File": 0}
        for pid in pids:
            r = rollup(pid)
            for key in totals:
                totals[key] += r.get(key, 0)
            hwm = peak_rss(pid)
            if hwm:
                self.sample.peak_by_pid[pid] = max(self.sample.peak_by_pid.get(pid, 0), hwm)
        if totals["Pss"] > self.sample.pss:
            self.sample.pss, self.sample.rss = totals["Pss"], totals["Rss"]
            self.sample.pss_anon, self.sample.pss_file = totals["Pss_Anon"], totals["Pss_File"]
        if self.suffix:
            data = [mapped_file_memory(pid, self.suffix) for pid in pids]
            pss, rss = sum(d["Pss"] for d in data), sum(d["Rss"] for d in data)
            if pss > self.sample.data_pss:
                self.sample.data_pss, self.sample.data_rss = pss, rss

    def stop(self) -> TreeSample:
        self._stop.set()
        self._thread.join()
        return self.sample


def self_peak_rss() -> int:
    return peak_rss(os.getpid())


__all__ = ["MB", "TreeMonitor", "TreeSample", "descendants", "mapped_file_memory", "peak_rss", "rollup",
           "self_peak_rss"]
