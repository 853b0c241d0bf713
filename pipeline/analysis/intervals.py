"""Confidence intervals shared by ``nnsweep estimate`` and the report.

The t quantile of a small sample is computed here, exactly, rather than by
scipy: importing scipy costs about 0.3 s, most of a small ``nnsweep estimate``.
Beyond :data:`SERIES_MAX_DF` degrees of freedom (a sample that took far longer
to draw than that) scipy computes it.

>>> lo, hi = t_interval([1.0, 2.0, 3.0])
>>> round(lo, 4), round(hi, 4)
(-0.4841, 4.4841)
>>> t_interval([1.0]) is None
True
>>> round(t_quantile(0.95, 1), 4), round(t_quantile(0.95, 30), 4)
(12.7062, 2.0423)
"""

from __future__ import annotations

import math

import numpy as np

SERIES_MAX_DF = 10_000  # the series below has df / 2 terms: about a millisecond here


def t_interval(x, level: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean of the finite values of ``x``: mean +- t(n - 1) * sem.

    Args:
        x: one value per independent unit (a network), NaN for a missing one.
        level: the confidence level.

    Returns:
        (low, high), or None when there are fewer than two values or they are all equal
        (the interval is then undefined, not a point).
    """
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 2 or np.ptp(x) == 0:
        return None
    half = t_quantile(level, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)  # t quantile * standard error
    return float(x.mean() - half), float(x.mean() + half)


def t_quantile(level: float, df: int) -> float:
    """The t > 0 with P(|T| <= t) = ``level`` for Student's T with ``df`` degrees of freedom.

    For integer df, P(|T| <= sqrt(df) tan theta) is a finite sum of powers of
    cos theta (Abramowitz and Stegun 26.7.3-4), increasing in theta on
    (0, pi/2): bisection on theta finds the quantile to rounding.
    tests/test_intervals.py checks it against scipy.stats.t.ppf.
    """
    if df > SERIES_MAX_DF:
        from scipy.special import stdtrit

        return float(stdtrit(df, (1 + level) / 2))
    probability = _two_sided_probability(df)
    lo, hi = 0.0, math.pi / 2
    while (mid := (lo + hi) / 2) not in (lo, hi):
        if probability(mid) < level:
            lo = mid
        else:
            hi = mid
    return math.sqrt(df) * math.tan(mid)


def _two_sided_probability(df: int):
    """theta -> P(|T| <= sqrt(df) tan theta) for Student's T with integer ``df``.

    With c = cos(theta)^2, even df (A&S 26.7.4):
    sin(theta) (1 + 1/2 c + (1 3)/(2 4) c^2 + ... + (1 3 .. df-3)/(2 4 .. df-2) c^(df/2-1));
    odd df (26.7.3): 2/pi (theta + sin(theta) cos(theta) (1 + 2/3 c + ... + (2 4 .. df-3)/(3 5 .. df-2)
    c^((df-3)/2))). The powers of c are taken as exp(j log1p(-sin^2)): c itself, rounded, would
    err by df/2 roundings in c^(df/2).
    """
    even = df % 2 == 0
    j = np.arange(1, df // 2) if even else np.arange(1, (df - 1) // 2)
    log_coefficients = np.cumsum(np.log1p(-1 / (2 * j if even else 2 * j + 1)))

    def probability(theta: float) -> float:
        s = math.sin(theta)
        series = 1.0 + np.exp(log_coefficients + j * math.log1p(-s * s)).sum()
        if even:
            return s * series
        return 2 / math.pi * (theta + (s * math.cos(theta) * series if df > 1 else 0.0))

    return probability
