"""The step-by-step search protocol: run each step's study, decide its winner, carry it on.

Each step is one Optuna study ``<sweep>/<NN>-<step>``. A step's trials are planned
(:mod:`maou.sweep.run.planner`), run by an executor through the trial recorder
(:mod:`maou.sweep.run.recorder`), and decided (:mod:`maou.sweep.run.decision`); the decision, its numbers
and the rule are written on the study as user attributes, and its winner is carried into the
next step as fixed. A step's study is opened and proven this sweep's in :mod:`maou.sweep.run.studies`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from maou.errors import UserError
from maou.layout import Dataset, stage_rows
from maou.sweep.attrs import StudyAttr
from maou.sweep.identity import ConfigKey
from maou.sweep.locate import load_spec
from maou.sweep.records import StepRecord, SweepRecord, deciding_trials, read_step, read_sweep
from maou.sweep.run import faults
from maou.sweep.run.decision import StepDecision, collect_stats, decide
from maou.sweep.run.edges import extension, grid_edges, with_extensions
from maou.sweep.run.racing import worse
from maou.sweep.run.recorder import Observer, Observers, TrialRecorder
from maou.sweep.run.step import StepContext, StepRun, open_step
from maou.sweep.run.studies import check_steps_are_ours, open_study
from maou.sweep.spec import WINNER_OF, Step, SweepSpec


def resolve_winner_of(reference: str) -> str:
    """``winner-of:SPEC`` -> the checkpoint of that sweep's winning trial (best seed of the winner)."""
    match = WINNER_OF.match(reference)
    assert match is not None, reference
    other = load_spec(match.group("spec"))
    record: SweepRecord = read_sweep(other)
    last = other.study_name(len(other.steps) - 1)  # the spec's last step decides, not the storage
    if record.final is None:
        raise UserError(f"{reference}: sweep {other.name!r} has not finished its last step ({last}); "
                        f"run `sweep run {match.group('spec')}`")
    best = record.winner_trial(other.step_objective(len(other.steps) - 1))
    if best is None or best.checkpoint is None:
        raise UserError(f"{reference}: no checkpoint recorded for the winner of {other.name!r}")
    if not Path(best.checkpoint).is_file():
        raise UserError(f"{reference}: the winner's checkpoint {best.checkpoint} is missing")
    return best.checkpoint


def train_rows(dataset: Dataset) -> int:
    """Training rows of the dataset's stage: the manifest's count, or the synthetic rows' number."""
    if dataset.folder is None:
        from maou.shogi.shapes import STAGE1_ROWS_NUM

        return STAGE1_ROWS_NUM
    return (stage_rows(dataset.folder, dataset.stage) or {}).get("train", 0)


@dataclass
class SweepOutcome:
    decisions: list[StepDecision]
    carried: dict[str, Any]
    study_names: list[str]


class StepFailed(UserError):
    """Not one trial of a step completed: the sweep cannot go on (exit code 1)."""

    exit_code = 1

    def __init__(self, study_name: str, reasons: Counter) -> None:
        self.study_name, self.reasons = study_name, reasons
        counted = ", ".join(f"{reason}: {n}" for reason, n in reasons.most_common()) or "no trials"
        super().__init__(f"step {study_name}: no trial completed ({counted}); "
                         f"the sweep stops here. Fix the cause and run it again to resume.")


class StepIncomplete(UserError):
    """Some (configuration, seed) of a step did not finish: the step does not decide (exit code 1);
    a resume runs those again."""

    exit_code = 1

    def __init__(self, study_name: str, missing: int, total: int, causes: Counter) -> None:
        self.study_name, self.causes = study_name, causes
        counted = ", ".join(f"{cause}: {n}" for cause, n in causes.most_common())
        super().__init__(f"step {study_name}: {missing} of {total} trainings did not finish ({counted}); the step "
                         f"does not decide. Fix the cause and run the sweep again: those run again")


def _unfinished(record: StepRecord, run: Any, seeds: tuple[int, ...],
                only: set[ConfigKey] | None) -> tuple[int, Counter]:
    """The step's (configuration, seed) pairs without a finished trial, and their causes."""
    outcome = {t.pair: t for t in deciding_trials(record.trials)}
    causes: Counter = Counter()
    expected = [(key, seed) for key in run.plan.candidates if only is None or key in only for seed in seeds]
    for pair in expected:
        trial = outcome.get(pair)
        if trial is None or not trial.finished:
            causes[trial.outcome if trial is not None else "not run"] += 1
    return len(expected), causes


def _more_seeds(spec: SweepSpec, decision: StepDecision,
                seeds: tuple[int, ...]) -> tuple[int, list[ConfigKey], str] | None:
    """Adaptive seeds (``racing.max_seeds``): the next seed and the challengers still in contention
    that get it, or None: one was adopted, every comparison is decided (significantly better, or
    worse at ``racing.sigmas``), or the challengers have ``max_seeds`` seeds."""
    limit = spec.racing.max_seeds
    if limit is None or len(seeds) >= limit or decision.adopted:
        return None
    undecided = [c.key for c in decision.comparisons if not c.significant and not worse(c.test, spec.racing.sigmas)]
    if not undecided:
        return None
    seed = max(seeds) + 1
    return seed, undecided, (f"{len(undecided)} challengers neither adopted nor worse at {spec.racing.sigmas:g} sigma "
                             f"after {len(seeds)} seeds")


def run_sweep(spec: SweepSpec, storage_url: str | None = None, executor: Any = None, view: Any = None,
              storage: Any = None, observers: tuple[Any, ...] = ()) -> SweepOutcome:
    """Run (or resume) every step of ``spec`` in order; returns each step's decision.

    ``storage`` (an Optuna storage object) takes precedence over ``storage_url`` and the spec's URL.
    ``view`` and ``observers`` hear of steps and trials (:class:`~maou.sweep.run.recorder.Observer`):
    the live display, the dashboard notes (:class:`maou.sweep.results.notes.DashboardNotes`).
    """
    from maou.sweep.chain import require_prerequisites
    from maou.sweep.run.executors import make_executor
    from maou.sweep.run.lock import sweep_lock
    from maou.sweep.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    require_prerequisites(spec)  # before anything trains or touches this sweep's storage
    url = storage_url or spec.storage_url
    storage = storage if storage is not None else open_storage(url)
    check_steps_are_ours(spec, storage)  # a step's name taken by another tool: refused, nothing written
    with sweep_lock(storage, spec.name) as fenced:  # every write from here on: only while the lock is ours
        context = _prepare(spec)
        if executor is not None:  # the caller's, to close
            return _run_steps(spec, fenced, context, executor, Observers(view, *observers))
        made = make_executor(spec.executor, threads=context.base.threads)
        try:
            return _run_steps(spec, fenced, context, made, Observers(view, *observers))
        finally:
            close = getattr(made, "close", None)  # worker processes of a local pool
            if close is not None:
                close()


def _prepare(spec: SweepSpec) -> StepContext:
    """The datasets (built if needed, every file proven against its manifest: the one full check of
    this run; trials check sizes), then the preflight checks: all before anything trains."""
    from maou.data.resolve import dataset_of
    from maou.sweep.run.preflight import preflight

    base = spec.base_config()
    dataset = dataset_of(base, progress=True, check="full")
    rows = train_rows(dataset)
    preflight(spec, rows)
    resolved: dict[str, str] = {}

    def resolve_init(reference: str) -> str:
        if reference not in resolved:
            resolved[reference] = resolve_winner_of(reference)
        return resolved[reference]

    return StepContext(spec, base, dataset, rows, resolve_init)


@dataclass
class _Round:
    """What one round of a step runs: its seeds and the configurations that get them (None: every
    one), on the grid as grown so far (``extended``: each searched key's values past the edges)."""

    seeds: tuple[int, ...]
    only: set[ConfigKey] | None
    extended: dict[str, list[Any]]


def _run_step(spec: SweepSpec, index: int, recorder: TrialRecorder, context: StepContext, executor: Any,
              view: Observer, carried: dict[str, Any], earlier: list[optuna.Study],
              extended: dict[str, list[Any]]) -> StepDecision:
    """Run the step's trainings and decide, a round at a time: run the round, check that it is
    complete, decide; then maybe a seed more for the undecided challengers (adaptive seeds) or a
    grid grown past an edge, each a round of its own."""
    step, guards, study, objective = spec.steps[index], spec.step_guards(index), recorder.study, recorder.objective
    todo = _Round(spec.seed_list, None, extended)
    seed_rounds: list[dict[str, Any]] = []  # adaptive seeds: each round's seed and who got it
    while True:
        run = _run_round(spec, index, study, context, executor, view, recorder, carried, earlier, todo)
        record = read_step(study, index)  # the round's outcome, read once
        _require_complete(study, record, run, todo)
        trials = [t for t in record.trials if t.seed in todo.seeds]  # this round's seeds only
        decision = decide(collect_stats(trials, objective.reduce, [g.metric for g in guards]), run.carried_key,
                          objective, spec.selection, guards)
        if decision.failed:
            return decision
        more = _more_seeds(spec, decision, todo.seeds)
        if more is not None:  # undecided challengers get one more seed, with the carried configuration
            seed, keys, why = more
            seed_rounds.append({"seed": seed, "configs": [k.overrides for k in keys], "why": why})
            todo = _Round((*todo.seeds, seed), {run.carried_key, *keys}, todo.extended)
            continue
        if seed_rounds:
            decision.seeds_added = {"rounds": seed_rounds, "seeds": {s.key.text: s.n for s in decision.stats}}
        added = _grown_grid(step, run, decision, todo.extended, context.train_rows)
        if not added:
            decision.extended = todo.extended
            return decision
        for key, value in added.items():
            todo.extended.setdefault(key, []).append(value)
        study.set_user_attr(StudyAttr.GRID_EXTENSIONS, todo.extended)
        todo = _Round(spec.seed_list, None, todo.extended)  # the grown grid runs with the step's seeds


def _run_round(spec: SweepSpec, index: int, study: optuna.Study, context: StepContext, executor: Any,
               view: Observer, recorder: TrialRecorder, carried: dict[str, Any], earlier: list[optuna.Study],
               todo: _Round) -> StepRun:
    """Open the round's trainings (``open_step``) and let the executor run them."""
    grid = with_extensions(spec.steps[index], todo.extended)
    run = open_step(context, index, study, recorder, carried, earlier, grid, seeds=todo.seeds, only=todo.only)
    view.step_started(spec, index, study, run)
    try:
        executor.run(run)
    except KeyboardInterrupt:
        # a trial the interrupt caught between being started and its executor's own handler
        # (this driver holds the sweep lock: every RUNNING trial is its own) runs again on resume
        recorder.fail_stale()
        raise
    return run


def _require_complete(study: optuna.Study, record: StepRecord, run: StepRun, todo: _Round) -> None:
    """Refuse to decide a round whose (configuration, seed) pairs did not all finish."""
    total, causes = _unfinished(record, run, todo.seeds, todo.only)
    if causes:
        study.set_user_attr(StudyAttr.DECISION, None)  # what an earlier run decided does not stand either
        raise StepIncomplete(study.study_name, sum(causes.values()), total, causes)


def _grown_grid(step: Step, run: StepRun, decision: StepDecision, extended: dict[str, list[Any]],
                train_rows: int) -> dict[str, Any]:
    """The values a grid grows by past the edge its winner stands on (``extend`` rounds at most)."""
    winner = run.plan.candidates[decision.winner_key]
    decision.edge = grid_edges(step, extended, winner)
    rounds = max((len(v) for v in extended.values()), default=0)
    return extension(step, extended, winner, decision.edge, train_rows) if rounds < step.extend else {}


def _run_steps(spec: SweepSpec, storage: Any, context: StepContext, executor: Any, view: Observer) -> SweepOutcome:
    carried: dict[str, Any] = {}
    decisions: list[StepDecision] = []
    studies: list[optuna.Study] = []
    for index in range(len(spec.steps)):
        objective = spec.step_objective(index)  # the step's objective, resolved once
        study, opened = open_study(spec, index, storage, context, carried, objective)
        recorder = TrialRecorder(study, objective, view)  # its stopper is the step's: open_step
        decision = _run_step(spec, index, recorder, context, executor, view, carried, studies,
                             opened.grid_extensions)
        faults.point("decision")
        study.set_user_attr(StudyAttr.DECISION, decision.as_attrs())
        recorder.mark_winner(decision.winner_key)
        view.step_finished(spec, index, study, decision)
        if decision.failed:
            raise StepFailed(study.study_name, read_step(study, index).failure_reasons())
        carried = dict(decision.winner_key.overrides)
        study.set_user_attr(StudyAttr.CARRIED_OUT, carried)
        decisions.append(decision)
        studies.append(study)
    return SweepOutcome(decisions, carried, [s.study_name for s in studies])


__all__ = ["StepFailed", "StepIncomplete", "SweepOutcome", "resolve_winner_of", "run_sweep"]
