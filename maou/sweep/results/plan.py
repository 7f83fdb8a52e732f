"""``sweep plan``: what a spec will train, before it trains anything.

The first step's trainings are exact (the planner's own answer, against what the storage already
holds); a later step's depend on the winners before it, so they come as bounds: its proposals
once per seed, one of which may turn out to be the carried configuration (copied, not trained),
plus what ``extend`` may add. The cost is estimated from the mean wall time of this sweep's
finished trials when it has some, else from a few optimizer steps of the base configuration
timed on the device the run would use, with random inputs of the stage's shapes, scaled to the
budget (an epochs budget counts the training rows of the built datasets, or estimates them).
"""

from __future__ import annotations

import math
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


#: A sweep this long on this machine gets a one-line warning (it was sized for another).
A_DAY_S = 86_400.0


@dataclass
class SweepPlan:
    spec: SweepSpec
    steps: list[StepPlanSummary]
    seconds_per_training: float | None
    cost_source: str
    #: Training rows of the stage, and where the number comes from.
    rows: tuple[int, str] = (0, "")
    #: Every step decided: nothing is left to run.
    complete: bool = False
    #: Where the cost was measured (``cpu``, ``cuda``), when it was.
    device: str | None = None

    @property
    def seconds(self) -> tuple[float, float] | None:
        """The estimated wall time left, one training at a time (None: not estimated)."""
        if self.seconds_per_training is None:
            return None
        low, high = self.trainings
        return low * self.seconds_per_training, high * self.seconds_per_training

    def racing_share(self, trials_at_once: int = 1) -> tuple[float, float] | None:
        """The share of the exhaustive trainings a raced run trains, at best and at worst (None:
        racing is off or cannot stop anything: one seed). At best every challenger is worse. With at
        least as many trials at once as seeds, its seeds train side by side and all stop at
        ``racing.start_fraction`` of the budget; one at a time, its first seed runs whole (one seed
        measures no noise), its second to ``racing.start_fraction``, the others not at all."""
        racing, seeds = self.spec.racing, len(self.spec.seed_list)
        total = sum(s.trainings[1] for s in self.steps)
        if not racing.enabled or seeds < 2 or total == 0:
            return None
        if trials_at_once >= seeds:
            per_seed = racing.start_fraction
        else:
            per_seed = min(1.0 + racing.start_fraction, seeds) / seeds
        best = 0.0
        for s in self.steps:
            carried = min(seeds, s.trainings[1])
            best += carried + (s.trainings[1] - carried) * per_seed
        return best / total, 1.0

    def too_long_here(self) -> str | None:
        """One line when the sweep would take more than a day on this machine."""
        seconds = self.seconds
        if seconds is None or seconds[0] <= A_DAY_S:
            return None
        return (f"warning: about {seconds[0] / 86_400:.1f} days one training at a time on this machine "
                f"({self.device or 'here'}): this spec is sized for a faster device")

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


def plan_sweep(spec: SweepSpec, storage: Any = None, measure: bool = True, build: bool = True,
               progress: bool = False) -> SweepPlan:
    """The plan of ``spec`` (``storage``: what already ran there counts as done). An epochs budget
    needs the training rows: from the built manifest, building the datasets first (``build``, with
    a progress bar when ``progress``), else estimated from the game records."""
    finished: set = set()
    done: dict[str, int] = {}
    walls: list[float] = []
    complete = False
    if storage is not None:
        finished, done, walls, complete = _from_storage(spec, storage)
    steps = [_first_step(spec, finished)] + [_later_step(spec, i) for i in range(1, len(spec.steps))]
    for index, summary in enumerate(steps):
        summary.done = done.get(spec.study_name(index), 0)
        summary.tries = step_tries(spec.steps[index])
        if index > 0:  # bounds: what already ran of a later step is not run again
            summary.trainings = tuple(max(0, n - summary.done) for n in summary.trainings)  # type: ignore[assignment]
        if complete:
            summary.trainings = (0, 0)
    # an epochs budget needs the training rows; a steps budget does not
    rows = (training_rows(spec, build=build, progress=progress) if spec.base_config().budget.epochs is not None
            else (0, "not needed (the budget is in optimizer steps)"))
    plan = SweepPlan(spec, steps, None, "not measured", rows=rows, complete=complete)
    if walls:
        plan.seconds_per_training, plan.cost_source = sum(walls) / len(walls), f"mean of {len(walls)} finished trials"
    elif measure and not complete:
        plan.seconds_per_training, plan.cost_source, plan.device = measure_training_seconds(spec, rows[0])
    return plan


def _from_storage(spec: SweepSpec, storage: Any) -> tuple[set, dict[str, int], list[float], bool]:
    from maou.sweep.records import read_sweep

    record = read_sweep(spec, storage)
    finished, done, walls = set(), {}, []
    for step in record.steps:
        if not step.started:
            continue
        trials = step.finished_trials
        done[step.study_name] = len(trials)
        walls += [t.wall_time_s for t in trials if t.wall_time_s is not None and not t.reused]
        if step.index == 0:
            finished = {t.pair for t in trials}
    return finished, done, walls, record.done


def training_rows(spec: SweepSpec, build: bool = True, progress: bool = False) -> tuple[int, str]:
    """Training rows of the spec's stage and where the number comes from: the synthetic rows, the
    built manifest (built first when ``build``), else an estimate from the game records."""
    import json
    from pathlib import Path

    from maou.data.build import build_dir, datasets_up_to_date
    from maou.shogi.shapes import STAGE1_ROWS_NUM
    from maou.stages import stage

    if stage(spec.stage).data_source == "synthetic":
        return STAGE1_ROWS_NUM, "the synthetic Stage 1 rows"
    data = spec.base_config().data
    manifest = Path(build_dir(data)) / f"stage{spec.stage}" / "manifest.json"
    if not datasets_up_to_date(data) and build:
        from maou.data.resolve import dataset_of

        dataset_of(spec.base_config(), progress=progress)
    if manifest.is_file() and datasets_up_to_date(data):
        rows = int(json.loads(manifest.read_text()).get("rows", {}).get("train", 0))
        return rows, f"the built datasets ({rows:,} training rows)"
    return estimate_rows(spec)


#: Training rows a record file gives, on average, by its kind (measured on the bundled engine games:
#: about 130 positions a game, 90 % of them for training, a few repeated).
_ROWS_PER_GAME = 110
#: An HCPE row is one position (32-byte hcp plus its columns: about 50 bytes a row on disk).
_HCPE_BYTES_PER_ROW = 50


def estimate_rows(spec: SweepSpec) -> tuple[int, str]:
    """Training rows estimated from the game records without reading them (``sweep plan --no-build``)."""
    from maou.data.sources import source_files

    try:
        files = [f for _, f, _ in source_files(list(spec.base_config().data.games))]
    except Exception:  # noqa: BLE001 - an estimate: a missing folder counts as no games
        files = []
    hcpe = [f for f in files if str(f).endswith(".feather")]
    records = len(files) - len(hcpe)
    share = 1.0 - spec.base_config().data.val_fraction
    rows = int(share * (records * _ROWS_PER_GAME + sum(f.stat().st_size for f in hcpe) / _HCPE_BYTES_PER_ROW))
    return max(rows, 1), (f"estimated, not built: {len(files):,} record files at about {_ROWS_PER_GAME} training "
                          f"rows a game ({rows:,} rows)")
def measure_training_seconds(spec: SweepSpec, rows: int, steps: int = 3) -> tuple[float | None, str, str]:
    """Seconds one training of the base configuration takes here, on the device the run would use:
    a few optimizer steps on random inputs of the stage's shapes (after one warm-up step), scaled to
    the budget's steps. Returns (seconds, how it was measured, device)."""
    import dataclasses

    import torch

    from maou.shogi.shapes import BOARD_SHAPE, PIECE_IDS_NUM, PIECES_IN_HAND_NUM
    from maou.stages import stage
    from maou.trainer.config import Budget
    from maou.trainer.loop import train_stage
    from maou.trainer.split import Split
    from maou.trainer.tensors import StageData

    base = spec.base_config()

    def split(n: int) -> Split:
        targets = {t.name: (torch.rand((n, t.width) if t.width else (n,)) < 0.1).to(getattr(torch, t.dtype))
                   for t in stage(spec.stage).targets}
        return Split(torch.randint(0, PIECE_IDS_NUM, (n, *BOARD_SHAPE), dtype=torch.uint8),
                     torch.randint(0, 3, (n, PIECES_IN_HAND_NUM), dtype=torch.uint8), targets)

    probe = dataclasses.replace(base, budget=Budget(max_steps=1 + steps, eval_every=1 + steps),
                                eval_at_start=False, init_from=None, eval_rows=0)
    stamps: list[float] = []
    result = train_stage(probe, StageData(spec.stage, split(base.batch_size * 2), split(min(64, base.batch_size))),
                         on_step=lambda step, total: stamps.append(time.perf_counter()))
    device = result.device
    # the first step (allocations, kernel choice) is left out: the time between the later ones
    step_seconds = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1) if len(stamps) > 1 else math.nan
    total = base.budget.total_steps(rows, base.batch_size)
    return step_seconds * total, (f"{steps} steps of the base configuration measured here on {device} "
                                  f"({step_seconds * 1e3:.0f} ms a step, {total:,} steps a training)"), device


__all__ = ["SweepPlan", "StepPlanSummary", "measure_training_seconds", "plan_sweep", "step_tries"]
