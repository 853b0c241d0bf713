"""The report's section on each network's own answer: the linear answer and the worst direction.

Every number here is a direct reduction of the store's variables over the blocks that are done,
read through the store's integrity check (:meth:`pipeline.analysis.summaries.Results.compute`), so
tests can recompute it with xarray and a damaged block is named, never averaged around. Relative
quantities divide by ||v|| of the same input.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from ..jsonout import num
from .recorded import label
from .summaries import CELL, Results

LINEAR_READS = ("delta_norm", "output_norm", "linear_rms", "worst_linear", "worst_realised", "bound")


def done_dataset(results: Results) -> xr.Dataset:
    """The store with every block that is not done masked to NaN (so means run over done blocks only); lazy."""
    return results.ds.where(results.done_mark)


def cell_mean(da: xr.DataArray, keep=CELL) -> xr.DataArray:
    """Lazily, the mean over every dimension but ``keep`` (all-NaN cells, layer > L, stay NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return da.mean([d for d in da.dims if d not in keep])


def linear_summary(results: Results, progress: bool = False) -> xr.Dataset:
    """Per (L, m, ratio, layer): the Monte Carlo E R and sqrt(E R^2), and beside them, relative to ||v||,
    the linear prediction (RMS over inputs and networks of linear_rms / ||v||), the worst direction
    (linear and realised, means) and the global bound (mean), and the nonlinearity
    sqrt(E R^2) / linear prediction. Computed in one pass over the done blocks, checked.

    Raises:
        DamagedStore: a done block whose chunk of any of :data:`LINEAR_READS` is missing or damaged.
    """
    ds = done_dataset(results)
    v = ds["output_norm"]
    rel = ds["delta_norm"] / v
    lazy = xr.Dataset({
        "mean": cell_mean(rel),
        "sq": cell_mean(rel**2),
        "linear_sq": cell_mean((ds["linear_rms"] / v) ** 2),
        "worst_linear": cell_mean(ds["worst_linear"] / v),
        "worst_realised": cell_mean(ds["worst_realised"] / v),
        "bound": cell_mean(ds["bound"] / v),
    })
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells: layer > L
        (s,) = results.compute((lazy,), LINEAR_READS, progress)
    out = xr.Dataset({"mean": s["mean"], "rms": np.sqrt(s["sq"]), "linear_rms": np.sqrt(s["linear_sq"]),
                      "worst_linear": s["worst_linear"], "worst_realised": s["worst_realised"], "bound": s["bound"]})
    out["nonlinearity"] = out["rms"] / out["linear_rms"]
    return out


def linear_table(summary: xr.Dataset, ratio: float) -> list[dict]:
    """One row per (L, m, layer) with data at ``ratio``, with the ratios between the columns."""
    s = summary.sel(ratio=ratio)
    rows = []
    for L in s.L.values:
        for m in s.m.values:
            for i in s.layer.values:
                c = s.sel(L=L, m=m, layer=i)
                if i > L or not np.isfinite(float(c["mean"])):
                    continue
                row = {"L": int(L), "m": m.item(), "layer": int(i),
                       **{v: num(c[v]) for v in ("mean", "rms", "linear_rms", "worst_linear", "worst_realised",
                                                   "bound", "nonlinearity")}}
                row["worst_over_rms"] = _ratio(row["worst_realised"], row["rms"])
                row["bound_over_worst"] = _ratio(row["bound"], row["worst_realised"])
                rows.append(row)
    return rows


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def cell_text(x: float | None) -> str:
    """A number of a markdown table, or "-" for none."""
    return f"{x:.3g}" if x is not None else "-"


def linear_lines(rows: list[dict], ratio: float) -> list[str]:
    """The markdown table of :func:`linear_table`."""
    lines = [f"At r = {ratio:g}, per perturbed layer, all relative to ||v||: the Monte Carlo mean and root mean "
             "square of R; the network's own first-order prediction of that RMS (linear_rms, exact as r -> 0; "
             "'-' for spectral scaling, which has no closed form); the worst noise direction of the same size, "
             "to first order and applied through the network; the global Lipschitz bound; and the gains: "
             "worst / RMS (what an adversary gains over random noise) and bound / worst.", "",
             "| L | m | i | E R | RMS R | linear RMS | worst (linear) | worst (realised) | bound | worst / RMS "
             "| bound / worst |", "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['L']} | {label(r['m'])} | {r['layer']} | " + " | ".join(
            cell_text(r[k]) for k in ("mean", "rms", "linear_rms", "worst_linear", "worst_realised", "bound",
                                  "worst_over_rms", "bound_over_worst")) + " |")
    return lines
