"""Stopping a running trial: one small interface, its variants composed by wrapping.

A :class:`Stopper` sees every evaluation of a running trial (:meth:`Stopper.observe`: the
:class:`~maou.trainer.result.Stop` that ends it there, or None) and hears how each trial ended
(:meth:`Stopper.finished`). Three kinds implement it:

* the collapse rules (:class:`~maou.sweep.run.pruning.CollapseMonitor`), checked where the trial
  trains (in process, in a worker), so a collapse stops a run the same way everywhere;
* Optuna's pruner (:class:`~maou.sweep.run.pruning.OptunaPruning`) and racing
  (:class:`~maou.sweep.run.racing.Racer`), on the driver, which knows every trial of the step.

:class:`AnyOf` wraps several into one (the first stop wins; every one hears how trials end).
The driver's stopper of a step is composed in one place (:func:`maou.sweep.run.step.open_step`);
the recorder asks it and writes what it answers, knowing neither kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from maou.sweep.identity import ConfigKey
from maou.trainer.result import History, Stop


class Running(Protocol):
    """What a stopper sees of a running trial."""

    @property
    def key(self) -> ConfigKey | None: ...

    @property
    def seed(self) -> int | None: ...

    @property
    def max_steps(self) -> int: ...

    @property
    def history(self) -> History: ...

    @property
    def optuna_trial(self) -> Any: ...


@dataclass
class Run:
    """A running trial as a worker sees it: its evaluations so far and its budget (no Optuna trial,
    no knowledge of its configuration's other seeds)."""

    max_steps: int
    history: History = field(default_factory=list)
    key: ConfigKey | None = None
    seed: int | None = None
    optuna_trial: Any = None


class Stopper:
    """Never stops; a variant overrides what it needs."""

    def observe(self, trial: Running, step: int, metrics: dict[str, float]) -> Stop | None:
        """The evaluation ``metrics`` at optimizer ``step`` (already in ``trial.history``): the stop
        that ends the trial here, or None."""
        return None

    def finished(self, trial: Running, stop: Stop | None) -> None:
        """``trial`` ended: PRUNED by ``stop`` (whichever stopper gave it), or not stopped (None)."""


class AnyOf(Stopper):
    """Several stoppers as one: asked in order, the first stop wins (the others are not asked at
    that evaluation); each hears how every trial ended."""

    def __init__(self, *stoppers: Stopper | None) -> None:
        self.stoppers: tuple[Stopper, ...] = tuple(s for s in stoppers if s is not None)

    def observe(self, trial: Running, step: int, metrics: dict[str, float]) -> Stop | None:
        for stopper in self.stoppers:
            stop = stopper.observe(trial, step, metrics)
            if stop is not None:
                return stop
        return None

    def finished(self, trial: Running, stop: Stop | None) -> None:
        for stopper in self.stoppers:
            stopper.finished(trial, stop)

    def __repr__(self) -> str:
        return f"AnyOf{self.stoppers!r}"


__all__ = ["AnyOf", "Run", "Running", "Stopper"]
