"""The step-by-step search protocol: run each step's study, decide its winner, carry it on.

Each step is one Optuna study ``<sweep>/<NN>-<step>``. A step's trials are planned
(:mod:`maou.sweep.run.planner`), run by an executor through the trial recorder
(:mod:`maou.sweep.run.recorder`), and decided (:mod:`maou.sweep.run.decision`); the decision, its numbers
and the rule are written on the study as user attributes, and its winner is carried into the
next step as fixed.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from maou.errors import UserError
from maou.layout import Dataset, stage_rows
from maou.strict import flatten, to_dict
from maou.sweep.attrs import StudyAttr
from maou.sweep.identity import ConfigKey
from maou.sweep.locate import load_spec
from maou.sweep.records import RecordError, SweepRecord, deciding_trials, read_step, read_sweep
from maou.sweep.run import faults
from maou.sweep.run.decision import StepDecision, collect_stats, decide
from maou.sweep.run.edges import extension, grid_edges, with_extensions
from maou.sweep.run.racing import worse
from maou.sweep.run.recorder import Observer, Observers, TrialRecorder
from maou.sweep.run.step import StepContext, open_step
from maou.sweep.spec import WINNER_OF, SweepSpec


def fingerprint(spec: SweepSpec, dataset_hash: str | None, index: int) -> dict[str, Any]:
    """What makes the trials of step ``index`` comparable: if any of it changes, the step must
    not be mixed. ``dataset_hash``: the content hash of the datasets (a changed corpus changes it)."""
    base = to_dict(spec.base_config())
    base.pop("seed", None)
    base.pop("data", None)  # where the data lives may move; what it is, dataset_hash says
    objective = spec.step_objective(index)
    return {"stage": spec.stage, "base": base, "dataset_hash": dataset_hash, "metric": objective.metric,
            "direction": objective.direction, "reduce": objective.reduce}


def check_fingerprint(study: optuna.Study, spec: SweepSpec, dataset_hash: str | None, index: int) -> None:
    """Record the step's fingerprint on a new study; refuse one that was run with another setup."""
    old = read_step(study, index).fingerprint
    new = json.loads(json.dumps(fingerprint(spec, dataset_hash, index)))
    if old is None:
        study.set_user_attr(StudyAttr.FINGERPRINT, new)
        return
    if old == new:
        return
    a, b = flatten(old), flatten(new)
    changed = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    changes = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed]
    hint = " (the game records under data.games changed)" if "dataset_hash" in changed else ""
    raise UserError(f"study {study.study_name!r} was run with a different setup{hint} ({'; '.join(changes[:6])}); "
                    f"its trials would not be comparable. Rename the sweep or delete its storage.")


def foreign_reason(study: optuna.Study, spec: SweepSpec, index: int) -> str | None:
    """Why the existing study under step ``index``'s name is not this sweep's step, or None (it is,
    or this sweep created it and stopped before writing on it). Only reads."""
    attrs = study.user_attrs
    owner = attrs.get(StudyAttr.SWEEP)
    if owner is not None and owner != spec.name:
        return f"its 'sweep' attribute names {owner!r}"
    try:
        read_step(study, index)  # the read model: every result trial has its config_key and seed
    except RecordError as exc:
        return exc.detail
    if owner is not None:
        return None  # this sweep's: its fingerprint says whether it is comparable
    trials = len(study.get_trials(deepcopy=False))
    if trials:
        return f"it has {trials} trial{'s' if trials > 1 else ''} but no 'sweep' attribute"
    others = sorted(set(attrs) - StudyAttr.ALL)
    if others:
        return f"its user attributes {', '.join(others)} are not this sweep's"
    directions = [d.name.lower() for d in study.directions]
    direction = spec.step_objective(index).direction
    if directions != [direction]:
        return f"its direction is {' and '.join(directions)}, not the step's {direction}"
    return None


def _existing_study(spec: SweepSpec, index: int, storage: Any, **how: Any) -> optuna.Study | None:
    """Step ``index``'s study loaded as it is (loading writes nothing), or None when it does not exist."""
    name = spec.study_name(index)
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return None
    return optuna.load_study(study_name=name, storage=storage, **how)


def _refuse_foreign(study: optuna.Study, spec: SweepSpec, index: int, storage: Any) -> None:
    why = foreign_reason(study, spec, index)
    if why is None:
        return
    from maou.sweep.storage import mask_url

    url = getattr(storage, "url", None)
    where = f" in {mask_url(url)}" if isinstance(url, str) else ""
    raise UserError(f"study {study.study_name!r}{where} is not step {index + 1} of sweep {spec.name!r}: {why}; "
                    f"nothing was written to it. Rename the sweep, or rename or delete that study.")


def check_steps_are_ours(spec: SweepSpec, storage: Any) -> None:
    """Refuse, before anything is written, a storage where a study under one of the spec's step
    names is another tool's (:func:`foreign_reason`)."""
    for index in range(len(spec.steps)):
        study = _existing_study(spec, index, storage)
        if study is not None:
            _refuse_foreign(study, spec, index, storage)


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


def _unfinished(study: optuna.Study, index: int, run: Any, seeds: tuple[int, ...],
                only: set[ConfigKey] | None) -> tuple[int, Counter]:
    """The step's (configuration, seed) pairs without a finished trial, and their causes."""
    outcome = {t.pair: t for t in deciding_trials(read_step(study, index).trials)}
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


def _sampler(spec: SweepSpec, index: int) -> optuna.samplers.BaseSampler:
    search = spec.steps[index].search
    if search is None:
        return optuna.samplers.RandomSampler(seed=0)  # every grid trial is enqueued; never sampled
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=search.sampler_seed)
    if search.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=search.sampler_seed)
    return optuna.samplers.RandomSampler(seed=search.sampler_seed)


def _recorder(spec: SweepSpec, index: int, study: optuna.Study, observer: Observer | None = None) -> TrialRecorder:
    """The trial recorder of step ``index`` and its objective (its stopper is the step's: ``open_step``)."""
    return TrialRecorder(study, spec.step_objective(index), observer)


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


def _open_study(spec: SweepSpec, index: int, storage: Any, context: StepContext,
                carried: dict[str, Any]) -> optuna.Study:
    from maou.sweep.run.pruning import build_optuna_pruner

    step = spec.steps[index]
    objective = spec.step_objective(index)
    sampler = _sampler(spec, index)
    pruner = build_optuna_pruner(spec.pruning.optuna) if spec.pruning.enabled else None
    study = _existing_study(spec, index, storage, sampler=sampler, pruner=pruner)
    if study is not None:
        _refuse_foreign(study, spec, index, storage)  # before the first write on it
    else:
        study = optuna.create_study(study_name=spec.study_name(index), storage=storage, direction=objective.direction,
                                    load_if_exists=True, sampler=sampler, pruner=pruner)
    with warnings.catch_warnings():  # experimental in Optuna, and exactly what the dashboard reads
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([objective.metric])  # the dashboard's axes say what is plotted
    check_fingerprint(study, spec, context.dataset_hash, index)
    S = StudyAttr
    for name, value in ((S.SWEEP, spec.name), (S.STEP, step.name), (S.STEP_INDEX, index),
                        (S.DESCRIPTION, step.description), (S.CARRIED_IN, carried)):
        study.set_user_attr(name, value)
    return study


def _run_step(spec: SweepSpec, index: int, study: optuna.Study, context: StepContext, executor: Any,
              view: Observer, carried: dict[str, Any], earlier: list[optuna.Study]) -> StepDecision:
    """Run the step's trainings and decide; a grid with ``extend`` grows past an edge and runs again."""
    step, objective, guards = spec.steps[index], spec.step_objective(index), spec.step_guards(index)
    extended: dict[str, list[Any]] = read_step(study, index).grid_extensions
    recorder = _recorder(spec, index, study, view)
    seeds, only, seed_rounds = spec.seed_list, None, []  # adaptive seeds: each round's seed and who got it
    while True:
        run = open_step(context, index, study, recorder, carried, earlier, with_extensions(step, extended),
                        seeds=seeds, only=only)
        view.step_started(spec, index, study, run)
        try:
            executor.run(run)
        except KeyboardInterrupt:
            # a trial the interrupt caught between being started and its executor's own handler
            # (this driver holds the sweep lock: every RUNNING trial is its own) runs again on resume
            recorder.fail_stale()
            raise
        total, causes = _unfinished(study, index, run, seeds, only)
        if causes:
            study.set_user_attr(StudyAttr.DECISION, None)  # what an earlier run decided does not stand either
            raise StepIncomplete(study.study_name, sum(causes.values()), total, causes)
        trials = [t for t in read_step(study, index).trials if t.seed in seeds]  # this round's seeds only
        stats = collect_stats(trials, objective.reduce, [g.metric for g in guards])
        decision = decide(stats, run.carried_key, objective, spec.selection, guards)
        if decision.failed:
            return decision
        more = _more_seeds(spec, decision, seeds)
        if more is not None:  # undecided challengers get one more seed, with the carried configuration
            seed, keys, why = more
            seed_rounds.append({"seed": seed, "configs": [k.overrides for k in keys], "why": why})
            seeds, only = (*seeds, seed), {run.carried_key, *keys}
            continue
        if seed_rounds:
            decision.seeds_added = {"rounds": seed_rounds, "seeds": {s.key.text: s.n for s in decision.stats}}
        winner = run.plan.candidates[decision.winner_key]
        decision.edge = grid_edges(step, extended, winner)
        rounds = max((len(v) for v in extended.values()), default=0)
        added = extension(step, extended, winner, decision.edge, context.train_rows) if rounds < step.extend else {}
        if not added:
            decision.extended = extended
            return decision
        for key, value in added.items():
            extended.setdefault(key, []).append(value)
        study.set_user_attr(StudyAttr.GRID_EXTENSIONS, extended)
        seeds, only = spec.seed_list, None  # the grown grid runs with the step's seeds (more may follow)


def _run_steps(spec: SweepSpec, storage: Any, context: StepContext, executor: Any, view: Observer) -> SweepOutcome:
    carried: dict[str, Any] = {}
    decisions: list[StepDecision] = []
    studies: list[optuna.Study] = []
    for index in range(len(spec.steps)):
        study = _open_study(spec, index, storage, context, carried)
        decision = _run_step(spec, index, study, context, executor, view, carried, studies)
        faults.point("decision")
        study.set_user_attr(StudyAttr.DECISION, decision.as_attrs())
        _recorder(spec, index, study, view).mark_winner(decision.winner_key)
        view.step_finished(spec, index, study, decision)
        if decision.failed:
            raise StepFailed(study.study_name, read_step(study, index).failure_reasons())
        carried = dict(decision.winner_key.overrides)
        study.set_user_attr(StudyAttr.CARRIED_OUT, carried)
        decisions.append(decision)
        studies.append(study)
    return SweepOutcome(decisions, carried, [s.study_name for s in studies])


__all__ = ["StepFailed", "StepIncomplete", "SweepOutcome", "check_fingerprint", "check_steps_are_ours",
           "fingerprint", "foreign_reason", "resolve_winner_of", "run_sweep"]
