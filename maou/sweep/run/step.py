"""One step's study at run time: its plan made Optuna's, handed to an executor job by job.

:func:`open_step` reads what the step's study (and the earlier steps') already hold, asks the pure
planner (:mod:`maou.sweep.run.planner`) what remains, copies reusable trials and returns a
:class:`StepRun`. An executor pulls ``(handle, job)`` pairs with :meth:`StepRun.next_job` until it
answers ``None``, runs each job and tells the recorder (:attr:`StepRun.recorder`) how it went.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

import maou
from maou.layout import Dataset
from maou.strict import to_dict, with_overrides
from maou.sweep.attrs import TrialAttr
from maou.sweep.identity import ConfigKey
from maou.sweep.records import TrialRecord, read_step
from maou.sweep.run.job import Job
from maou.sweep.run.params import step_distributions, trial_params
from maou.sweep.run.planner import Pair, StepPlan, Training, configuration, plan_step
from maou.sweep.run.pruning import optuna_pruning
from maou.sweep.run.racing import RACING, Racer
from maou.sweep.run.recorder import TrialHandle, TrialRecorder
from maou.sweep.run.stopping import AnyOf
from maou.sweep.spec import WINNER_OF, Step, SweepSpec
from maou.trainer.config import TrainConfig
from maou.trainer.result import Stop

#: An executor's last word on a job's config (its threads, absolute paths) before it is recorded.
Adjust = Callable[[TrainConfig], TrainConfig]


@dataclass(frozen=True)
class StepContext:
    """What every step of one sweep run shares."""

    spec: SweepSpec
    base: TrainConfig
    #: The stage's datasets, resolved once for the run: every job carries them.
    dataset: Dataset
    train_rows: int
    #: ``winner-of:SPEC`` -> that sweep's winning checkpoint.
    resolve_init: Callable[[str], str]

    @property
    def dataset_hash(self) -> str | None:
        return self.dataset.content_hash


def open_step(context: StepContext, index: int, study: optuna.Study, recorder: TrialRecorder,
              carried: dict[str, Any], earlier: list[optuna.Study], step: Step | None = None,
              seeds: tuple[int, ...] | None = None, only: set[ConfigKey] | None = None) -> StepRun:
    """The step's remaining work: stale trials failed, reusable ones copied, the rest queued.
    ``step``: the spec's step as this run sees it (a grid grown past an edge); ``seeds`` and
    ``only``: the seeds this round runs and the configurations that get them (adaptive seeds)."""
    spec = context.spec
    step = step if step is not None else spec.steps[index]
    seeds = seeds if seeds is not None else spec.seed_list
    recorder.fail_stale()
    current = read_step(study, index)
    finished: set[Pair] = {t.pair for t in current.finished_trials}
    sampled: dict[ConfigKey, TrainConfig] = {}
    if step.search is not None:  # what the sampler proposed in earlier runs of this step
        for t in current.finished_trials:
            sampled.setdefault(t.key, with_overrides(context.base, t.key.overrides, "trial"))
    objective = recorder.objective
    reusable: dict[Pair, TrialRecord] = {}
    for i, other in enumerate(earlier):
        for t in read_step(other, i).finished_trials:
            if t.value_under(objective.metric, objective.reduce) is not None or t.state != TrialState.COMPLETE:
                reusable.setdefault(t.pair, t)
    plan = plan_step(step, index, context.base, carried, seeds, finished, sampled, reusable)
    if only is not None:
        plan.to_train = [t for t in plan.to_train if t.key in only]
        plan.to_copy = [(t, source) for t, source in plan.to_copy if t.key in only]
    dists = step_distributions(step, plan.searched, plan.candidates.values())
    for training, source in plan.to_copy:
        recorder.copy(source, source.value_under(objective.metric, objective.reduce),
                      trial_params(dists, plan.params(training.config)), dists, step.name)
    racer = Racer.of_trials(spec.racing, plan.carried_key, objective.sign,
                            read_step(study, index).trials if plan.to_copy else current.trials, objective.metric)
    # the driver's stopper of this step: Optuna's pruner first, then the race (the collapse rules
    # stop a run where it trains: maou.sweep.run.job)
    recorder.stopper = AnyOf(optuna_pruning(spec.pruning.optuna, spec.pruning.enabled, objective.metric), racer)
    return StepRun(context, index, plan, dists, recorder, seeds, racer)


class StepRun:
    """The trainings of one step still to run, started one by one through the recorder."""

    def __init__(self, context: StepContext, index: int, plan: StepPlan[Any],
                 dists: dict[str, BaseDistribution], recorder: TrialRecorder,
                 seeds: tuple[int, ...] | None = None, racer: Racer | None = None) -> None:
        self.context, self.index, self.plan, self.recorder = context, index, plan, recorder
        #: The step's race: a seed of a configuration it put out is recorded without training.
        self.racer = racer
        self.step = context.spec.steps[index]
        self.distributions = dists
        self.seeds = seeds if seeds is not None else context.spec.seed_list
        # The plan's order: the carried configuration first, then each challenger with its seeds side
        # by side, so that trials at once (k >= seeds) train one configuration's seeds together and the
        # race compares them at every evaluation (racing needs two seeds at a point of training).
        self.queue: deque[Training] = deque(plan.to_train)
        self.samples_to_draw = plan.samples_to_draw

    @property
    def study(self) -> optuna.Study:
        return self.recorder.study

    @property
    def carried_key(self) -> ConfigKey:
        return self.plan.carried_key

    def pending(self) -> int:
        """Trainings known to be left (a search step's unsampled configurations included)."""
        return len(self.queue) + self.samples_to_draw * len(self.context.spec.seed_list)

    def next_job(self, adjust: Adjust | None = None) -> tuple[TrialHandle, Job] | None:
        """Start the next trial (RUNNING in the study) and its job, or ``None`` when the step is done."""
        trial = None
        while self.queue and (skip := self._raced_out(self.queue[0])) is not None:
            skipped = self.queue.popleft()
            self.recorder.skip(Stop(RACING, skip, 0), self._attrs_of(skipped, skipped.config), self._params_of(skipped),
                               self.distributions)
        if self.queue:
            training = self.queue.popleft()
        elif self.samples_to_draw > 0:
            # The sampler proposes the configuration; its first seed runs now, the others next.
            trial, values = self.recorder.propose(self.distributions)
            config = configuration(self.plan.carried, values, f"steps[{self.index}].search")
            key = ConfigKey.between(config, self.context.base)
            self.plan.candidates.setdefault(key, config)
            training, *others = (Training(key, configuration(config, {"seed": s}, "trial")) for s in self.seeds)
            self.queue.extendleft(reversed(others))  # its seeds side by side
            self.samples_to_draw -= 1
        else:
            return None
        return self._start(training, adjust, trial)

    def _raced_out(self, training: Training) -> str | None:
        return self.racer.skip_detail(training.key) if self.racer is not None else None

    def _attrs_of(self, training: Training, config: TrainConfig) -> dict[str, Any]:
        ctx, T, objective = self.context, TrialAttr, self.recorder.objective
        return {T.STUDY: self.study.study_name, T.STEP: self.step.name, T.SEED: training.seed,
                T.CONFIG_KEY: training.key.text, T.CONFIG: to_dict(config),
                T.PACKAGE_VERSION: maou.__version__, T.DATASET_HASH: ctx.dataset_hash,
                T.METRIC: objective.metric, T.DIRECTION: objective.direction, T.REDUCE: objective.reduce,
                T.MAX_STEPS: config.budget.total_steps(ctx.train_rows, config.batch_size)}

    def _params_of(self, training: Training) -> dict[str, Any]:
        return trial_params(self.distributions, self.plan.params(training.config))

    def _start(self, training: Training, adjust: Adjust | None, trial: optuna.Trial | None) -> tuple[TrialHandle, Job]:
        config = training.config
        init = config.init_from
        if init is not None and WINNER_OF.match(init):
            config = with_overrides(config, {"init_from": self.context.resolve_init(init)}, "trial")
        if adjust is not None:
            config = adjust(config)
        ctx, spec = self.context, self.context.spec
        attrs = self._attrs_of(training, config)
        handle = self.recorder.start(training, self._params_of(training), self.distributions, attrs, trial)
        checkpoint_dir = spec.runs_path / f"{self.index + 1:02d}-{self.step.name}" / f"trial-{handle.number}"
        max_steps = attrs[TrialAttr.MAX_STEPS]
        handle.max_steps = max_steps
        objective = self.recorder.objective
        return handle, Job(handle.number, config, str(checkpoint_dir), spec.pruning, max_steps, ctx.dataset,
                           (objective.metric, objective.direction))


__all__ = ["Adjust", "StepContext", "StepRun", "open_step"]
