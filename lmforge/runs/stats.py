"""The statistics that say whether a setting helps: a mean with its 95% interval over seeds,
Welch's t-test between two settings, and the tokens a loss curve needs to reach a target.

Seeds are few (3 to 5), so intervals use Student's t distribution, not the normal one: with 3
seeds the 95% interval is 4.3 standard errors wide on each side, not 1.96. The t quantiles and
the test come from ``scipy.stats``, imported when first needed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values with the half-width of its two-sided interval (None for one value)."""

    mean: float
    half_width: float | None
    n: int

    def to_dict(self) -> dict[str, float | int | None]:
        return {"mean": self.mean, "half_width": self.half_width, "n": self.n}


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval | None:
    """The mean of ``values`` and the half-width of its ``confidence`` interval,
    ``t(1 - (1 - confidence) / 2, n - 1) * s / sqrt(n)``; None for no values."""
    values = [float(v) for v in values]
    if not values:
        return None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Interval(mean, None, 1)
    from scipy.stats import t

    sem = statistics.stdev(values) / math.sqrt(len(values))
    quantile = float(t.ppf(1 - (1 - confidence) / 2, len(values) - 1))
    return Interval(mean, quantile * sem, len(values))


def welch_p_value(a: Sequence[float], b: Sequence[float]) -> float | None:
    """The two-sided p-value of Welch's t-test (unequal variances) that ``a`` and ``b`` have
    the same mean; None when either has fewer than two values or both have no spread."""
    if len(a) < 2 or len(b) < 2:
        return None
    if statistics.stdev(a) == 0 and statistics.stdev(b) == 0:
        return None
    from scipy.stats import ttest_ind

    return float(ttest_ind(list(a), list(b), equal_var=False).pvalue)


def value_at(curve: Sequence[tuple[float, float]], x: float) -> float | None:
    """The curve's ``y`` at ``x`` by linear interpolation between its points (sorted by x);
    None outside the points' range."""
    if not curve or x < curve[0][0] or x > curve[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(curve, curve[1:], strict=False):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return curve[-1][1]


def first_reach(curve: Sequence[tuple[float, float]], target: float) -> float | None:
    """The first ``x`` at which the curve (``(tokens, loss)`` points sorted by tokens) is at or
    below ``target``, by linear interpolation between the evaluation before and the first one
    that reaches it; None when it never does. A first evaluation already below the target gives
    its own ``x``: nothing is known about the curve before it."""
    previous = None
    for x, y in curve:
        if y <= target:
            if previous is None or previous[1] == y:
                return float(x)
            x0, y0 = previous
            return float(x0 + (x - x0) * (y0 - target) / (y0 - y))
        previous = (x, y)
    return None
