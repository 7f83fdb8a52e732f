"""The step planner: step + carried configuration + seeds -> the trainings to run. Pure: no Optuna.

Every step trains each of its configurations once per seed: the carried configuration (the
previous step's winner) first, then the step's proposals applied on top of it (a grid's cartesian
product, an explicit ``configs`` list, or, for a ``search`` step, the configurations its sampler
proposed so far plus ``samples_to_draw`` more). A (configuration, seed) already finished in this
step is skipped; one finished in an earlier step is copied instead of trained again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from maou.strict import lookup, with_overrides
from maou.sweep.identity import ConfigKey
from maou.sweep.spec import Step, step_candidates
from maou.trainer.config import TrainConfig

#: Whatever an earlier step keeps of a finished training (a frozen trial, to the recorder).
Source = TypeVar("Source")
Pair = tuple[ConfigKey, int]


@dataclass(frozen=True)
class Training:
    """One training of a step: a configuration (its key and full config) with one seed."""

    key: ConfigKey
    config: TrainConfig

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def pair(self) -> Pair:
        return self.key, self.seed


@dataclass
class StepPlan(Generic[Source]):
    carried_key: ConfigKey
    carried: TrainConfig
    #: Every configuration of the step known now, carried first (a search step adds more as it runs).
    candidates: dict[ConfigKey, TrainConfig]
    #: The training keys the step varies (its Optuna parameters).
    searched: tuple[str, ...]
    to_train: list[Training] = field(default_factory=list)
    to_copy: list[tuple[Training, Source]] = field(default_factory=list)
    #: A search step's configurations still to be proposed by its sampler.
    samples_to_draw: int = 0

    def params(self, config: TrainConfig) -> dict[str, Any]:
        """The searched keys' values of ``config``: its Optuna parameters."""
        return {key: lookup(config, key) for key in self.searched}


def searched_keys(step: Step) -> tuple[str, ...]:
    if step.search is not None:
        return tuple(step.search.params)
    keys: list[str] = []
    for overrides in step_candidates(step):
        keys += [k for k in overrides if k not in keys]
    return tuple(keys)


def configuration(carried: TrainConfig, overrides: dict[str, Any], path: str) -> TrainConfig:
    """The carried configuration with a step's ``overrides`` applied (validated, ``path`` in errors)."""
    return with_overrides(carried, overrides, path)


def plan_step(step: Step, step_index: int, base: TrainConfig, carried_overrides: dict[str, Any],
              seeds: tuple[int, ...], finished: set[Pair], sampled: Mapping[ConfigKey, TrainConfig],
              reusable: Mapping[Pair, Source]) -> StepPlan[Source]:
    """The trainings of step ``step_index``.

    ``finished``: (configuration, seed) pairs this step's study already holds; ``sampled``: the
    configurations a search step's sampler proposed in earlier runs of this step; ``reusable``:
    pairs finished in earlier steps, with what to copy them from.
    """
    carried = configuration(base, carried_overrides, "carried")
    carried_key = ConfigKey.between(carried, base)
    candidates = {carried_key: carried}
    path = f"steps[{step_index}]"
    for overrides in step_candidates(step):
        config = configuration(carried, overrides, path)
        candidates.setdefault(ConfigKey.between(config, base), config)
    for key, config in sampled.items():
        candidates.setdefault(key, config)
    plan: StepPlan[Source] = StepPlan(carried_key, carried, candidates, searched_keys(step))
    for key, config in candidates.items():
        for seed in seeds:
            if (key, seed) in finished:
                continue
            training = Training(key, configuration(config, {"seed": seed}, "trial"))
            if (key, seed) in reusable:
                plan.to_copy.append((training, reusable[(key, seed)]))
            else:
                plan.to_train.append(training)
    if step.search is not None:
        drawn = len([k for k in candidates if k != carried_key])
        plan.samples_to_draw = max(0, step.search.trials - drawn)
    return plan


__all__ = ["Pair", "StepPlan", "Training", "configuration", "plan_step", "searched_keys"]
