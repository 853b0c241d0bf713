"""Read a results store once, through the integrity check, and reduce it to per-unit summaries.

:func:`open_store` opens a store once per command (:class:`Results`); every reduction of the
analysis computes through :meth:`Results.compute`, which reads the store's variables through the
same check as ``nnsweep query`` and ``nnsweep verify`` (:func:`pipeline.verify.reading`,
:func:`~pipeline.verify.nan_cells`, :func:`~pipeline.verify.check_nan`): a done block whose chunk
of any variable it reads is missing, fails its checksum or holds NaN where results are finite is
named in the error (exit 2), never averaged around.

:func:`load` reduces the store, chunk by chunk through xarray/dask, to per-unit summaries: for
every (L, m, ratio, layer, seed) the mean over the unit's inputs and noise draws of R, R^2,
log R, (log R)^2 and ||v - v*||, and the looseness of the bound (bound / that mean). A unit is a
network, or, when a store holds one network per (L, m), one noise draw of it (each draw is a
perturbed network applied to every input): see :mod:`.recorded`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import sys

import numpy as np
import xarray as xr

from .. import plan, verify
from ..errors import UserError
from ..store import NAN_ALLOWED, StoreLocation, as_location, done_mask, open_results
from ..schema import TOGETHER
from .recorded import Networks

CELL = ("L", "m", "ratio", "layer")
# the variables the per-unit summaries read
SUMMARY_READS = ("delta_norm", "output_norm", "bound")


@dataclasses.dataclass(frozen=True)
class Results:
    """A results store opened once: its lazy Dataset, done mark, recorded spec and coverage."""

    loc: StoreLocation
    ds: xr.Dataset
    done: np.ndarray  # (L, m, seed); a damaged done chunk counts as not done, as in `nnsweep run`
    spec: dict
    coverage: dict

    @property
    def path(self) -> str:
        return str(self.loc)

    @functools.cached_property
    def networks(self) -> Networks:
        return Networks.from_spec(self.spec)

    @property
    def done_mark(self) -> xr.DataArray:
        """The done mark as a DataArray over the store's (L, m, seed)."""
        return xr.DataArray(self.done, dims=("L", "m", "seed"), coords={d: self.ds[d] for d in ("L", "m", "seed")})

    def checks(self, reads) -> xr.DataArray:
        """Lazily over (L, m, seed): a done block where a variable of ``reads`` is NaN though it must be
        finite (a missing chunk reads as NaN). The variables that may be NaN by design
        (:data:`pipeline.store.NAN_ALLOWED`) are checked for unreadable chunks only, as by ``query``."""
        flags = [verify.nan_cells(self.ds[v], self.done_mark) for v in dict.fromkeys(reads) if v not in NAN_ALLOWED]
        return functools.reduce(lambda a, b: a | b, flags) if flags else xr.zeros_like(self.done_mark, dtype=bool)

    def compute(self, lazy: tuple, reads, progress: bool = False) -> tuple:
        """Compute the objects of ``lazy`` in one pass together with the check of the variables ``reads``.

        Raises:
            DamagedStore: naming every damaged block that the pass read, as ``nnsweep verify`` does.
        """
        with verify.reading(self.loc):  # an unreadable chunk: the damaged blocks are named
            *out, bad = _compute((*lazy, self.checks(reads)), progress)
        verify.check_nan(self.loc, bad)  # a missing chunk or NaN in a done block: named too
        return tuple(out)


def open_store(where: str | StoreLocation) -> Results:
    """Open a results store for the analysis (once per command).

    Raises:
        StoreError: the path is not a results store (from :func:`pipeline.store.open_results`).
        UserError: no block is done.
    """
    loc = as_location(where)
    ds = open_results(loc)  # checks that it is a results store
    done = done_mask(loc)
    cov = coverage(done, ds.L.values, ds.m.values, ds.seed.values, int(ds.attrs["seeds_per_block"]))
    if cov["blocks_done"] == 0:
        raise UserError(f"store {str(loc)!r} has no finished block (0 of {cov['blocks_total']} done), so "
                        "there is nothing to fit; run the sweep first (`nnsweep run SPEC --store "
                        f"{loc}`; rerunning resumes it), then fit again.")
    ds, cov["together_cells_left_out"] = without_together(ds, loc)
    return Results(loc, ds, done, json.loads(ds.attrs["spec"]), cov)


def without_together(ds: xr.Dataset, loc) -> tuple[xr.Dataset, bool]:
    """The store without its cells of noise in every layer at once (layer 0), and whether it had any.

    The analysis models the position i of one perturbed layer (L - i layers after it, the first,
    middle and last layer); layer 0 is no position, so it is left out of every fit, figure and table
    rather than mixed in (``nnsweep query --sel layer=0`` and ``nnsweep estimate --layer together``
    show those cells).

    Raises:
        UserError: the store holds no other cells.
    """
    keep = ds.layer.values != TOGETHER
    if keep.all():
        return ds, False
    if not keep.any():
        raise UserError(f"store {str(loc)!r} holds only cells with noise in every layer at once (layer 0), which "
                        "fit and report leave out (they model the position of one perturbed layer); read them "
                        "with `nnsweep query STORE --sel layer=0`, or add single layers to the grid (grid.layer: "
                        "[together, all]) in a new store.")
    return ds.isel(layer=np.flatnonzero(keep)), True


def coverage(done: np.ndarray, L, m, seeds, seeds_per_block: int) -> dict:
    """Blocks done of total, and which (L, m, seeds) are missing."""
    blocks_done, total = plan.blocks_done(done, seeds_per_block)
    L, m = np.asarray(L), np.asarray(m)
    missing = []
    for li, m_index in zip(*np.nonzero(~done.all(axis=2))):
        lost = [int(s) for s, d in zip(seeds, done[li, m_index]) if not d]
        missing.append({"L": L[li].item(), "m": m[m_index].item(), "seeds": lost})
    return {"blocks_done": blocks_done, "blocks_total": total,
            "missing": {"blocks": total - blocks_done, "networks": int((~done).sum()), "by_L_m": missing}}


def unit_view(results: Results, ds: xr.Dataset | None = None) -> tuple[xr.Dataset, xr.DataArray]:
    """The store with its independent units on the ``seed`` axis, and their done mark.

    Networks are the units of a store of several networks per (L, m); for one network per (L, m)
    its noise draws are (the ``draw`` axis becomes ``seed``), and a draw is done with its block.
    """
    ds = results.ds if ds is None else ds
    done = results.done
    if results.networks.one_per_cell:
        ds = ds.isel(seed=0, drop=True).rename(draw="seed")
        done = np.repeat(done[:, :, :1], ds.sizes["seed"], axis=2)
    mask = xr.DataArray(done, dims=("L", "m", "seed"), coords={d: ds[d] for d in ("L", "m", "seed")})
    return ds, mask


def nested(da: xr.DataArray) -> list[str]:
    """The dimensions nested in one unit: every one but the cell's and the unit's (``seed``)."""
    return [d for d in da.dims if d not in (*CELL, "seed")]


def over_unit(da: xr.DataArray) -> xr.DataArray:
    """The mean over what is nested in a unit (its inputs and draws, or a draw's inputs)."""
    return da.mean(nested(da))


@dataclasses.dataclass(frozen=True)
class Sample:
    """Per-unit summaries of a store and what the store holds.

    ``net`` has dims (L, m, ratio, layer, seed); cells with layer > L and seeds
    whose block is not done are NaN. ``present`` is the (L, m, seed) done mark.
    """

    path: str
    net: xr.Dataset
    present: np.ndarray
    coverage: dict
    spec: dict
    units: str = "networks"  # what the ``seed`` axis of ``net`` holds: networks, or the draws of one network

    @property
    def k(self) -> int:
        """Output dimension, read from the spec in the store's attributes."""
        return int(self.spec["network"]["output_dim"])

    @property
    def draws(self) -> int:
        """Values of R pooled in one unit's summaries: its inputs times its noise draws."""
        return int(self.net.attrs.get("pooled", self.spec["noise"]["draws"]))

    @functools.cached_property
    def networks(self) -> Networks:
        return Networks.from_spec(self.spec)


def network_summaries(ds: xr.Dataset) -> xr.Dataset:
    """Lazy per-unit means over what is nested in a unit (a network's inputs and noise draws, or a
    draw's inputs); dask reduces the store chunk by chunk. The unit's axis is ``seed``."""
    rel = ds["rel_change"]
    log = np.log(rel)
    if "draw" in ds["delta_norm"].dims:
        delta = mean_change = ds["delta_norm"].mean("draw")
    else:  # the units are one network's draws: the looseness is against its mean change over them
        delta, mean_change = ds["delta_norm"], ds["delta_norm"].mean("seed")
    looseness = ds["bound"] / mean_change  # per input: how far the worst-case bound sits above the mean change
    return xr.Dataset({
        "mean": over_unit(rel),
        "sq": over_unit(rel**2),
        "log": over_unit(log),
        "log2": over_unit(log**2),
        "delta": over_unit(delta),
        "looseness": over_unit(looseness),
    })


def load(where: str | StoreLocation | Results, progress: bool = True) -> Sample:
    """Reduce a store to per-unit summaries (the only pass over the full data).

    Args:
        where: the store, or the :class:`Results` of :func:`open_store` (so a command opens it once).
        progress: show a progress bar on stderr when the pass takes a while.

    Raises:
        UserError: the path is not a results store, or no block is done.
        DamagedStore: a done block that the pass reads is damaged.
    """
    results = where if isinstance(where, Results) else open_store(where)
    ds, mask = unit_view(results)
    lazy = network_summaries(ds).where(mask & (ds.layer <= ds.L))
    (net,) = results.compute((lazy,), SUMMARY_READS, progress)
    net.attrs["pooled"] = int(np.prod([ds.sizes[d] for d in nested(ds["rel_change"])]))
    return Sample(results.path, net, mask.values, results.coverage, results.spec, results.networks.units)


def _compute(lazy: tuple, progress: bool) -> tuple:
    """dask.compute of the objects of ``lazy``, with a progress bar if it takes a while."""
    import dask
    from dask.diagnostics import ProgressBar

    with ProgressBar(minimum=2.0, out=sys.stderr) if progress else contextlib.nullcontext():
        return dask.compute(*lazy)
