"""Confidence intervals shared by ``nnsweep estimate`` and the report.

>>> lo, hi = t_interval([1.0, 2.0, 3.0])
>>> round(lo, 4), round(hi, 4)
(-0.4841, 4.4841)
>>> t_interval([1.0]) is None
True
"""

from __future__ import annotations

import numpy as np
from scipy import stats


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
    lo, hi = stats.t.interval(level, x.size - 1, loc=x.mean(), scale=stats.sem(x))
    return float(lo), float(hi)
