"""Read a results store: status, selections and reductions. No Dask cluster needed."""

from __future__ import annotations

import json

import dask
import numpy as np
import xarray as xr

from . import plan
from .cliopts import dumps
from .errors import UserError
from .schema import TOGETHER
from .spec import RATIO_RTOL
from .store import NAN_ALLOWED, done_mask, open_results
from .verify import check_nan, nan_cells, reading

REDUCERS = ("mean", "median", "std", "min", "max", "count")


def status(path) -> dict:
    """Spec summary, blocks done of total, and provenance of a store (a path or StoreLocation)."""
    ds = open_results(path)  # checks that it is a results store
    attrs = ds.attrs
    done = done_mask(path)  # a damaged done chunk counts as not done, as in `nnsweep run`
    spb = int(attrs["seeds_per_block"])
    blocks_done, total = plan.blocks_done(done, spb)
    starts = plan.block_starts(done.shape[2], spb)
    spec = json.loads(attrs["spec"])
    return {
        "store": str(path),
        "name": spec.get("name", ""),
        "spec_hash": attrs["spec_hash"],
        "blocks_done": blocks_done,
        "blocks_total": total,
        "seeds_per_block": spb,
        "grid": spec["grid"],
        "network": spec["network"],
        "noise": spec["noise"],
        "random_seed": spec["random_seed"],
        "created": attrs["created"],
        "versions": json.loads(attrs["versions"]),
        "compute_seconds": _compute_seconds(path, ds, starts),
        # one entry per growth in place: when, the spec before it (and its hash), what grew
        "history": json.loads(attrs.get("history", "[]")),
    }


def _compute_seconds(path, ds: xr.Dataset, starts: list[int]) -> float:
    with reading(path):
        return float(np.nansum(ds["wall_time"].values[:, :, starts]))


def _parse_sel(ds: xr.Dataset, sel: tuple[str, ...]) -> dict:
    out: dict[str, list] = {}
    for item in sel:
        dim, _, raw = item.partition("=")
        if dim not in ds.dims or not raw:
            raise UserError(f"--sel {item!r} is not allowed; expected DIM=VALUE with DIM one of "
                            f"{', '.join(map(str, ds.dims))}, e.g. --sel ratio=0.1.")
        coord = ds[dim].values
        try:  # the together cells (noise in every layer at once) by the name the spec gives them, too
            value = float(TOGETHER if dim == "layer" and raw.strip().lower() == "together" else raw)
        except ValueError:
            value = np.nan
        match = np.flatnonzero(np.isclose(coord, value, rtol=RATIO_RTOL, atol=0))
        if match.size == 0:
            raise UserError(f"--sel {item!r}: {raw} is not a value of {dim}; the store holds "
                            f"{dim} = {', '.join(map(str, coord.tolist()))}.")
        values = out.setdefault(dim, [])
        if coord[match[0]].item() not in values:
            values.append(coord[match[0]].item())
    return out


def query(path, sel: tuple[str, ...] = (), var: str = "rel_change", reduce: str | None = None,
          over: tuple[str, ...] = ()) -> xr.DataArray:
    """Select and reduce one variable of a store (computed).

    The selection is checked on the way: a done block whose values are missing
    or NaN where results are finite, or whose chunks fail their checksum, is
    named in the error instead of being averaged away.

    Args:
        path: the store.
        sel: ``DIM=VALUE`` strings; a dimension given more than once keeps each value.
        var: a variable of the store (``rel_change`` is derived).
        reduce: one of :data:`REDUCERS`, applied over ``over`` (default: seed, input and draw).
        over: dimensions to reduce over.

    Raises:
        UserError: an unknown variable, dimension, value or reducer.
        DamagedStore: the selection reads a damaged block.
    """
    ds = open_results(path)
    if var not in ds.data_vars:
        raise UserError(f"--var {var!r} is not allowed; expected one of {', '.join(sorted(ds.data_vars))}.")
    selection = _parse_sel(ds, sel)
    lacking = [d for d in selection if d not in ds[var].dims]
    if lacking:
        raise UserError(f"--sel {lacking[0]}=...: {var} has no {lacking[0]} dimension; it has "
                        f"{', '.join(ds[var].dims)}. Drop that --sel or choose another --var.")
    da = ds[var].sel(selection)
    if reduce is None:
        if over:
            raise UserError("--over needs --reduce, e.g. --reduce mean --over seed,input,draw.")
        return _checked(path, ds, da, da)
    if reduce not in REDUCERS:
        raise UserError(f"--reduce {reduce!r} is not allowed; expected one of {', '.join(REDUCERS)}.")
    dims = tuple(dict.fromkeys(over)) or tuple(d for d in ("seed", "input", "draw") if d in da.dims)
    bad = [d for d in dims if d not in da.dims]
    if bad:
        raise UserError(f"--over {bad[0]!r} is not allowed; {var} has the dimensions {', '.join(da.dims)}.")
    return _checked(path, ds, da, getattr(da, reduce)(dim=list(dims)))


def tidy_rows(path, sel: tuple[str, ...] = (), rows: str = "cell"):
    """Every variable of the selection as one row per cell or per draw (:func:`pipeline.tidy.table`).

    The selection is checked for damaged blocks first, as :func:`query` checks it.
    """
    from .tidy import table

    ds = open_results(path)
    sub = ds.sel(_parse_sel(ds, sel))
    _checked(path, ds, sub["delta_norm"], sub["delta_norm"])
    with reading(path):
        return table(sub.compute(), rows)


def _checked(path, ds: xr.Dataset, selected: xr.DataArray, result: xr.DataArray) -> xr.DataArray:
    """``result`` computed in the same pass that checks ``selected`` for damaged blocks.

    Variables that are NaN by design (:data:`pipeline.store.NAN_ALLOWED`) are checked
    for unreadable chunks only.
    """
    with reading(path):
        if selected.name in NAN_ALLOWED:
            return result.compute()
        result, bad = dask.compute(result, nan_cells(selected, ds["done"]))
    check_nan(path, bad)
    return result


def to_text(da: xr.DataArray, fmt: str) -> str:
    """A DataArray as a table, CSV or JSON records (NaN cells dropped)."""
    name = da.name or "value"
    df = da.compute().to_dataframe(name=name)[[name]].dropna() if da.dims else None
    if df is None:
        value = float(da.compute())
        return dumps({name: value}) if fmt == "json" else f"{name}\n{value}"
    if fmt == "csv":
        return df.to_csv()
    if fmt == "json":  # json.dumps keeps every digit (pandas' to_json rounds to 10)
        return dumps(df.reset_index().to_dict(orient="records"))
    return df.to_string()
