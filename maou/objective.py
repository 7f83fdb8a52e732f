"""The Optuna adapter of one step: which trials to run, and their report/prune/tell.

The driver owns the Optuna study (one writer, the single source of truth). Executors pull jobs
with :meth:`StepTrials.next_job`, forward every evaluation to :meth:`StepTrials.report` (which
records the intermediate value, runs the collapse detectors and Optuna's pruner, and answers with
a stop reason or ``None``), and hand the outcome to :meth:`StepTrials.finish`.

A trial is one (configuration, seed). Its Optuna params are the step's searched keys and the seed;
its user attributes carry the rest of its story (resolved config, metrics, stop reason, ...).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

import maou
from maou.config import TrainConfig
from maou.job import JobResult
from maou.pruning import Collapse, CollapseMonitor, build_monitor, record_collapse
from maou.spec import WINNER_OF, Step, SweepSpec, canonical, step_candidates
from maou.strict import to_dict, with_overrides

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
#: Metrics whose whole curve is kept on each trial (``curves`` user attribute), beside the
#: objective's intermediate values: what a person checks when a run looks wrong.
CURVE_METRICS = ("train_loss", "val_loss", "val_f1", "val_pred_pos_rate", "val_policy_top1",
                 "val_policy_entropy", "val_value_skill", "val_value_std", "val_value_accuracy", "val_accuracy")


def config_diff(config: TrainConfig, base: TrainConfig) -> dict[str, Any]:
    """Dotted keys where ``config`` differs from ``base`` (seed excluded): a configuration's identity."""
    out: dict[str, Any] = {}

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict):
            for key in a:
                walk(a[key], b.get(key) if isinstance(b, dict) else None, f"{prefix}{key}.")
        elif a != b:
            out[prefix[:-1]] = a

    walk(to_dict(config), to_dict(base), "")
    out.pop("seed", None)
    return out


def curves(history: list[tuple[int, dict[str, float]]]) -> dict[str, list[float | None]]:
    """The evaluation history as columns: ``step`` and each of :data:`CURVE_METRICS` present."""
    out: dict[str, list[float | None]] = {"step": [step for step, _ in history]}
    for name in CURVE_METRICS:
        if any(name in metrics for _, metrics in history):
            out[name] = [_finite_or_none(metrics.get(name)) for _, metrics in history]
    return out


def _finite_or_none(value: float | None) -> float | None:
    return round(value, 6) if value is not None and math.isfinite(value) else None


def suggest(trial: optuna.Trial, name: str, dist: Any) -> Any:
    """Ask ``trial`` for parameter ``name`` from distribution ``dist`` through the public API."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def lookup(config: TrainConfig, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


@dataclass
class TrialJob:
    """One trial in flight. ``config`` and ``checkpoint_dir`` are all a worker needs."""

    number: int
    trial: optuna.Trial
    config_key: str
    seed: int
    config: dict[str, Any]
    checkpoint_dir: str
    monitor: CollapseMonitor
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    collapse: Collapse | None = None
    started: float = field(default_factory=time.time)


class StepTrials:
    """Trials of one step study: what still has to run, and how each one is recorded."""

    def __init__(self, spec: SweepSpec, step_index: int, study: optuna.Study, carried: dict[str, Any],
                 metric: str, direction: str, resolve_init: Callable[[str], str],
                 earlier: list[optuna.Study], dataset_hash: str | None, train_rows: int,
                 view: Any = None) -> None:
        self.spec, self.step_index, self.study = spec, step_index, study
        self.step: Step = spec.steps[step_index]
        self.metric, self.direction = metric, direction
        self.resolve_init = resolve_init
        self.dataset_hash = dataset_hash
        self.train_rows = train_rows
        self.view = view
        self.base = spec.base_config()
        self.carried_config = with_overrides(self.base, carried, "carried")
        self.carried_key = canonical(config_diff(self.carried_config, self.base))
        self.seeds = spec.seed_list
        self.searched = self._searched_keys()
        self._fail_stale_trials()
        self.queue: deque[tuple[TrainConfig, int]] = deque()
        self._plan(earlier)

    # ----------------------------------------------------------------- planning
    def _searched_keys(self) -> list[str]:
        if self.step.search is not None:
            return list(self.step.search.params)
        keys: list[str] = []
        for overrides in step_candidates(self.step):
            keys += [k for k in overrides if k not in keys]
        return keys

    def _candidates(self) -> list[TrainConfig]:
        """The carried configuration first, then the step's proposals on top of it (deduplicated)."""
        configs = [self.carried_config]
        for overrides in step_candidates(self.step):
            configs.append(with_overrides(self.carried_config, overrides, f"steps[{self.step_index}]"))
        unique: dict[str, TrainConfig] = {}
        for config in configs:
            unique.setdefault(canonical(config_diff(config, self.base)), config)
        return list(unique.values())

    def _distributions(self, candidates: list[TrainConfig]) -> dict[str, Any]:
        dists: dict[str, Any] = {}
        search = self.step.search
        for key in self.searched:
            if search is not None:
                r = search.params[key]
                if r.choices is not None:
                    dists[key] = CategoricalDistribution(list(r.choices))
                elif r.integer:
                    dists[key] = IntDistribution(int(r.low), int(r.high), log=r.log, step=int(r.step or 1))
                else:
                    dists[key] = FloatDistribution(r.low, r.high, log=r.log, step=r.step)
            else:
                choices: list[Any] = []
                for config in candidates:
                    value = lookup(config, key)
                    if value not in choices:
                        choices.append(value)
                dists[key] = CategoricalDistribution(choices)
        dists["seed"] = CategoricalDistribution(list(self.seeds))
        return dists

    def _fail_stale_trials(self) -> None:
        """Trials left RUNNING or WAITING by a driver that died are marked FAIL and run again."""
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            if frozen.state == TrialState.WAITING:
                trial = self.study.ask()
                number = trial.number
            else:
                trial = optuna.trial.Trial(self.study, frozen._trial_id)
                number = frozen.number
            trial.set_user_attr("fail_reason", "interrupted")
            self.study.tell(number, state=TrialState.FAIL)

    def done_pairs(self) -> set[tuple[str, int]]:
        return {(t.user_attrs.get("config_key"), t.user_attrs.get("seed"))
                for t in self.study.get_trials(deepcopy=False, states=FINISHED)}

    def _plan(self, earlier: list[optuna.Study]) -> None:
        candidates = self._candidates()
        self.distributions = self._distributions(candidates)
        done = self.done_pairs()
        reusable = self._reusable(earlier)
        if self.step.search is not None:
            # Sampled steps: the carried configuration, plus seeds missing from earlier samples.
            by_key: dict[str, TrainConfig] = {self.carried_key: self.carried_config}
            for t in self.study.get_trials(deepcopy=False, states=FINISHED):
                by_key.setdefault(t.user_attrs["config_key"], self._config_from_attrs(t))
            candidates = list(by_key.values())
        for config in candidates:
            key = canonical(config_diff(config, self.base))
            for seed in self.seeds:
                if (key, seed) in done:
                    continue
                if (key, seed) in reusable:
                    self._copy_trial(reusable[(key, seed)], config)
                    continue
                self.queue.append((config, seed))

    def _config_from_attrs(self, frozen: optuna.trial.FrozenTrial) -> TrainConfig:
        import json

        return with_overrides(self.base, json.loads(frozen.user_attrs["config_key"]), "trial")

    def _reusable(self, earlier: list[optuna.Study]) -> dict[tuple[str, int], optuna.trial.FrozenTrial]:
        """Finished trials of earlier steps with the same configuration and seed: reused, not re-run."""
        found = {}
        for study in earlier:
            for t in study.get_trials(deepcopy=False, states=FINISHED):
                found.setdefault((t.user_attrs.get("config_key"), t.user_attrs.get("seed")), t)
        return found

    def _copy_trial(self, source: optuna.trial.FrozenTrial, config: TrainConfig) -> None:
        params = {k: lookup(config, k) for k in self.searched}
        params["seed"] = source.user_attrs["seed"]
        trial = optuna.trial.create_trial(
            state=source.state, value=source.value if source.state == TrialState.COMPLETE else None,
            params=params, distributions={k: self.distributions[k] for k in params},
            user_attrs={**source.user_attrs, "step": self.step.name,
                        "reused_from": f"{source.user_attrs.get('study', '?')}#{source.number}"},
            intermediate_values=dict(source.intermediate_values))
        self.study.add_trial(trial)

    # ----------------------------------------------------------------- running
    def pending(self) -> int:
        return len(self.queue)

    def _sampled_configs(self) -> int:
        keys = {t.user_attrs.get("config_key") for t in self.study.get_trials(deepcopy=False)
                if t.state != TrialState.FAIL and "config_key" in t.user_attrs}
        keys.discard(self.carried_key)
        return len(keys)

    def next_job(self) -> TrialJob | None:
        """Start the next trial in the study (state RUNNING), or ``None`` when the step is done."""
        if self.queue:
            config, seed = self.queue.popleft()
            params = {k: lookup(config, k) for k in self.searched}
            params["seed"] = seed
            self.study.enqueue_trial(params, skip_if_exists=False)
            trial = self.study.ask()
            for key, dist in self.distributions.items():
                suggest(trial, key, dist)
            return self._start(trial, config, seed)
        if self.step.search is not None and self._sampled_configs() < self.step.search.trials:
            # The sampler proposes the configuration; its first seed runs now, the others queue.
            self.study.enqueue_trial({"seed": self.seeds[0]}, skip_if_exists=False)
            trial = self.study.ask()
            overrides = {k: suggest(trial, k, self.distributions[k]) for k in self.searched}
            seed = suggest(trial, "seed", self.distributions["seed"])
            config = with_overrides(self.carried_config, overrides, f"steps[{self.step_index}].search")
            for other in self.seeds:
                if other != seed:
                    self.queue.append((config, other))
            return self._start(trial, config, seed)
        return None

    def _start(self, trial: optuna.Trial, config: TrainConfig, seed: int) -> TrialJob:
        config = with_overrides(config, {"seed": seed}, "trial")
        key = canonical(config_diff(config, self.base))
        resolved = to_dict(config)
        init = resolved.get("init_from")
        if isinstance(init, str) and WINNER_OF.match(init):
            resolved["init_from"] = self.resolve_init(init)
        checkpoint_dir = self.spec.runs_path / f"{self.step_index + 1:02d}-{self.step.name}" / f"trial-{trial.number}"
        attrs = {"study": self.study.study_name, "step": self.step.name, "seed": seed, "config_key": key,
                 "overrides": config_diff(config, self.base), "config": resolved,
                 "package_version": maou.__version__, "dataset_hash": self.dataset_hash,
                 "metric": self.metric, "direction": self.direction}
        for name, value in attrs.items():
            trial.set_user_attr(name, value)
        monitor = build_monitor(config.stage, self.spec.pruning, self.budget_steps(config))
        job = TrialJob(trial.number, trial, key, seed, resolved, str(checkpoint_dir), monitor)
        if self.view is not None:
            self.view.trial_started(self, job)
        return job

    def report(self, job: TrialJob, step: int, metrics: dict[str, float]) -> str | None:
        """Record one evaluation; return a stop reason when the trial should be pruned."""
        job.history.append((step, metrics))
        value = metrics.get(self.metric)
        # step 0 is the untrained model: it stays out of Optuna's intermediate values (pruners
        # compare a trial's best value so far, and initialisation noise is no evidence); the
        # collapse detectors and the trial's ``curves`` see it
        if step > 0 and value is not None and math.isfinite(value):
            job.trial.report(value, step)
        if self.view is not None:
            self.view.trial_reported(self, job, step, metrics)
        if not self.spec.pruning.enabled:
            return None
        job.collapse = job.monitor.check(job.history)
        if job.collapse is None and step > 0 and job.trial.should_prune():
            job.collapse = Collapse("optuna_pruner", f"{self.spec.pruning.optuna.kind} pruner: "
                                    f"{self.metric}={value} at step {step}", step)
        return job.collapse.reason if job.collapse is not None else None

    def finish(self, job: TrialJob, result: JobResult | None, error: str | None = None) -> TrialState:
        """Tell Optuna how the trial ended, with its metrics and stop reason on the trial."""
        trial = job.trial
        trial.set_user_attr("wall_time_s", round(time.time() - job.started, 3))
        trial.set_user_attr("curves", curves(job.history))
        if result is not None:
            # non-finite values become null: the storage and the dashboard expect strict JSON
            trial.set_user_attr("final_metrics", {k: _finite_or_none(v) for k, v in result.final_metrics.items()})
            trial.set_user_attr("best_metrics", {k: _finite_or_none(v) for k, v in result.best_metrics.items()})
            trial.set_user_attr("best_step", result.best_step)
            trial.set_user_attr("steps_done", result.steps_done)
            trial.set_user_attr("max_steps", result.max_steps)
            trial.set_user_attr("stop_reason", result.stop_reason)
            trial.set_user_attr("device", result.device)
            trial.set_user_attr("checkpoint", result.checkpoint)
            if result.dataset_hash:
                trial.set_user_attr("dataset_hash", result.dataset_hash)
        if error is not None:
            trial.set_user_attr("fail_reason", "error")
            trial.set_user_attr("error", error[-4000:])
            state = TrialState.FAIL
        elif result is not None and result.stop_reason == "nan_loss" and job.collapse is None:
            job.collapse = Collapse("nan_loss", "training loss became NaN or inf", result.steps_done)
            state = TrialState.PRUNED
        elif job.collapse is not None:
            state = TrialState.PRUNED
        else:
            metrics = result.final_metrics if self.spec.objective.reduce == "final" else result.best_metrics
            value = metrics.get(self.metric)
            if value is None or not math.isfinite(value):
                trial.set_user_attr("fail_reason", f"objective metric {self.metric} missing or not finite")
                state = TrialState.FAIL
            else:
                state = TrialState.COMPLETE
        if state == TrialState.PRUNED:
            record_collapse(trial, job.collapse)
        if state == TrialState.COMPLETE:
            self.study.tell(trial, value)
        else:
            self.study.tell(trial, state=state)
        if self.view is not None:
            self.view.trial_finished(self, job, state)
        return state

    def budget_steps(self, config: TrainConfig) -> int:
        """Optimizer steps of one trial (an epochs budget converted with the training-set size)."""
        if config.max_steps is not None:
            return config.max_steps
        return max(1, math.ceil(config.epochs * math.ceil(self.train_rows / config.batch_size)))
