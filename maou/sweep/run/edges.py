"""Grid edges: a winner at the end of its grid says "try further", not "this is the optimum".

A numeric grid key with at least three values is at an *edge* when the step's winner takes the
grid's smallest or largest value and a value beyond it is valid (``asl_clip: 0`` at the bottom of
a grid is the end of the key's range, not an edge: nothing smaller can be tried). A step with
``extend: N`` grows such a grid past the edge by the grid's own spacing (geometric when the values
are positive with a constant ratio, arithmetic with a constant difference, else the spacing of the
last two values), one value per round and key, for up to ``N`` rounds until the winner is
interior; a value outside the key's valid range (or a batch larger than the training split) ends
the extension.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from maou.strict import ConfigError, lookup, with_overrides
from maou.sweep.spec import Step
from maou.trainer.config import TrainConfig

MIN_VALUES = 3


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def effective_grid(step: Step, extended: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """The step's grid with the values earlier rounds added."""
    return {key: list(values) + [v for v in extended.get(key, []) if v not in values]
            for key, values in step.grid.items()}


def with_extensions(step: Step, extended: dict[str, list[Any]]) -> Step:
    return dataclasses.replace(step, grid=effective_grid(step, extended)) if extended else step


def grid_edges(step: Step, extended: dict[str, list[Any]], winner: TrainConfig) -> list[str]:
    """The grid keys whose winning value is the grid's minimum or maximum, with a valid value
    beyond it."""
    edges = []
    for key, values in effective_grid(step, extended).items():
        if len(set(values)) < MIN_VALUES or not _numeric(values):
            continue
        value = lookup(winner, key)
        if value in (min(values), max(values)) and _beyond(values, winner, key) is not None:
            edges.append(key)
    return edges


def _beyond(values: list[Any], winner: TrainConfig, key: str) -> Any:
    """The grid's next value past the side the winner sits on, if the key's range allows it."""
    current = lookup(winner, key)
    value = next_value(values, upward=current == max(values), integer=all(isinstance(v, int) for v in values))
    if value is None:
        return None
    try:
        with_overrides(winner, {key: value}, f"extend.{key}")
    except ConfigError:
        return None
    return value


def next_value(values: list[float], upward: bool, integer: bool) -> float | None:
    """One step past the end of ``values`` by their own spacing (None when there is no spacing)."""
    ordered = sorted(set(values))
    if len(ordered) < 2:
        return None
    ratios = [b / a for a, b in zip(ordered, ordered[1:])] if ordered[0] > 0 else []
    diffs = [b - a for a, b in zip(ordered, ordered[1:])]
    if ratios and all(math.isclose(r, ratios[0], rel_tol=1e-6) for r in ratios):
        value = ordered[-1] * ratios[0] if upward else ordered[0] / ratios[0]
    elif all(math.isclose(d, diffs[0], rel_tol=1e-6, abs_tol=1e-12) for d in diffs):
        value = ordered[-1] + diffs[0] if upward else ordered[0] - diffs[0]
    else:
        value = ordered[-1] + diffs[-1] if upward else ordered[0] - diffs[0]
    if integer:
        value = round(value)
    return None if value in ordered else value


def extension(step: Step, extended: dict[str, list[Any]], winner: TrainConfig, edges: list[str],
              train_rows: int) -> dict[str, Any]:
    """The next value of each edge key, past the side the winner sits on; keys whose next value
    would be invalid are left out."""
    grid = effective_grid(step, extended)
    added: dict[str, Any] = {}
    for key in edges:
        value = _beyond(grid[key], winner, key)
        if value is None or (key == "batch_size" and value > train_rows):
            continue
        added[key] = value
    return added


__all__ = ["effective_grid", "extension", "grid_edges", "next_value", "with_extensions"]
