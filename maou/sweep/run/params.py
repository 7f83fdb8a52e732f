"""How a step's searched training keys become Optuna parameters, stably across spec edits.

Optuna fixes a parameter's distribution kind for the life of a study, and a categorical one's
choices too. So that extending a grid (``gamma_neg: [1, 2]`` -> ``[1, 2, 3]``) or adding seeds
resumes cleanly:

* numbers are ``IntDistribution`` / ``FloatDistribution`` over the values the step knows now
  (ranges may grow between runs; the kind, from the config field's type, never changes);
* booleans and ``Literal`` fields are categorical over every value the type allows;
* other values (a path, ``null``) are no Optuna parameter at all: every trial carries its whole
  configuration in its user attributes (``config``, ``overrides``) anyway;
* the seed is a user attribute, not a parameter (it is no hyperparameter: importance plots and
  samplers must not see it).

A sampled (``search``) step's distributions are the spec's; the carried configuration's trials
record only the values those distributions contain (``choices`` need not hold the base value).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal, Union, get_args, get_origin

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from maou.strict import lookup
from maou.sweep.spec import ParamRange, Step
from maou.trainer.config import TrainConfig


def _without_none(tp: Any) -> Any:
    if get_origin(tp) in (Union, type(int | None)):
        options = [a for a in get_args(tp) if a is not type(None)]
        return options[0] if len(options) == 1 else tp
    return tp


def grid_distribution(key: str, values: Iterable[Any]) -> BaseDistribution | None:
    """The distribution of grid key ``key`` over ``values`` (None: not an Optuna parameter)."""
    tp = _without_none(lookup(TrainConfig, key))
    if tp is bool:
        return CategoricalDistribution([False, True])
    if get_origin(tp) is Literal:
        return CategoricalDistribution(list(get_args(tp)))
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if tp is int and numbers:
        return IntDistribution(int(min(numbers)), int(max(numbers)))
    if tp is float and numbers:
        return FloatDistribution(float(min(numbers)), float(max(numbers)))
    return None


def search_distribution(r: ParamRange) -> BaseDistribution:
    """The sampler's distribution of a ``search`` parameter, as the spec declares it."""
    if r.choices is not None:
        return CategoricalDistribution(list(r.choices))
    assert r.low is not None and r.high is not None
    if r.integer:
        return IntDistribution(int(r.low), int(r.high), log=r.log, step=int(r.step or 1))
    return FloatDistribution(r.low, r.high, log=r.log, step=r.step)


def step_distributions(step: Step, searched: tuple[str, ...], candidates: Iterable[Any]) -> dict[str, BaseDistribution]:
    """The Optuna distribution of each searched key that is a parameter (``candidates``: the
    step's known configurations, whose values a grid's ranges cover)."""
    configs = list(candidates)
    dists: dict[str, BaseDistribution] = {}
    for key in searched:
        if step.search is not None:
            dists[key] = search_distribution(step.search.params[key])
            continue
        values = [lookup(config, key) for config in configs]
        dist = grid_distribution(key, values)
        if dist is not None:
            dists[key] = dist
    return dists


def representable(dist: BaseDistribution, value: Any) -> bool:
    """``value`` lies in ``dist`` (so a trial may record it as that parameter)."""
    if isinstance(dist, CategoricalDistribution):
        return any(type(value) is type(c) and value == c for c in dist.choices)
    if isinstance(dist, (IntDistribution, FloatDistribution)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if isinstance(dist, IntDistribution) and value != int(value):
            return False
        if not dist.low <= value <= dist.high:
            return False
        return dist.step is None or math.isclose((value - dist.low) / dist.step,
                                                 round((value - dist.low) / dist.step), abs_tol=1e-8)
    return False


def trial_params(dists: dict[str, BaseDistribution], values: dict[str, Any]) -> dict[str, Any]:
    """The parameters a trial records: each searched value its distribution contains."""
    return {k: v for k, v in values.items() if k in dists and representable(dists[k], v)}


__all__ = ["grid_distribution", "representable", "search_distribution", "step_distributions", "trial_params"]
