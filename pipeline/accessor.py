"""``ds.nnsweep``: the answers of a results Dataset, as xarray accessors give them.

Any Dataset that :func:`pipeline.open_results` or :func:`pipeline.sensitivity` returns (or a selection
of one along ratio, layer, seed, input or draw) has:

- ``ds.nnsweep.summary()``: what ``nnsweep estimate --json`` prints for the same spec, computed by the
  same code from the Dataset's numbers (one L and one m: select one first if the store holds several);
- ``ds.nnsweep.table(rows="cell")``: the tidy table of :mod:`pipeline.tidy`;
- ``ds.nnsweep.spec``: the :class:`pipeline.Spec` the results were made from.
"""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import xarray as xr

from . import tidy
from .errors import UserError
from .estimation import estimate_from
from .measure import RESULT_FIELDS, BlockResult
from .schema import VARIABLES
from .spec import Spec


@xr.register_dataset_accessor("nnsweep")
class NnsweepAccessor:
    """The ``nnsweep`` namespace of a results Dataset."""

    def __init__(self, ds: xr.Dataset):
        self._ds = ds

    @property
    def spec(self) -> Spec:
        """The spec recorded in the Dataset's attributes (files are not read again)."""
        if "spec" not in self._ds.attrs:
            raise UserError("this Dataset carries no nnsweep spec in its attributes; expected one that "
                            "pipeline.open_results or pipeline.sensitivity returned.")
        return Spec.from_record(json.loads(self._ds.attrs["spec"]))

    def table(self, rows: str = "cell") -> pd.DataFrame:
        """One row per cell (``rows="cell"``) or per draw (``rows="draw"``); see :mod:`pipeline.tidy`."""
        if rows not in tidy.ROWS:
            raise UserError(f"rows: {rows!r} is not allowed; expected one of {', '.join(tidy.ROWS)}.")
        return tidy.table(self._ds, rows)

    def summary(self) -> dict:
        """E||v - v*||, E R with its 95% interval, the prediction-change rate and accuracy, pooled over
        the Dataset's ratios and layers, with ``by_ratio`` and ``by_layer``: ``nnsweep estimate --json``.

        Raises:
            UserError: the Dataset holds several L or m (select one with ``ds.sel(L=..., m=...)``).
        """
        ds = self._ds
        for dim in VARIABLES["delta_norm"][0]:  # a scalar selection (ds.sel(ratio=0.1)) drops its dimension
            if dim not in ds.dims and dim in ds.coords:
                ds = ds.expand_dims(dim)
        if ds.sizes["L"] != 1 or ds.sizes["m"] != 1:
            raise UserError(f"summary() answers for one network size; this Dataset holds L = {ds.L.values.tolist()} "
                            f"and m = {ds.m.values.tolist()}: select one, e.g. ds.sel(L={int(ds.L[0])}, "
                            f"m={int(ds.m[0])}).nnsweep.summary().")
        ds = ds.sel(layer=ds.layer.values[ds.layer.values <= int(ds.L[0])])  # layers beyond this L do not exist (NaN)
        spec = self.spec
        axes = {d: tuple(ds[d].values.tolist()) for d in ("L", "m", "ratio", "layer")}
        grid = dataclasses.replace(spec.grid, **axes, seeds=tuple(ds.seed.values.tolist()))
        network = dataclasses.replace(spec.network, n_inputs=ds.sizes["input"])
        spec = dataclasses.replace(spec, grid=grid, network=network,
                                   noise=dataclasses.replace(spec.noise, draws=ds.sizes["draw"]))
        block = BlockResult(**{name: ds[name].isel(L=0, m=0).transpose(
            *(d for d in VARIABLES[name][0] if d not in ("L", "m"))).values for name in RESULT_FIELDS})
        # the control variate's cheap draws rebuild the spec's inputs: only with all of them, in order
        every_input = ds.input.values.tolist() == list(range(self.spec.network.n_inputs))
        return estimate_from(spec, block, control_variate=every_input)
