"""The statistics of a step's decision: paired per-seed differences, Student's t, Holm's correction.

Every configuration of a step trains with the same seeds, so a challenger is compared with the
carried configuration seed by seed: ``d_s = sign * (challenger_s - carried_s)`` (positive is
better), with mean ``gain``, standard error ``se = sd(d) / sqrt(n)`` and ``t = gain / se`` on
``n - 1`` degrees of freedom. The one-sided p-value is ``P(T >= t)``.

Choosing the best of ``k`` challengers would adopt noise ``k`` times as often as one comparison
does, so the p-values go through Holm's step-down procedure at level ``alpha``: sorted
ascending, the ``i``-th (from 1) is significant when it and every smaller one pass
``p <= alpha / (k - i + 1)``. Holm controls the family-wise error rate at ``alpha`` for any
dependence between the comparisons (they share the carried configuration).

``alpha`` is the one-sided normal tail of ``selection.noise_sigmas``: 1 sigma is 0.159, 2 sigmas
0.023. With one seed the noise cannot be measured: no p-value, and only ``selection.min_margin``
protects the decision.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def alpha_of(noise_sigmas: float) -> float:
    """The one-sided tail probability of ``noise_sigmas`` standard normal deviations."""
    return 1.0 - statistics.NormalDist().cdf(noise_sigmas)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                          -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """One-sided p-value ``P(T >= t)`` of Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_critical(p: float, df: float) -> float:
    """The ``t`` with ``P(T >= t) = p`` (bisection; ``p`` in (0, 0.5])."""
    low, high = 0.0, 1.0
    while t_sf(high, df) > p:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        low, high = (mid, high) if t_sf(mid, df) > p else (low, mid)
    return (low + high) / 2.0


@dataclass(frozen=True)
class Paired:
    """A challenger against the carried configuration on their common seeds (gain: better > 0)."""

    n: int
    gain: float
    se: float | None
    t: float | None
    p: float | None


def paired(challenger: dict[int, float], carried: dict[int, float], sign: float) -> Paired:
    """Paired comparison on the seeds both have (``sign`` +1 to maximize, -1 to minimize)."""
    seeds = sorted(set(challenger) & set(carried))
    diffs = [sign * (challenger[s] - carried[s]) for s in seeds]
    if not diffs:
        return Paired(0, math.nan, None, None, None)
    gain = statistics.fmean(diffs)
    if len(diffs) < 2:
        return Paired(1, gain, None, None, None)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    if se == 0.0:  # every seed moved by the same amount: no noise at all
        t = math.inf if gain > 0 else (-math.inf if gain < 0 else 0.0)
    else:
        t = gain / se
    return Paired(len(diffs), gain, se, t, t_sf(t, len(diffs) - 1) if gain or se else 0.5)


def holm(p_values: Sequence[float | None], alpha: float) -> tuple[list[bool], list[float | None]]:
    """Holm's step-down procedure: which p-values are significant, and the level each was held to."""
    order = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    significant = [False] * len(p_values)
    levels: list[float | None] = [None] * len(p_values)
    k, rejecting = len(order), True
    for rank, (p, i) in enumerate(order):
        level = alpha / (k - rank)
        levels[i] = level
        rejecting = rejecting and p <= level
        significant[i] = rejecting
    return significant, levels


def critical_gain(se: float | None, n: int, level: float | None) -> float | None:
    """The gain a comparison needed to pass its Holm level: ``t_crit(level, n - 1) * se``."""
    if se is None or level is None or n < 2:
        return None
    return t_critical(min(level, 0.5), n - 1) * se


__all__ = ["Paired", "alpha_of", "critical_gain", "holm", "incomplete_beta", "paired", "t_critical", "t_sf"]
