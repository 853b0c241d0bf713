"""JSON output helpers shared by every command that prints numbers (a leaf: imports numpy only).

>>> num(0.5), num(float("nan")), num(None), num(np.float32(2.0))
(0.5, None, None, 2.0)
"""

from __future__ import annotations

import numpy as np


def num(x) -> float | None:
    """A float for JSON: None, NaN and the infinities become None (strict JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None
