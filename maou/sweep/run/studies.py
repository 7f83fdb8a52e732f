"""A step's study: opened (created, or loaded as it is), proven this sweep's, and proven comparable.

A study under a step's name that another tool made is refused before anything is written to it
(:func:`foreign_reason`); one this sweep ran with another setup (base config, data, objective:
its :func:`fingerprint`) is refused with what changed (:func:`check_fingerprint`).
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import optuna

from maou.errors import UserError
from maou.strict import flatten, to_dict
from maou.sweep.attrs import StudyAttr
from maou.sweep.records import RecordError, StepRecord, read_step
from maou.sweep.run.step import StepContext
from maou.sweep.spec import Objective, SweepSpec


def fingerprint(spec: SweepSpec, dataset_hash: str | None, index: int) -> dict[str, Any]:
    """What makes the trials of step ``index`` comparable: if any of it changes, the step must
    not be mixed. ``dataset_hash``: the content hash of the datasets (a changed corpus changes it)."""
    base = to_dict(spec.base_config())
    base.pop("seed", None)
    base.pop("data", None)  # where the data lives may move; what it is, dataset_hash says
    objective = spec.step_objective(index)
    return {"stage": spec.stage, "base": base, "dataset_hash": dataset_hash, "metric": objective.metric,
            "direction": objective.direction, "reduce": objective.reduce}


def check_fingerprint(study: optuna.Study, spec: SweepSpec, dataset_hash: str | None, index: int,
                      record: StepRecord | None = None) -> None:
    """Record the step's fingerprint on a new study; refuse one that was run with another setup
    (``record``: the study's record when it was just read)."""
    old = (record if record is not None else read_step(study, index)).fingerprint
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


def _sampler(spec: SweepSpec, index: int) -> optuna.samplers.BaseSampler:
    search = spec.steps[index].search
    if search is None:
        return optuna.samplers.RandomSampler(seed=0)  # every grid trial is enqueued; never sampled
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=search.sampler_seed)
    if search.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=search.sampler_seed)
    return optuna.samplers.RandomSampler(seed=search.sampler_seed)


def open_study(spec: SweepSpec, index: int, storage: Any, context: StepContext, carried: dict[str, Any],
                objective: Objective) -> tuple[optuna.Study, StepRecord]:
    """The step's study, created or checked (another tool's refused, another setup's refused), with
    what it recorded so far."""
    from maou.sweep.run.pruning import build_optuna_pruner

    step = spec.steps[index]
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
    record = read_step(study, index)
    check_fingerprint(study, spec, context.dataset_hash, index, record)
    S = StudyAttr
    for name, value in ((S.SWEEP, spec.name), (S.STEP, step.name), (S.STEP_INDEX, index),
                        (S.DESCRIPTION, step.description), (S.CARRIED_IN, carried)):
        study.set_user_attr(name, value)
    return study, record


__all__ = ["check_fingerprint", "check_steps_are_ours", "fingerprint", "foreign_reason", "open_study"]
