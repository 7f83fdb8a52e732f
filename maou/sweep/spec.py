"""Sweep specs: YAML -> frozen, validated dataclasses, before any training starts.

A spec names a stage, a base training config, a budget, an objective, seeds, a storage, an
executor, pruning rules and an ordered list of steps. Every error names the key path and the bad
value (``steps[1].grid.loss.gamma_neg: must be >= 0 (got -1)``).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from maou.stages import METRIC_DIRECTIONS, STAGES, Direction, direction_sign, stage
from maou.strict import ConfigError, dotted_keys, from_dict, require, with_overrides
from maou.sweep.run.pruning import PruningConfig
from maou.trainer.config import Budget, DataConfig, TrainConfig, default_budget

#: Keys a step may search over: every leaf of the training config but the stage and the data.
SEARCHABLE_KEYS = frozenset(k for k in dotted_keys(TrainConfig)
                            if k != "stage" and not k.startswith("data."))
#: A value of ``init_from`` naming another sweep: that sweep's winning checkpoint.
WINNER_OF = re.compile(r"^winner-of:(?P<spec>.+)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class ObjectiveSection:
    """The spec's ``objective`` section (any field left out takes its default)."""

    #: Validation metric to optimise; default: the stage's selection metric.
    metric: str | None = None
    #: Default: the metric's own (``maou.stages.METRIC_DIRECTIONS``).
    direction: Literal["maximize", "minimize"] | None = None
    #: ``final``: the metric at the end of training; ``best``: the best evaluation of the run.
    reduce: Literal["final", "best"] = "final"


@dataclass(frozen=True)
class Objective:
    """A step's objective with its defaults filled in."""

    metric: str
    direction: Direction
    reduce: Literal["final", "best"] = "final"

    @property
    def sign(self) -> float:
        """+1 when the objective is maximized, -1 when minimized."""
        return direction_sign(self.direction)


@dataclass(frozen=True)
class Guard:
    """``metric`` may not get worse than the carried configuration's (mean over seeds) by more
    than ``tolerance``: a challenger that breaks a guard is not adopted."""

    metric: str
    tolerance: float = 0.0
    #: Default: the metric's own (``maou.stages.METRIC_DIRECTIONS``).
    direction: Literal["maximize", "minimize"] | None = None

    def __post_init__(self) -> None:
        require(self, "tolerance", self.tolerance >= 0, "must be >= 0")

    def resolved(self) -> Guard:
        return Guard(self.metric, self.tolerance, self.direction or METRIC_DIRECTIONS.get(self.metric))

    @property
    def sign(self) -> float:
        """+1 when larger is better for the guarded metric (resolved), -1 when smaller is."""
        return direction_sign(self.direction)


@dataclass(frozen=True)
class Selection:
    """When a step's best configuration replaces the carried one (see :mod:`maou.sweep.run.stats`)."""

    #: The evidence a gain needs: a paired one-sided test at the normal tail of this many sigmas
    #: (1: 0.159, 2: 0.023), Holm-corrected for the number of challengers.
    noise_sigmas: float = 1.0
    #: ...and a mean gain larger than this absolute margin (the only protection with one seed).
    min_margin: float = 0.0

    def __post_init__(self) -> None:
        require(self, "noise_sigmas", self.noise_sigmas >= 0, "must be >= 0")
        require(self, "min_margin", self.min_margin >= 0, "must be >= 0")


@dataclass(frozen=True)
class ExecutorSection:
    """The spec's ``executor`` section: which executor runs the trials, and their resources."""

    #: ``auto``: local on a CPU-only or single-GPU machine (trials at once for its cores, or measured
    #: on the GPU), Ray with one trial per GPU (or ``gpus_per_trial`` of one) when several fit; see
    #: :func:`maou.sweep.run.executors.choose`.
    kind: Literal["auto", "local", "ray"] = "auto"
    #: Ray cluster address: null starts a local Ray, ``auto`` or HOST:6379 joins a running cluster.
    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    #: Trials running at once: local (null: one, in this process; ``auto`` picks it), Ray (null: as
    #: many as the cluster's CPUs and GPUs hold).
    max_concurrent: int | None = None
    #: Re-run a trial whose worker process died this many times.
    max_retries: int = 1

    def __post_init__(self) -> None:
        require(self, "cpus_per_trial", self.cpus_per_trial > 0, "must be > 0")
        require(self, "gpus_per_trial", self.gpus_per_trial >= 0, "must be >= 0")
        require(self, "max_concurrent", self.max_concurrent is None or self.max_concurrent >= 1,
                "must be >= 1 or null")
        require(self, "max_retries", self.max_retries >= 0, "must be >= 0")


@dataclass(frozen=True)
class Racing:
    """Racing a step's challengers against the carried configuration (:mod:`maou.sweep.run.racing`):
    from ``start_fraction`` of the budget on, at every evaluation, a challenger whose paired
    difference to the carried configuration (over the seeds that reached that point) is worse at
    ``sigmas`` stops (PRUNED, ``racing``), and its seeds not started are not run. ``max_seeds``
    above ``seeds``: challengers still undecided get one more seed a round, up to it."""

    enabled: bool = True
    start_fraction: float = 1 / 3
    sigmas: float = 1.0
    #: Seeds a challenger may get in all (adaptive seeds); None: ``seeds``, no seed is added.
    max_seeds: int | None = None

    def __post_init__(self) -> None:
        require(self, "start_fraction", 0.0 < self.start_fraction <= 1.0, "must be in (0, 1]")
        require(self, "sigmas", self.sigmas > 0, "must be > 0")
        require(self, "max_seeds", self.max_seeds is None or self.max_seeds >= 1, "must be >= 1 or null")


@dataclass(frozen=True)
class ParamRange:
    """A searched parameter of a sampled step: a numeric range or a list of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if self.choices is not None:
            require(self, "choices", len(self.choices) > 0, "must not be empty")
            require(self, "choices", self.low is None and self.high is None, "give choices or low/high, not both")
        else:
            require(self, "low", self.low is not None and self.high is not None, "set low and high (or choices)")
            low, high = float(self.low or 0.0), float(self.high or 0.0)
            require(self, "high", low < high, f"must be > low ({self.low})")
            require(self, "low", not self.log or low > 0, "must be > 0 when log is true")


@dataclass(frozen=True)
class Search:
    sampler: Literal["tpe", "random", "qmc"] = "tpe"
    trials: int = 10
    params: dict[str, ParamRange] = field(default_factory=dict)
    sampler_seed: int = 0

    def __post_init__(self) -> None:
        require(self, "trials", self.trials >= 1, "must be >= 1")
        require(self, "params", len(self.params) > 0, "must name at least one parameter")


@dataclass(frozen=True)
class Step:
    """One scientific question. ``grid`` is a cartesian product over dotted keys; ``configs`` an
    explicit list of override sets; ``search`` a sampled range. None of them: the baseline (the
    carried configuration alone). The carried configuration always competes."""

    name: str
    grid: dict[str, list[Any]] = field(default_factory=dict)
    configs: list[dict[str, Any]] = field(default_factory=list)
    search: Search | None = None
    description: str = ""
    #: This step's objective instead of the sweep's.
    objective: ObjectiveSection | None = None
    #: Metrics a winner may not worsen (default: the sweep's ``guards``, else the stage's).
    guards: tuple[Guard, ...] | None = None
    #: Rounds a grid may grow past an edge its winner sits on (by the grid's own spacing).
    extend: int = 0

    def __post_init__(self) -> None:
        require(self, "name", bool(_NAME.match(self.name)), "letters, digits, '.', '_' and '-' only")
        modes = sum([bool(self.grid), bool(self.configs), self.search is not None])
        require(self, "grid", modes <= 1, "give one of grid, configs or search per step")
        require(self, "extend", 0 <= self.extend <= 10, "must be in [0, 10]")
        require(self, "extend", not self.extend or bool(self.grid), "extends a grid: give the step a grid")


@dataclass(frozen=True)
class SweepSpec:
    name: str
    stage: int
    steps: tuple[Step, ...]
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    #: The training config every trial starts from (all TrainConfig keys but stage and data).
    base: dict[str, Any] = field(default_factory=dict)
    budget: Budget = field(default_factory=default_budget)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    #: Metrics a step's winner may not worsen (default: the stage's, see ``maou.stages``).
    guards: tuple[Guard, ...] | None = None
    #: Seeds every configuration runs with: a list, or a count (seeds 0..n-1).
    seeds: tuple[int, ...] | int = (0,)
    storage: str | None = None
    executor: ExecutorSection = field(default_factory=ExecutorSection)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    racing: Racing = field(default_factory=Racing)
    selection: Selection = field(default_factory=Selection)
    #: Where trial checkpoints go (default runs/<name>).
    runs_dir: str | None = None
    #: Where ``sweep export`` and ``sweep report`` write (default results/<name>).
    results_dir: str | None = None
    #: The file the spec was read from (set by ``load_spec``; no key of the YAML).
    source: str | None = field(default=None, init=False, compare=False)

    def __post_init__(self) -> None:
        require(self, "name", bool(_NAME.match(self.name)), "letters, digits, '.', '_' and '-' only")
        require(self, "stage", self.stage in STAGES, f"must be one of {', '.join(map(str, STAGES))}")
        require(self, "steps", len(self.steps) > 0, "must list at least one step")
        names = [s.name for s in self.steps]
        require(self, "steps", len(set(names)) == len(names), f"step names must be unique, got {names}")
        require(self, "seeds", len(self.seed_list) > 0, "must give at least one seed")
        require(self, "seeds", len(set(self.seed_list)) == len(self.seed_list), "seeds must be unique")

    @property
    def seed_list(self) -> tuple[int, ...]:
        return tuple(range(self.seeds)) if isinstance(self.seeds, int) else tuple(self.seeds)

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///studies/{self.name}.db"

    @property
    def runs_path(self) -> Path:
        return Path(self.runs_dir or f"runs/{self.name}")

    @property
    def results_path(self) -> Path:
        return Path(self.results_dir or f"results/{self.name}")

    def study_name(self, index: int) -> str:
        return f"{self.name}/{index + 1:02d}-{self.steps[index].name}"

    def step_objective(self, index: int) -> Objective:
        """Step ``index``'s objective: its own, else the sweep's, else the stage's default; a
        direction left out is the metric's own."""
        info = stage(self.stage)
        chosen = self.steps[index].objective or self.objective
        metric = chosen.metric or self.objective.metric or info.selection_metric
        if chosen.direction is not None:
            direction: Direction = chosen.direction
        elif metric == info.selection_metric:
            direction = info.selection_direction
        else:
            direction = METRIC_DIRECTIONS[metric]  # validated: the metric has one
        return Objective(metric, direction, chosen.reduce)

    def step_guards(self, index: int) -> tuple[Guard, ...]:
        """Step ``index``'s guards (directions resolved): its own, else the sweep's, else the stage's."""
        own = self.steps[index].guards
        chosen = own if own is not None else self.guards
        if chosen is None:
            chosen = tuple(Guard(g.metric, g.tolerance) for g in stage(self.stage).default_guards)
        return tuple(g.resolved() for g in chosen)

    def base_config(self) -> TrainConfig:
        """The base training config with the spec's stage, data and budget applied."""
        for key in ("stage", "data", "budget"):
            if key in self.base:
                raise ConfigError(f"set this in the top-level {key} key, not in base", f"base.{key}")
        data = {**self.base, "stage": self.stage, "data": self.data, "budget": self.budget}
        return from_dict(TrainConfig, data, "base")


def step_candidates(step: Step) -> list[dict[str, Any]]:
    """The override sets a grid or configs step proposes (the carried set is added by the protocol)."""
    if step.configs:
        return [dict(c) for c in step.configs]
    if step.grid:
        keys = list(step.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(step.grid[k] for k in keys))]
    return []


def _validate_overrides(base: TrainConfig, overrides: dict[str, Any], path: str) -> None:
    for key, value in overrides.items():
        if key not in SEARCHABLE_KEYS:
            raise ConfigError("not a searchable training key (e.g. loss.gamma_neg, optim.lr)", f"{path}.{key}")
        if key == "init_from" and isinstance(value, str) and WINNER_OF.match(value):
            continue
        with_overrides(base, {key: value}, path=path)


def validate(spec: SweepSpec) -> None:
    """Check every step's keys and values against the training config, without training."""
    base = spec.base_config()
    for i, step in enumerate(spec.steps):
        path = f"steps[{i}]"
        for key, values in step.grid.items():
            if not values:
                raise ConfigError("empty grid: give at least one value", f"{path}.grid.{key}")
            for value in values:
                _validate_overrides(base, {key: value}, f"{path}.grid")
        for j, overrides in enumerate(step.configs):
            _validate_overrides(base, overrides, f"{path}.configs[{j}]")
        if step.search is not None:
            for key in step.search.params:
                if key not in SEARCHABLE_KEYS:
                    raise ConfigError("not a searchable training key", f"{path}.search.params.{key}")
    _validate_objectives(spec)


def _validate_objectives(spec: SweepSpec) -> None:
    """Objectives and guards name metrics the stage reports, and know which way is better."""
    reported = stage(spec.stage).reported_metrics

    def check(metric: str | None, direction: str | None, path: str) -> None:
        if metric is None:
            return
        if metric not in reported:
            raise ConfigError(f"stage {spec.stage} reports {', '.join(reported)}; got {metric!r}", path)
        if direction is None and metric not in METRIC_DIRECTIONS:
            raise ConfigError(f"{metric} has no better direction of its own: give a direction", path)

    check(spec.objective.metric, spec.objective.direction, "objective.metric")
    for j, guard in enumerate(spec.guards or ()):
        check(guard.metric, guard.direction, f"guards[{j}].metric")
    for i, step in enumerate(spec.steps):
        if step.objective is not None:
            check(step.objective.metric, step.objective.direction, f"steps[{i}].objective.metric")
        for j, guard in enumerate(step.guards or ()):
            check(guard.metric, guard.direction, f"steps[{i}].guards[{j}].metric")
