"""``sweep plan``: what a spec will train, before it trains anything.

The first step's trainings are exact (the planner's own answer, against what the storage already
holds); a later step's depend on the winners before it, so they come as bounds: its proposals
once per seed, one of which may turn out to be the carried configuration (copied, not trained),
plus what ``extend`` may add. The cost is estimated from the mean wall time of this sweep's
finished trials when it has some, else from a few optimizer steps of the base configuration
measured on this machine with random inputs of the stage's shapes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from maou.sweep.identity import short_keys
from maou.sweep.run.planner import plan_step
from maou.sweep.spec import ParamRange, Step, SweepSpec, step_candidates


@dataclass
class StepPlanSummary:
    name: str
    question: str
    configurations: tuple[int, int]
    trainings: tuple[int, int]
    reused: tuple[int, int]
    done: int = 0
    notes: list[str] = field(default_factory=list)
    #: What the step tries (:func:`step_tries`): ``["loss.gamma_neg 1,2,3,4"]``; empty for a baseline.
    tries: list[str] = field(default_factory=list)


def _value(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _range(r: ParamRange) -> str:
    if r.choices is not None:
        return "|".join(_value(c) for c in r.choices)
    text = f"{_value(r.low)}..{_value(r.high)}"
    return text + "".join(part for part, on in ((" log", r.log), (f" step {_value(r.step)}", r.step is not None),
                                                (" integer", r.integer)) if on)


def step_tries(step: Step, short: bool = False) -> list[str]:
    """The values ``step`` tries, as the spec gives them: one entry per grid key
    (``loss.gamma_neg 1,2,3,4``), per explicit configuration (``model.hidden_dim=512
    model.dropout=0.1``) or per searched parameter (``optim.lr 1e-05..0.01 log``, then
    ``10 tpe samples``); none for a baseline. ``short``: each key's last dotted part where that is
    unambiguous within the step."""
    keys = list(dict.fromkeys([*step.grid, *(k for c in step.configs for k in c),
                               *(step.search.params if step.search is not None else ())]))
    name = dict(zip(keys, short_keys(keys) if short else keys, strict=True))
    if step.grid:
        return [f"{name[k]} {','.join(_value(v) for v in values)}" for k, values in step.grid.items()]
    if step.configs:
        return [" ".join(f"{name[k]}={_value(v)}" for k, v in c.items()) for c in step.configs]
    if step.search is not None:
        return ([f"{name[k]} {_range(r)}" for k, r in step.search.params.items()]
                + [f"{step.search.trials} {step.search.sampler} samples"])
    return []


@dataclass
class SweepPlan:
    spec: SweepSpec
    steps: list[StepPlanSummary]
    seconds_per_training: float | None
    cost_source: str

    @property
    def trainings(self) -> tuple[int, int]:
        return sum(s.trainings[0] for s in self.steps), sum(s.trainings[1] for s in self.steps)


def _first_step(spec: SweepSpec, finished: set) -> StepPlanSummary:
    step = spec.steps[0]
    plan: Any = plan_step(step, 0, spec.base_config(), {}, spec.seed_list, finished, {}, {})
    configs = len(plan.candidates) + plan.samples_to_draw
    trainings = len(plan.to_train) + plan.samples_to_draw * len(spec.seed_list)
    return StepPlanSummary(step.name, step.description, (configs, configs), (trainings, trainings), (0, 0))


def _later_step(spec: SweepSpec, index: int) -> StepPlanSummary:
    step, seeds = spec.steps[index], len(spec.seed_list)
    proposals = step.search.trials if step.search is not None else len(step_candidates(step))
    extra = 0
    if step.extend:
        per_value = max(1, proposals // max(1, len(next(iter(step.grid.values())))))
        extra = step.extend * per_value * len(step.grid)
    low, high = max(0, proposals - 1) * seeds, (proposals + extra) * seeds
    summary = StepPlanSummary(step.name, step.description, (max(1, proposals), proposals + 1 + extra),
                              (low, high), (seeds, 2 * seeds))
    if extra:
        summary.notes.append(f"up to {step.extend} extension rounds past a grid edge")
    return summary


def plan_sweep(spec: SweepSpec, storage: Any = None, measure: bool = True) -> SweepPlan:
    """The plan of ``spec`` (``storage``: what already ran there counts as done)."""
    finished: set = set()
    done: dict[str, int] = {}
    walls: list[float] = []
    if storage is not None:
        finished, done, walls = _from_storage(spec, storage)
    steps = [_first_step(spec, finished)] + [_later_step(spec, i) for i in range(1, len(spec.steps))]
    for index, summary in enumerate(steps):
        summary.done = done.get(spec.study_name(index), 0)
        summary.tries = step_tries(spec.steps[index])
    if walls:
        return SweepPlan(spec, steps, sum(walls) / len(walls), f"mean of {len(walls)} finished trials")
    if not measure:
        return SweepPlan(spec, steps, None, "not measured")
    seconds, source = measure_training_seconds(spec)
    return SweepPlan(spec, steps, seconds, source)


def _from_storage(spec: SweepSpec, storage: Any) -> tuple[set, dict[str, int], list[float]]:
    import optuna

    from maou.sweep.identity import ConfigKey
    from maou.sweep.run.recorder import FINISHED
    from maou.sweep.storage import step_study_names

    present = set(step_study_names(storage, spec.name))
    finished, done, walls = set(), {}, []
    for index in range(len(spec.steps)):
        name = spec.study_name(index)
        if name not in present:
            continue
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False, states=FINISHED)
        done[name] = len(trials)
        walls += [t.user_attrs["wall_time_s"] for t in trials
                  if "wall_time_s" in t.user_attrs and not t.user_attrs.get("reused_from")]
        if index == 0:
            finished = {(ConfigKey.parse(t.user_attrs["config_key"]), int(t.user_attrs["seed"])) for t in trials}
    return finished, done, walls


def measure_training_seconds(spec: SweepSpec, steps: int = 6) -> tuple[float | None, str]:
    """Seconds one training of the base configuration takes here: a few optimizer steps on random
    inputs of the stage's shapes, times the budget (an epochs budget needs the built datasets)."""
    import torch

    from maou.shogi.shapes import BOARD_SHAPE, PIECE_IDS_NUM, PIECES_IN_HAND_NUM
    from maou.stages import stage
    from maou.strict import with_overrides
    from maou.trainer.loop import train_stage
    from maou.trainer.tensors import Split, StageData

    base = spec.base_config()
    rows = base.batch_size * 2
    targets = {t.name: (torch.rand((rows, t.width) if t.width else (rows,)) < 0.1).to(getattr(torch, t.dtype))
               for t in stage(spec.stage).targets}
    split = Split(torch.randint(0, PIECE_IDS_NUM, (rows, *BOARD_SHAPE), dtype=torch.uint8),
                  torch.randint(0, 3, (rows, PIECES_IN_HAND_NUM), dtype=torch.uint8), targets)
    probe = with_overrides(base, {"budget.max_steps": steps, "budget.epochs": None, "budget.eval_every": steps,
                                  "eval_at_start": False, "init_from": None})
    started = time.perf_counter()
    result = train_stage(probe, StageData(spec.stage, split, split))
    step_seconds = (time.perf_counter() - started) / steps
    total = _budget_steps(spec)
    if total is None:
        return None, f"{step_seconds * 1e3:.0f} ms a step here; an epochs budget needs the built datasets"
    return step_seconds * total, (f"{steps} steps of the base configuration measured here on {result.device} "
                                  f"({step_seconds * 1e3:.0f} ms a step, {total} steps a training)")


def _budget_steps(spec: SweepSpec) -> int | None:
    budget = spec.base_config().budget
    if budget.max_steps is not None:
        return budget.max_steps
    import json
    from pathlib import Path

    from maou.data.build import build_dir
    from maou.shogi.shapes import STAGE1_ROWS_NUM
    from maou.stages import stage

    if stage(spec.stage).data_source == "synthetic":
        return budget.total_steps(STAGE1_ROWS_NUM, spec.base_config().batch_size)
    manifest = Path(build_dir(spec.base_config().data)) / f"stage{spec.stage}" / "manifest.json"
    if not manifest.is_file():
        return None
    rows = int(json.loads(manifest.read_text()).get("rows", {}).get("train", 0))
    return budget.total_steps(rows, spec.base_config().batch_size)


__all__ = ["SweepPlan", "StepPlanSummary", "measure_training_seconds", "plan_sweep", "step_tries"]
