"""Fault injection for crash-safety tests: die like ``kill -9`` at a named storage write point.

``MAOU_FAULT=tell:3`` makes the process exit at once (``os._exit``, no cleanup, no flush) the
third time it reaches the write point ``tell``. The points are where the driver writes a trial or
a decision: ``enqueue``, ``ask``, ``tell``, ``copy``, ``decision``. Unset (always, outside the
tests), :func:`point` only counts.
"""

from __future__ import annotations

import os
from collections import Counter

ENV = "MAOU_FAULT"
POINTS = ("enqueue", "ask", "tell", "copy", "decision")
EXIT_CODE = 137
_hits: Counter = Counter()


def point(name: str) -> None:
    """A write point: exit here if ``MAOU_FAULT`` names it and this is its numbered hit."""
    _hits[name] += 1
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target == name and _hits[name] == int(count or 1):
        os._exit(EXIT_CODE)


__all__ = ["ENV", "EXIT_CODE", "POINTS", "point"]
