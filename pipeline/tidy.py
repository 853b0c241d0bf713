"""Results as one tidy table: a row per cell (L, m, ratio, layer) or per draw, a column per store variable.

What ``nnsweep estimate --format csv``, ``nnsweep query --rows`` and ``ds.nnsweep.cells()`` print, so that
pandas or seaborn plot it without reshaping: ``sns.lineplot(df, x="ratio", y="rel_change", hue="layer")``.

Every column is named as the store's variable it comes from (docs/store.md), averaged over the
dimensions the row does not keep: a cell row averages over seed, input and draw (each variable over
those of them it has), a draw row over input only. ``rel_change_ci95_low`` and ``..._high`` bound the
mean of ``rel_change`` with a 95% Student-t interval over the independent units that ``nnsweep
estimate`` uses: noise draws for one network, networks (seeds) for several. Cells that do not exist
(layer > L) are left out.

>>> import numpy as np, xarray as xr
>>> ds = xr.Dataset({"delta_norm": (("ratio", "layer", "draw"), np.arange(8.0).reshape(2, 2, 2))},
...                 coords={"ratio": [0.1, 0.2], "layer": [1, 2], "draw": [0, 1]})
>>> table(ds, rows="cell").to_dict("list")
{'ratio': [0.1, 0.1, 0.2, 0.2], 'layer': [1, 2, 1, 2], 'delta_norm': [0.5, 2.5, 4.5, 6.5]}
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from .analysis.intervals import t_interval
from .cliopts import dumps

ROWS = ("cell", "draw")
KEEP = {"cell": ("L", "m", "ratio", "layer"), "draw": ("L", "m", "ratio", "layer", "seed", "draw")}
NOT_RESULTS = ("done", "wall_time")  # bookkeeping, not measurements


def _units_dim(ds: xr.Dataset) -> str:
    """``draw`` when the data set is one network (one seed), else ``seed``: the interval's units."""
    return "draw" if ds.sizes.get("seed", 1) == 1 else "seed"


def _ci(ds: xr.Dataset) -> xr.Dataset:
    """The 95% interval of the mean of rel_change in every cell, over the units of :func:`_units_dim`."""
    unit = _units_dim(ds)
    rel = ds["rel_change"]
    per_unit = rel.mean([d for d in ("seed", "input", "draw") if d in rel.dims and d != unit])

    def bounds(x: np.ndarray) -> np.ndarray:
        ci = t_interval(x)
        return np.array(ci if ci is not None else (np.nan, np.nan))

    both = xr.apply_ufunc(bounds, per_unit, input_core_dims=[[unit]], output_core_dims=[["bound_"]],
                          vectorize=True)
    return xr.Dataset({"rel_change_ci95_low": both.isel(bound_=0), "rel_change_ci95_high": both.isel(bound_=1)})


def table(ds: xr.Dataset, rows: str = "cell") -> pd.DataFrame:
    """The results of ``ds`` (a store's Dataset, or a selection of it) as one row per cell or per draw.

    Args:
        ds: as :func:`pipeline.open_results` or :func:`pipeline.sensitivity` give it (``rel_change`` included).
        rows: ``cell`` (one row per L, m, ratio, layer) or ``draw`` (one per L, m, ratio, layer, seed, draw).

    Returns:
        A DataFrame whose columns are the kept coordinates, then the store's variables, then (cell rows
        with ``rel_change``) ``rel_change_ci95_low`` and ``rel_change_ci95_high``.
    """
    keep = [d for d in KEEP[rows] if d in ds.dims]
    names = [n for n in ds.data_vars if n not in NOT_RESULTS]
    out = xr.Dataset({n: ds[n].mean([d for d in ds[n].dims if d not in keep]) for n in names})
    if rows == "cell" and "rel_change" in ds and "draw" in ds.dims:
        out = out.merge(_ci(ds.compute()))
    if not keep:
        return pd.DataFrame([{n: float(out[n]) for n in out.data_vars}])
    df = out.compute().to_dataframe(dim_order=keep).reset_index()
    first = [n for n in ("delta_norm", "rel_change") if n in df]
    df = df[keep + first + [c for c in df.columns if c not in keep and c not in first]]
    return df.dropna(subset=first[:1]).reset_index(drop=True) if first else df


def render(df: pd.DataFrame, fmt: str) -> str:
    """The rows as CSV (every digit), JSON records (non-finite numbers as null) or a text table."""
    if fmt == "csv":
        return df.to_csv(index=False, float_format="%.17g").rstrip("\n")
    if fmt == "json":
        return dumps(df.to_dict(orient="records"))
    return df.to_string(index=False)
