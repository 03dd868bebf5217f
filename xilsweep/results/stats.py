"""Intervals and verdicts over seeds: a mean with its 95% t-interval (scipy.stats), the
difference of two settings paired by seed (the jobs of one seed share the confounded
model and the pool, so the seed's own variation cancels), and the verdict a reader
takes from it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """The mean of ``n`` values and its t-interval (``low``, ``high``: None below two values)."""

    mean: float
    n: int
    low: float | None = None
    high: float | None = None


def t_interval(values) -> Interval | None:
    """Mean and 95% t-interval of ``values`` (None and NaN left out); None without a value.
    Equal values give the interval [mean, mean]."""
    values = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None
    mean, n = sum(values) / len(values), len(values)
    if n < 2:
        return Interval(mean, n)
    sem = stats.sem(values)
    if sem == 0:  # scipy gives NaN for a zero scale
        return Interval(mean, n, mean, mean)
    low, high = stats.t.interval(LEVEL, n - 1, loc=mean, scale=sem)
    return Interval(mean, n, float(low), float(high))


def paired(first: dict, second: dict) -> Interval | None:
    """``first - second`` over the seeds both have a value for (``seed -> value``)."""
    seeds = [s for s in first if s in second and first[s] is not None and second[s] is not None]
    return t_interval([first[s] - second[s] for s in seeds])


def verdict(interval: Interval, higher_is_better: bool = True) -> str:
    """``ahead`` / ``behind`` where the interval excludes 0, else ``not distinguishable``; with the seeds."""
    seeds = f"({interval.n} seed{'s' if interval.n != 1 else ''})"
    if interval.low is None:
        return f"not distinguishable {seeds}"
    if interval.low > 0 or interval.high < 0:
        better = (interval.low > 0) == higher_is_better
        return f"{'ahead' if better else 'behind'} {seeds}"
    return f"not distinguishable {seeds}"
