"""Specs form chains: ``init_from: winner-of:<spec>`` makes ``<spec>`` a prerequisite.

A spec's prerequisites are the specs its ``winner-of:`` references name, in its base config and in
any step (a grid or a configuration of ``init_from``), and theirs in turn, in the order they must
run (each after its own prerequisites). A chain that loops is an error naming the loop.

Each prerequisite is ``done`` (its last step decided a winner), ``partly done`` (some steps ran)
or ``not run``. ``sweep plan`` shows them with their cost before the spec itself; ``sweep run``
refuses a spec whose prerequisites are not done before it trains anything or touches its storage
(``--with-deps`` runs them first, in order, each resumable).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maou.errors import UserError
from maou.sweep.spec import WINNER_OF, SweepSpec

DONE, PARTLY_DONE, NOT_RUN = "done", "partly done", "not run"


def winner_of_references(spec: SweepSpec) -> list[str]:
    """The spec files named by ``winner-of:`` anywhere in ``spec`` (base and steps), in order, once."""
    found: dict[str, None] = {}

    def take(value: Any) -> None:
        if isinstance(value, str) and (match := WINNER_OF.match(value)):
            found.setdefault(match.group("spec"))

    for value in _values(spec.base):
        take(value)
    for step in spec.steps:
        for values in (step.grid or {}).values():
            for value in values:
                take(value)
        for config in step.configs or ():
            for value in config.values():
                take(value)
        if step.search is not None:
            for r in step.search.params.values():
                for value in r.choices or ():
                    take(value)
    return list(found)


def _values(tree: Any) -> Iterator[Any]:
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _values(value)
    else:
        yield tree


def prerequisites(spec: SweepSpec) -> list[SweepSpec]:
    """Every spec ``spec`` needs the winner of, each after its own prerequisites."""
    from maou.sweep.locate import load_spec

    ordered: dict[str, SweepSpec] = {}

    def visit(current: SweepSpec, path: tuple[str, ...]) -> None:
        for reference in winner_of_references(current):
            key = str(Path(reference).resolve())
            if key in path:
                loop = " -> ".join(Path(p).stem for p in (*path[path.index(key):], key))
                raise UserError(f"sweep specs form a loop through winner-of: {loop}")
            if key in ordered:
                continue
            needed = load_spec(reference)
            visit(needed, (*path, key))
            ordered[key] = needed

    visit(spec, (str(Path(spec.source).resolve()) if spec.source else spec.name,))
    return list(ordered.values())


@dataclass(frozen=True)
class Link:
    """A prerequisite and how far it got."""

    spec: SweepSpec
    state: str
    #: Steps with a study, of the spec's steps.
    steps_run: int

    @property
    def done(self) -> bool:
        return self.state == DONE


def state_of(spec: SweepSpec) -> Link:
    """How far ``spec``'s sweep got in its storage (read only: nothing is created)."""
    from maou.sweep.records import read_sweep
    from maou.sweep.storage import NoStorage

    try:
        record = read_sweep(spec)
    except NoStorage:  # not run yet
        return Link(spec, NOT_RUN, 0)
    ran = len(record.ran)
    if record.final is not None:
        return Link(spec, DONE, ran)
    return Link(spec, PARTLY_DONE if ran else NOT_RUN, ran)


def chain_of(spec: SweepSpec) -> list[Link]:
    """The prerequisites of ``spec`` in order, each with its state."""
    return [state_of(p) for p in prerequisites(spec)]


def command_name(spec: SweepSpec) -> str:
    """How to name ``spec`` on ``sweep run``: its name when ``sweeps/<name>.yaml`` finds it, else its path."""
    if spec.source:
        path = Path(spec.source)
        if path.parent.name == "sweeps" and path.stem == spec.name:
            return spec.name
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)
    return spec.name


def require_prerequisites(spec: SweepSpec, cost: Any = None) -> None:
    """Refuse (one line, exit 2) when a prerequisite of ``spec`` has no winner yet; ``cost(spec)``
    (optional) words the missing one's estimated cost."""
    for link in chain_of(spec):
        if link.done:
            continue
        estimate = f" ({cost(link.spec)} here)" if cost is not None else ""
        raise UserError(f"sweep {spec.name} starts from the winner of {link.spec.name}, which is {link.state}: "
                        f"run `sweep run {command_name(link.spec)}` first{estimate}, "
                        f"or `sweep run {command_name(spec)} --with-deps`")


__all__ = ["DONE", "Link", "NOT_RUN", "PARTLY_DONE", "chain_of", "command_name", "prerequisites",
           "require_prerequisites", "state_of", "winner_of_references"]
