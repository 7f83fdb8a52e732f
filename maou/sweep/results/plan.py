"""``sweep plan``: what a spec will train, before it trains anything, and how long it will take here.

The first step's trainings are exact (the planner's own answer, against what the storage already
holds); a later step's depend on the winners before it, so they come as bounds: its proposals
once per seed, one of which may turn out to be the carried configuration (copied, not trained),
plus what ``extend`` may add.

The cost is the wall time ``sweep run`` will take here: from the mean wall time of this sweep's
finished trials when it has some, else measured (:mod:`maou.sweep.run.measure`, a few seconds):
one training of the base configuration in its parts (its optimizer steps, its evaluations on the
validation rows, its set-up and checkpoint, the driver's storage work) and what a run pays once
(worker processes started, datasets opened, warm-ups). Trainings run as many at once as the
executor's choice here (:func:`maou.sweep.run.executors.choose`), each slower by
:func:`~maou.sweep.run.cost.contention` for the cores they share with each other, with other
work and with the driver recording them (its measured share of a core); a step's trainings take
``ceil(n / at_once)`` rounds (a step waits for all of them before deciding). An epochs budget
counts the training rows of the built datasets (built first), or estimates them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from maou.sweep.results.tries import step_tries
from maou.sweep.run.planner import plan_step
from maou.sweep.spec import SweepSpec, step_candidates

if TYPE_CHECKING:
    from maou.sweep.run.cost import TrainingCost


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


#: A sweep this long on this machine gets a one-line warning (it was sized for another).
A_DAY_S = 86_400.0


@dataclass
class SweepPlan:
    spec: SweepSpec
    steps: list[StepPlanSummary]
    #: One training's wall time as it runs here, ``at_once`` at a time (None: not estimated).
    seconds_per_training: float | None
    cost_source: str
    #: Training rows of the stage, and where the number comes from.
    rows: tuple[int, str] = (0, "")
    #: Every step decided: nothing is left to run.
    complete: bool = False
    #: Where the cost was measured (``cpu``, ``cuda``), when it was.
    device: str | None = None
    #: Trainings at once (the executor's choice here; 1 where it measures that on a GPU or leaves it to Ray).
    at_once: int = 1
    #: Seconds a run pays once (worker processes, datasets opened, warm-ups, the sweep's storage work).
    startup_s: float = 0.0
    #: Seconds of the driver's storage work a step (its study, plan, decision and notes).
    step_overhead_s: float = 0.0
    #: Seconds a finished training takes to copy into a later step.
    reused_s: float = 0.0
    #: How many times slower each training runs ``at_once`` at a time than alone.
    slowdown: float = 1.0
    #: Threads busy beside the trainings: other work's, runnable while the estimate was measured, and
    #: the driver's share of a core where trials run in workers (the load ``slowdown`` comes from).
    load: float | None = None
    #: The measurement the estimate comes from (None: not measured).
    cost: TrainingCost | None = None
    _built: list[dict[str, int] | None] = field(default_factory=list, repr=False)  # built(), once asked

    def built(self, again: bool = False) -> dict[str, int] | None:
        """The stage's built rows (:func:`built_rows`: None when not built or out of date), asked once
        a plan (``again``: after a build) and passed on: its check of the sources is not made twice."""
        if again or not self._built:
            self._built[:] = [built_rows(self.spec)]
        return self._built[0]

    def step_seconds(self, summary: StepPlanSummary) -> tuple[float, float] | None:
        """The wall time of a step's trainings left, at fewest and most (None: not estimated):
        ``ceil(trainings / at_once)`` rounds of a training, its reused ones copied, its storage work."""
        per = self.seconds_per_training
        if per is None:
            return None
        if self.complete:
            return 0.0, 0.0
        k = max(1, self.at_once)
        low, high = (self.step_overhead_s + reused * self.reused_s + math.ceil(n / k) * per
                     for n, reused in zip(summary.trainings, summary.reused, strict=True))
        return low, high

    @property
    def seconds(self) -> tuple[float, float] | None:
        """The estimated wall time left (None: not estimated): what a run pays once, then every
        step's rounds of trainings."""
        if self.seconds_per_training is None:
            return None
        if self.complete:
            return 0.0, 0.0
        steps = [self.step_seconds(s) or (0.0, 0.0) for s in self.steps]
        return (self.startup_s + sum(low for low, _ in steps), self.startup_s + sum(high for _, high in steps))

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
        return (f"warning: about {seconds[0] / 86_400:.1f} days on this machine ({self.device or 'here'}, "
                f"{self.at_once} at once): this spec is sized for a faster device")

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
               progress: bool = False, url: str | None = None, say: Callable[[str], None] | None = None,
               budget: dict[str, Any] | None = None) -> SweepPlan:
    """The plan of ``spec`` (``storage``: what already ran there counts as done; ``url``: its URL,
    default the spec's, beside which a storage operation is timed). An epochs budget needs the
    training rows: from the built manifest, building the datasets first (``build``, with a progress
    bar when ``progress``), else estimated from the game records. ``measure``: with no finished
    trials to go by, a training is measured here (:func:`estimate_here`, ``budget`` its time
    budget); ``say`` hears what is done before it takes a while."""
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
    plan = SweepPlan(spec, steps, None, "not measured", complete=complete)
    # an epochs budget needs the training rows; a steps budget does not
    if build and say is not None and needs_build(plan):
        say(f"building the datasets of {spec.name} first: its epochs budget needs their training rows "
            f"(--no-build estimates them from the game records)")
    plan.rows = (training_rows(plan, build=build, progress=progress) if spec.base_config().budget.epochs is not None
                 else (0, "not needed (the budget is in optimizer steps)"))
    if walls:
        from maou.sweep.run.executors import choose

        plan.seconds_per_training = sum(walls) / len(walls)
        plan.at_once = choose(spec.executor, spec.base_config().threads).at_once
        plan.cost_source = f"mean wall time of {len(walls)} finished trials, {plan.at_once} at once"
    elif measure and not complete:
        if say is not None:
            say(f"measuring a training of {spec.name}'s base configuration here (a few seconds; --no-measure skips it)")
        try:
            estimate_here(plan, url or spec.storage_url, **(budget or {}))
        except Exception as exc:  # noqa: BLE001 - only an estimate: the plan stands without it
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            plan.seconds_per_training, plan.cost, plan.cost_source = None, None, f"not measured: {reason}"
    return plan


def needs_build(plan: SweepPlan) -> bool:
    """``sweep plan`` builds the datasets first: an epochs budget on a games-built stage whose
    datasets are not built or out of date."""
    from maou.stages import stage

    spec = plan.spec
    return (spec.base_config().budget.epochs is not None and stage(spec.stage).data_source != "synthetic"
            and plan.built() is None)


def validation_rows(plan: SweepPlan, train_rows: int) -> int:
    """Validation rows of the plan's stage: the synthetic rows (Stage 1 evaluates on its training
    rows), the built manifest, else the share of ``train_rows`` the split holds out."""
    from maou.stages import stage

    spec = plan.spec
    if stage(spec.stage).data_source == "synthetic":
        return train_rows
    data = spec.base_config().data
    built = plan.built()
    if built is not None:
        return int(built.get("val", 0)) or 1
    train = train_rows or estimate_rows(spec)[0]
    return max(1, round(train * data.val_fraction / max(1e-9, 1.0 - data.val_fraction)))


def estimate_here(plan: SweepPlan, url: str | None = None, startup: bool = True, **budget: Any) -> SweepPlan:
    """``plan``'s cost measured here (:func:`~maou.sweep.run.measure.measure_training` of the base
    configuration, ``budget`` its time budget): a training's wall time with ``at_once`` at a time,
    what a run pays once (``startup``: else left out, as for ``sweep run``'s ETA, whose processes
    have started), each step's and each reused training's storage work."""
    import time

    from maou.sweep.run import measure
    from maou.sweep.run.cost import OPS_PER_COPY, OPS_PER_STEP, OPS_PER_SWEEP, contention
    from maou.sweep.run.executors import choose, cores

    began = time.perf_counter()
    spec = plan.spec
    base = spec.base_config()
    in_process = spec.executor.kind == "local" and (spec.executor.max_concurrent or 1) == 1
    # a worker's start-up is timed beside this process's own imports (torch: choose() needs it)
    probe = measure.WorkerProbe() if startup and not in_process and cores() > 1 else None
    try:
        choice = choose(spec.executor, base.threads)
        section = choice.section
        workers = choice.probe or section.kind == "ray" or (section.max_concurrent or 1) > 1
        rows = plan.rows[0] or training_rows(plan, build=False)[0]
        cost = measure.measure_training(base, rows, validation_rows(plan, rows), workers=workers and startup,
                                        worker_probe=probe, up_to_date=plan.built() is not None, storage_url=url,
                                        **budget)
    finally:
        if probe is not None:
            probe.cancel()
    op = cost.op_s or 0.0
    # trials in workers share the cores with the driver too, busy recording them (its share of a core)
    driver = (min(1.0, choice.at_once * cost.ops_per_training * op / max(cost.training_s, 1e-9))
              if workers else 0.0)
    load = cost.load + driver
    slowdown = contention(choice.at_once, base.threads, cores(), load) if cost.device == "cpu" else 1.0
    plan.cost, plan.device, plan.at_once, plan.load, plan.slowdown = cost, cost.device, choice.at_once, load, slowdown
    plan.seconds_per_training = cost.training_s * slowdown + cost.ops_per_training * op
    plan.step_overhead_s, plan.reused_s = OPS_PER_STEP * op, OPS_PER_COPY * op
    starting = contention(choice.at_once, base.threads, cores(), cost.load) if cost.device == "cpu" else 1.0
    once = cost.startup_s * starting + OPS_PER_SWEEP * op
    if choice.probe:  # the local executor measures its trials at once on one GPU when the first step starts
        from maou.sweep.run.executors.pool import probe_seconds

        once += probe_seconds(base.threads)
    plan.startup_s = once if startup else 0.0
    plan.cost_source = f"measured here on {cost.device} in {time.perf_counter() - began:.1f} s"
    return plan


def cost_lines(plan: SweepPlan) -> list[str]:
    """What a measured estimate is made of, a line a part (none when it was not measured)."""
    cost = plan.cost
    if cost is None or plan.seconds_per_training is None:
        return []
    from maou.sweep.run.executors import cores

    parts = [f"{cost.steps:,} steps x {seconds_text(cost.step_s)}",
             f"{cost.evals} evaluations x {seconds_text(cost.eval_s)} ({cost.eval_rows:,} rows)"]
    if cost.final_rows:
        parts.append(f"{seconds_text(cost.final_s)} on the whole validation split ({cost.final_rows:,} rows)")
    parts.append(f"{seconds_text(cost.setup_s)} model, optimizer and checkpoint")
    text = " + ".join(parts)
    if plan.slowdown != 1.0:
        text = (f"({text}) x {plan.slowdown:.2f} ({plan.at_once} at once on {cores()} cores beside "
                f"{plan.load:.1f} other busy threads: other work and the driver)")
    text += (f" + {cost.ops_per_training} storage operations x {seconds_text(cost.op_s)}" if cost.op_s is not None
             else " (storage operations not measured)")
    timed = f"{cost.timed_steps} at batch {cost.timed_batch}" + (
        f" (scaled by rows to batch {cost.batch_size})" if cost.timed_batch != cost.batch_size else "")
    data = "the rows it trains on" if cost.real_data else "random rows of the stage's shapes (datasets not built)"
    lines = [f"a training: {seconds_text(plan.seconds_per_training)} = {text}",
             f"steps timed: {timed}, on {data}",
             f"a step: its trainings in rounds of {plan.at_once} + {seconds_text(plan.step_overhead_s)} of storage "
             f"work; a reused training {seconds_text(plan.reused_s)}"]
    if plan.startup_s:
        once = ", ".join(f"{what} {seconds_text(seconds)}" for what, seconds in cost.startup if seconds >= 0.0005)
        lines.append(f"once a run: {seconds_text(plan.startup_s)} ({once or 'nothing measurable'})")
    return lines


def seconds_text(value: float) -> str:
    """``416 ms``, ``3.5 s``, ``5,194 s``: a part of an estimate."""
    if value >= 100:
        return f"{value:,.0f} s"
    if value >= 1:
        return f"{value:.1f} s"
    return f"{value * 1e3:.3g} ms"


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


def training_rows(plan: SweepPlan, build: bool = True, progress: bool = False) -> tuple[int, str]:
    """Training rows of the plan's stage and where the number comes from: the synthetic rows, the
    built manifest (built first when ``build``), else an estimate from the game records."""
    from maou.shogi.shapes import STAGE1_ROWS_NUM
    from maou.stages import stage

    spec = plan.spec
    if stage(spec.stage).data_source == "synthetic":
        return STAGE1_ROWS_NUM, "the synthetic Stage 1 rows"
    built = plan.built()
    if built is None and build:
        from maou.data.resolve import dataset_of

        dataset_of(spec.base_config(), progress=progress)
        built = plan.built(again=True)
    if built is not None:
        rows = int(built.get("train", 0))
        return rows, f"the built datasets ({rows:,} training rows)"
    return estimate_rows(spec)


def built_rows(spec: SweepSpec) -> dict[str, int] | None:
    """The rows of each split (``train``, ``val``) of the spec's stage in its built datasets, when
    they are built and up to date (one check of the sources), else None."""
    from maou.data.build import build_dir, datasets_up_to_date
    from maou.layout import stage_rows

    data = spec.base_config().data
    rows = stage_rows(build_dir(data), spec.stage)
    return rows if rows is not None and datasets_up_to_date(data) else None


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
__all__ = ["SweepPlan", "StepPlanSummary", "cost_lines", "estimate_here", "needs_build", "plan_sweep", "seconds_text",
           "step_tries", "validation_rows"]
