"""The step-by-step search protocol: run each step's study, pick its winner over seeds, carry it on.

Each step is one Optuna study ``<sweep>/<NN>-<step>``. The carried configuration competes in every
step; a challenger replaces it only when its mean over seeds beats the carried mean by more than
the seed noise (``selection.noise_sigmas`` standard errors of the difference of means, and at least
``selection.min_margin``). Pruned or failed configurations never win. The decision, its numbers
and the rule are written on the study as user attributes.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from maou.errors import UserError
from maou.spec import WINNER_OF, Selection, SweepSpec, load_spec
from maou.strict import to_dict


@dataclass
class ConfigStats:
    """One configuration's results over its seeds."""

    config_key: str
    overrides: dict[str, Any]
    values: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    pruned: int = 0
    failed: int = 0
    prune_reasons: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def eligible(self) -> bool:
        """Only configurations whose every seed completed can win."""
        return self.n > 0 and self.pruned == 0 and self.failed == 0


@dataclass
class StepDecision:
    carried_key: str
    winner_key: str
    adopted: bool
    margin: float
    noise: float
    threshold: float
    rule: str
    stats: list[ConfigStats]

    @property
    def winner(self) -> ConfigStats:
        return next(s for s in self.stats if s.config_key == self.winner_key)

    def as_attrs(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return None if x is None or not math.isfinite(x) else round(x, 6)

        return {"carried_key": self.carried_key, "winner_key": self.winner_key, "adopted": self.adopted,
                "margin": num(self.margin), "noise": num(self.noise), "threshold": num(self.threshold),
                "rule": self.rule,
                "winner_overrides": self.winner.overrides,
                "leaderboard": [{"config": s.overrides, "mean": num(s.mean), "std": num(s.std), "n": s.n,
                                 "pruned": s.pruned, "failed": s.failed} for s in self.stats]}


def collect_stats(trials: Iterable[Any]) -> dict[str, ConfigStats]:
    """Group finished trials (Optuna FrozenTrials) by configuration."""
    from optuna.trial import TrialState

    stats: dict[str, ConfigStats] = {}
    for t in trials:
        key = t.user_attrs.get("config_key")
        if key is None or t.state in (TrialState.RUNNING, TrialState.WAITING):
            continue
        if t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") == "interrupted":
            continue  # re-run on resume; not a result
        s = stats.setdefault(key, ConfigStats(key, json.loads(key)))
        if t.state == TrialState.COMPLETE:
            s.values.append(float(t.value))
            s.seeds.append(t.user_attrs.get("seed"))
        elif t.state == TrialState.PRUNED:
            s.pruned += 1
            s.prune_reasons.append(t.user_attrs.get("prune_reason", "pruned"))
        else:
            s.failed += 1
    return stats


def decide(stats: dict[str, ConfigStats], carried_key: str, direction: str, selection: Selection) -> StepDecision:
    """Pick the step's winner: the best eligible mean, adopted only when it beats the noise."""
    sign = 1.0 if direction == "maximize" else -1.0
    ordered = sorted(stats.values(), key=lambda s: (not s.eligible, -sign * s.mean if s.eligible else 0.0))
    carried = stats.get(carried_key)
    best = ordered[0] if ordered and ordered[0].eligible else None
    rule = (f"adopt when mean gain > max({selection.noise_sigmas:g} x SE of the difference of means, "
            f"{selection.min_margin:g}); pruned or failed configurations never win")
    if best is None or best.config_key == carried_key:
        return StepDecision(carried_key, carried_key, False, 0.0, 0.0, 0.0, rule, ordered)
    if carried is None or not carried.eligible:
        return StepDecision(carried_key, best.config_key, True, math.inf, 0.0, 0.0,
                            rule + "; the carried configuration did not complete, so the best one is adopted",
                            ordered)
    margin = sign * (best.mean - carried.mean)
    noise = math.sqrt(best.std ** 2 / best.n + carried.std ** 2 / carried.n)
    threshold = max(selection.noise_sigmas * noise, selection.min_margin)
    adopted = margin > threshold
    return StepDecision(carried_key, best.config_key if adopted else carried_key, adopted,
                        margin, noise, threshold, rule, ordered)


# ----------------------------------------------------------------------------- the sweep driver
def objective_of(spec: SweepSpec) -> tuple[str, str]:
    from maou.metrics import SELECTION_METRICS

    metric, direction = SELECTION_METRICS[spec.stage]
    return spec.objective.metric or metric, spec.objective.direction or direction


def fingerprint(spec: SweepSpec) -> dict[str, Any]:
    """What makes trials of a step comparable: if any of it changes, the step must not be mixed."""
    base = to_dict(spec.base_config())
    base.pop("seed", None)
    metric, direction = objective_of(spec)
    return {"stage": spec.stage, "base": base, "metric": metric, "direction": direction,
            "reduce": spec.objective.reduce}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def check_fingerprint(study, spec: SweepSpec) -> None:
    old = study.user_attrs.get("fingerprint")
    new = json.loads(json.dumps(fingerprint(spec)))
    if old is None:
        study.set_user_attr("fingerprint", new)
        return
    if old == new:
        return
    a, b = _flatten(old), _flatten(new)
    changes = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    raise UserError(f"study {study.study_name!r} was run with a different setup ({'; '.join(changes[:6])}); "
                    f"its trials would not be comparable. Rename the sweep or delete its storage.")


def resolve_winner_of(reference: str, storage_override: str | None = None) -> str:
    """``winner-of:SPEC`` -> the checkpoint of that sweep's winning trial (best seed of the winner)."""
    import optuna

    from maou.storage import open_storage, step_study_names

    match = WINNER_OF.match(reference)
    other = load_spec(match.group("spec"))
    storage = open_storage(other.storage_url)
    names = step_study_names(storage, other.name)
    if len(names) < len(other.steps):
        raise UserError(f"{reference}: sweep {other.name!r} has not finished; run `sweep run {match.group('spec')}`")
    study = optuna.load_study(study_name=names[-1], storage=storage)
    winner_key = study.user_attrs.get("decision", {}).get("winner_key")
    _, direction = objective_of(other)
    trials = [t for t in study.trials if t.user_attrs.get("config_key") == winner_key and t.value is not None
              and t.user_attrs.get("checkpoint")]
    if not trials:
        raise UserError(f"{reference}: no checkpoint recorded for the winner of {other.name!r}")
    best = (max if direction == "maximize" else min)(trials, key=lambda t: t.value)
    path = best.user_attrs["checkpoint"]
    if not Path(path).is_file():
        raise UserError(f"{reference}: the winner's checkpoint {path} is missing")
    return path


def train_rows(spec: SweepSpec, dataset_dir: str | None) -> int:
    if dataset_dir is None:
        from maou.shogi.shapes import STAGE1_ROWS_NUM

        return STAGE1_ROWS_NUM
    manifest = json.loads((Path(dataset_dir) / f"stage{spec.stage}" / "manifest.json").read_text())
    rows = manifest.get("rows", {})
    return int(rows.get("train", 0)) if isinstance(rows, dict) else int(manifest.get("train_rows", 0))


@dataclass
class SweepOutcome:
    decisions: list[StepDecision]
    carried: dict[str, Any]
    study_names: list[str]


def run_sweep(spec: SweepSpec, storage_url: str | None = None, executor=None, view=None,
              storage=None) -> SweepOutcome:
    """Run (or resume) every step of ``spec`` in order; returns each step's decision.

    ``storage`` (an Optuna storage object) takes precedence over ``storage_url`` and the spec's URL.
    """
    import optuna

    from maou.job import dataset_dir_and_hash
    from maou.objective import StepTrials
    from maou.storage import open_storage, sweep_lock

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url or spec.storage_url
    if executor is None:
        from maou.executors import make_executor

        executor = make_executor(spec.executor)
    metric, direction = objective_of(spec)
    storage = storage if storage is not None else open_storage(url)
    dataset_dir, dataset_hash = dataset_dir_and_hash(spec.base_config())
    rows = train_rows(spec, dataset_dir)
    resolved_inits: dict[str, str] = {}

    def resolve_init(reference: str) -> str:
        if reference not in resolved_inits:
            resolved_inits[reference] = resolve_winner_of(reference)
        return resolved_inits[reference]

    carried: dict[str, Any] = {}
    decisions: list[StepDecision] = []
    studies: list[optuna.Study] = []
    with sweep_lock(url, spec.name):
        for index, step in enumerate(spec.steps):
            study = optuna.create_study(study_name=spec.study_name(index), storage=storage,
                                        direction=direction, load_if_exists=True,
                                        sampler=_sampler(step), pruner=_pruner(spec))
            check_fingerprint(study, spec)
            study.set_user_attr("sweep", spec.name)
            study.set_user_attr("step", step.name)
            study.set_user_attr("step_index", index)
            study.set_user_attr("description", step.description)
            study.set_user_attr("carried_in", carried)
            trials = StepTrials(spec, index, study, carried, metric, direction, resolve_init,
                                studies, dataset_hash, rows, view=view)
            if view is not None:
                view.step_started(spec, index, study, trials)
            executor.run(trials)
            decision = decide(collect_stats(study.get_trials(deepcopy=False)), trials.carried_key,
                              direction, spec.selection)
            study.set_user_attr("decision", decision.as_attrs())
            carried = dict(decision.winner.overrides)
            study.set_user_attr("carried_out", carried)
            decisions.append(decision)
            studies.append(study)
            if view is not None:
                view.step_finished(spec, index, study, decision)
    return SweepOutcome(decisions, carried, [s.study_name for s in studies])


def _sampler(step):
    import optuna

    if step.search is None:
        return optuna.samplers.RandomSampler(seed=0)  # every grid trial is enqueued; never sampled
    seed = step.search.sampler_seed
    if step.search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if step.search.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def _pruner(spec: SweepSpec):
    from maou.pruning import build_optuna_pruner

    return build_optuna_pruner(spec.pruning.optuna) if spec.pruning.enabled else None


__all__ = ["ConfigStats", "StepDecision", "collect_stats", "decide", "run_sweep"]
