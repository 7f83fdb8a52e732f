"""Racing: each challenger of a step runs against the carried configuration, and stops as soon as it
is significantly worse, so a step decides like its exhaustive grid for far less compute.

A step's trials run in the plan's order: the carried configuration first, then each challenger with
its seeds side by side, so that trials at once (the local executor's workers, Ray) train one
configuration's seeds together and the race compares them at every evaluation; one trial at a time,
a challenger's first seed runs whole (one seed measures no noise) and its later ones are raced. From
``racing.start_fraction`` of the budget on, at every evaluation of a challenger, :class:`Racer`
takes the paired differences to the carried configuration at that point of training over the seeds
that reached it (one-sided paired t, :func:`race`); significantly worse at ``racing.sigmas``, the
challenger stops: its running trials end PRUNED with ``prune_reason: racing`` and the numbers in
``prune_detail``, and its seeds not started yet are recorded PRUNED without training. The carried
configuration never stops. Curves are compared at the same share of the budget (a batch-size grid
under an epochs budget has different step counts), the carried one interpolated linearly. A
challenger with a pruned seed (collapsed, NaN loss) cannot win either: its other seeds stop the same
way (:meth:`Racer.pruned`).

The rule is a pure function of recorded curves, so ``bench/search_cost.py`` replays it on any
recorded storage exactly as a live run applies it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from optuna.trial import TrialState

from maou.sweep.identity import ConfigKey
from maou.sweep.records import TrialRecord
from maou.sweep.run.stats import Paired, alpha_of, paired
from maou.sweep.run.stopping import Running, Stopper
from maou.sweep.spec import Racing
from maou.trainer.result import Stop

RACING = "racing"
#: Shares of the budget closer than this count as the same point of training.
_EPS = 1e-9

Curve = list[tuple[float, float]]  # (share of the budget, objective value), sorted


@dataclass(frozen=True)
class RaceVerdict:
    """A challenger found worse than the carried configuration at a point of training."""

    gain: float
    se: float
    n: int
    p_worse: float
    fraction: float

    def detail(self, step: int) -> str:
        return (f"worse than the carried configuration at {self.fraction:.0%} of the budget (step {step}): "
                f"gain {self.gain:.4g} +- {self.se:.2g} over {self.n} seeds, p {self.p_worse:.3g}")


def worse(test: Paired, sigmas: float) -> bool:
    """A paired comparison says the challenger is significantly worse (one-sided t at ``sigmas``);
    one seed measures no noise and is never worse. Racing stops on it; adaptive seeds rule out on it."""
    if test.n < 2 or test.p is None or test.se is None or not math.isfinite(test.gain):
        return False
    return 1.0 - test.p < alpha_of(sigmas)


def race(challenger: dict[int, float], carried: dict[int, float], sign: float, sigmas: float,
         fraction: float) -> RaceVerdict | None:
    """The verdict when ``challenger`` is significantly worse than ``carried`` on their common seeds
    (:func:`worse`; ``sign`` +1 to maximize), else None."""
    test = paired(challenger, carried, sign)
    if not worse(test, sigmas):
        return None
    assert test.p is not None and test.se is not None
    return RaceVerdict(test.gain, test.se, test.n, 1.0 - test.p, fraction)


def value_at(curve: Curve, fraction: float) -> float | None:
    """The curve's value at ``fraction`` of the budget (linear between its points); None when it has
    not reached that point."""
    if not curve or curve[-1][0] < fraction - _EPS:
        return None
    shares = [f for f, _ in curve]
    i = bisect.bisect_left(shares, fraction - _EPS)
    f1, v1 = curve[i]
    if abs(f1 - fraction) <= _EPS or i == 0:
        return v1
    f0, v0 = curve[i - 1]
    return v0 + (v1 - v0) * (fraction - f0) / (f1 - f0)


@dataclass
class Racer(Stopper):
    """One step's race: every (configuration, seed)'s curve so far, and the challengers stopped.
    As a :class:`~maou.sweep.run.stopping.Stopper`, it races every evaluation of ``metric``."""

    racing: Racing
    carried: ConfigKey
    #: +1 when the objective is maximized, -1 when minimized.
    sign: float
    curves: dict[tuple[ConfigKey, int], Curve] = field(default_factory=dict)
    #: configuration -> why it stopped (the prune detail its trials carry)
    raced: dict[ConfigKey, str] = field(default_factory=dict)
    #: The objective metric the race compares (what :meth:`observe` takes from an evaluation).
    metric: str | None = None

    @classmethod
    def of_trials(cls, racing: Racing, carried: ConfigKey, sign: float, trials: Iterable[TrialRecord],
                  metric: str | None = None) -> Racer:
        """A racer that knows the curves of the step's finished trials (a resumed or extended step)."""
        racer = cls(racing, carried, sign, metric=metric)
        for t in trials:
            if t.finished and t.max_steps:
                for step, value in sorted(t.intermediate_values.items()):
                    racer.record(t.key, t.seed, step, t.max_steps, value)
            if t.prune_reason == RACING and t.key != carried:
                racer.raced.setdefault(t.key, t.prune_detail or RACING)
            elif t.state == TrialState.PRUNED:
                racer.pruned(t.key, t.seed, t.prune_reason or "pruned", t.prune_step)
        return racer

    def pruned(self, key: ConfigKey, seed: int, reason: str, step: int | None) -> None:
        """A trial of ``key`` ended PRUNED (collapsed, NaN loss, Optuna's pruner): a configuration
        with a pruned seed cannot win (it enters Holm's count at p = 1), so a challenger's other
        seeds stop at their next evaluation and its seeds not started are not run."""
        if not self.racing.enabled or key == self.carried or key in self.raced:
            return
        at = f" at step {step}" if step else ""
        self.raced[key] = f"out of the race: seed {seed} was pruned ({reason}){at}; a configuration with a pruned " \
                          "seed cannot win"

    # -- the Stopper
    def observe(self, trial: Running, step: int, metrics: dict[str, float]) -> Stop | None:
        """A running trial's evaluation: its point on the curves, then its race (after step 0)."""
        value = metrics.get(self.metric) if self.metric is not None else None
        if step <= 0 or value is None or trial.key is None or trial.seed is None:
            return None
        self.record(trial.key, trial.seed, step, trial.max_steps, value)
        return self.check(trial.key, step, trial.max_steps)

    def finished(self, trial: Running, stop: Stop | None) -> None:
        """A trial pruned by another stopper (collapsed, Optuna's pruner) puts its configuration out."""
        if stop is not None and stop.reason != RACING and trial.key is not None and trial.seed is not None:
            self.pruned(trial.key, trial.seed, stop.reason, stop.step)

    # -- the race
    def record(self, key: ConfigKey, seed: int, step: int, max_steps: int, value: float) -> None:
        """One evaluation's point on the curve of ``(key, seed)``."""
        if step <= 0 or max_steps <= 0 or not math.isfinite(value):
            return
        curve = self.curves.setdefault((key, seed), [])
        point = (step / max_steps, float(value))
        if curve and point[0] <= curve[-1][0] + _EPS:  # a retried worker reports its steps again
            curve[:] = [p for p in curve if p[0] < point[0] - _EPS]
        curve.append(point)

    def check(self, key: ConfigKey, step: int, max_steps: int) -> Stop | None:
        """A challenger's trial at ``step``: the stop when its configuration is (or now becomes) raced out."""
        if not self.racing.enabled or key == self.carried:
            return None
        if key in self.raced:
            return Stop(RACING, self.raced[key], step)
        fraction = step / max_steps if max_steps else 0.0
        if fraction < self.racing.start_fraction - _EPS:
            return None
        verdict = self.verdict(key, fraction)
        if verdict is None:
            return None
        self.raced[key] = verdict.detail(step)
        return Stop(RACING, self.raced[key], step)

    def verdict(self, key: ConfigKey, fraction: float) -> RaceVerdict | None:
        """The race of ``key`` against the carried configuration at ``fraction`` of the budget."""
        mine = self._values(key, fraction)
        theirs = self._values(self.carried, fraction)
        return race(mine, theirs, self.sign, self.racing.sigmas, fraction)

    def _values(self, key: ConfigKey, fraction: float) -> dict[int, float]:
        out = {}
        for (k, seed), curve in self.curves.items():
            if k == key and (value := value_at(curve, fraction)) is not None:
                out[seed] = value
        return out

    def skip_detail(self, key: ConfigKey) -> str | None:
        """Why a seed of ``key`` not started yet need not run (None: it must)."""
        if not self.racing.enabled or key not in self.raced:
            return None
        return f"not started: {self.raced[key]}"


__all__ = ["RACING", "RaceVerdict", "Racer", "race", "value_at", "worse"]
