"""What every plot of the report shares: the backend, the axis labels, colours and the page layout.

The bottom of the analysis layers' plotting: :mod:`.figures`, :mod:`.linear` and :mod:`.given`
draw with these helpers and import nothing from each other. Panels are laid out in a grid of at
most :data:`MAX_COLUMNS` columns, so that a figure fits the width of a page.

>>> rows_columns(7)
(3, 3)
>>> rows_columns(2)
(1, 2)
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # files only, never a window; must precede the pyplot import

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .intervals import t_interval  # noqa: E402

R_LABEL = r"$R = \|v - v^*\| \, / \, \|v\|$"
RATIO_LABEL = r"noise ratio $r = \|\eta\| \, / \, \|W_i\|$"
BANDS = ((0.1, 0.9, 0.15), (0.25, 0.75, 0.3))  # quantiles over networks and their shading
MAX_COLUMNS = 3  # panels per row: three fit the width of a page
PANEL = (4.6, 3.9)  # inches per panel (width, height)


def colors(n: int):
    """``n`` colours of one colour map, dark to light (so neighbouring lines stay apart)."""
    return plt.cm.viridis(np.linspace(0.0, 0.85, max(n, 1)))


def rows_columns(n: int, max_columns: int = MAX_COLUMNS) -> tuple[int, int]:
    """The grid (rows, columns) of ``n`` panels with at most ``max_columns`` per row."""
    columns = max(1, min(n, max_columns))
    return math.ceil(max(n, 1) / columns), columns


def panels(n: int, width: float = PANEL[0], height: float = PANEL[1]):
    """A figure of ``n`` panels in rows of at most :data:`MAX_COLUMNS`; returns (figure, list of n axes).

    The cells of the last row that no panel needs are removed, so ``figure.axes`` holds the n panels.
    """
    nrows, ncols = rows_columns(n)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                             layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[max(n, 1):]:
        ax.remove()
    return fig, flat[:max(n, 1)]


def grid(nrows: int, ncols: int, width: float = 3.9, height: float = 3.2):
    """A figure of nrows x ncols panels (ncols at most :data:`MAX_COLUMNS` by the callers' choice)."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                             layout="constrained")
    return fig, axes


def log_depth_axis(ax, Ls) -> None:
    """A log x axis ticked at the depths L of the store."""
    ax.set_xscale("log")
    ax.set_xticks(Ls, [str(L) for L in Ls])
    ax.minorticks_off()


def pick(values, n: int) -> list:
    """At most n of ``values``, evenly spread and keeping both ends (for grids of panels)."""
    values = list(values)
    if len(values) <= n:
        return values
    return [values[j] for j in sorted(set(np.linspace(0, len(values) - 1, n).round().astype(int)))]


def blank(ax, text: str) -> None:
    """An empty panel saying why it is empty."""
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", transform=ax.transAxes)


def bands(ax, x, q, color, label):
    """Quantile bands (10-90%, 25-75%) and the median of per-network values q (quantile, x)."""
    qs = list(q["quantile"].values)
    for lo, hi, alpha in BANDS:
        if lo in qs and hi in qs:
            ax.fill_between(x, q.sel(quantile=lo), q.sel(quantile=hi), color=color, alpha=alpha, lw=0)
    ax.plot(x, q.sel(quantile=0.5), "o-", color=color, ms=4, label=label)


def mean_interval(units: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and 95% t-interval over the last axis of ``units`` (one row of unit values per x).

    Returns (mean, low, high), NaN where the interval is undefined (fewer than two values).
    """
    units = np.asarray(units, dtype=float)
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(units).sum(axis=-1)
        mean = np.where(finite > 0, np.nansum(units, axis=-1) / np.maximum(finite, 1), np.nan)
    ci = np.array([t_interval(u) or (np.nan, np.nan) for u in units.reshape(-1, units.shape[-1])])
    return mean, ci[:, 0].reshape(mean.shape), ci[:, 1].reshape(mean.shape)


def line_with_interval(ax, x, units, fmt: str, color, label: str, **kwargs):
    """The mean over units (last axis) against x with its 95% t-interval shaded; returns the Line2D.

    The shading is labelled ``"_ci " + label`` (a leading underscore keeps it out of legends), so a
    reader or a test can find the interval of each line.
    """
    mean, lo, hi = mean_interval(units)
    (line,) = ax.plot(x, mean, fmt, color=color, label=label, **kwargs)
    if np.isfinite(lo).any():
        ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0, label=f"_ci {label}")
    return line
