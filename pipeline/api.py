"""The question answered for a network held in memory: ``pipeline.sensitivity``.

>>> import numpy as np, pipeline, tempfile
>>> rng = np.random.default_rng(0)
>>> weights = [rng.normal(size=(16, 8)) / 8 ** 0.5, rng.normal(size=(3, 16)) / 4]
>>> ds = pipeline.sensitivity(weights, rng.normal(size=(20, 8)), ratio=[0.01, 0.1], draws=8, layer=1,
...                           cache_dir=tempfile.mkdtemp())
>>> dict(ds["delta_norm"].sizes)
{'L': 1, 'm': 1, 'ratio': 2, 'layer': 1, 'seed': 1, 'input': 20, 'draw': 8}
>>> r = ds["rel_change"].mean(["seed", "input", "draw"]).squeeze().values
>>> bool(r[0] < r[1])
True
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import xarray as xr

from .errors import UserError
from .measure import measure_block
from .plan import all_blocks
from .schema import NET, RESULT_VARIABLES, VARIABLES
from .sizes import check_fits, machine_memory
from .spec import Spec
from .store import template, with_rel_change

# spec fields as the keyword arguments of :func:`sensitivity` name them, so its errors speak in them
API_NAMES = {
    "network.init": "network", "network.input": "inputs", "network.labels": "labels", "grid.ratio": "ratio",
    "grid.layer": "layer", "noise.draws": "draws", "noise.distribution": "noise", "noise.norm": "norm",
    "random_seed": "random_seed", "compute.precision": "precision", "network.activation": "activation",
    "network.layer_order": "layer_order", "network.n_inputs": "n_inputs", "network.clean_outputs": "clean_outputs",
    "network.clean_outputs_tolerance": "clean_outputs_tolerance",
}


def spec_of(network: Any, inputs: Any = None, labels: Any = None, *, ratio: float | list[float] = 0.1,
            layer: int | str | list[int] = "all", draws: int = 64, noise: str = "gaussian", norm: str = "frobenius",
            random_seed: int = 0, precision: str = "float64", activation: str | list[str] | None = None,
            layer_order: str | list[str] | None = None, n_inputs: int | None = None, clean_outputs: Any = None,
            clean_outputs_tolerance: float | None = None, cache_dir: str | os.PathLike | None = None) -> Spec:
    """The spec ``nnsweep estimate`` builds from the same options, for a network given in memory.

    Arguments as :func:`sensitivity` takes them. ``nnsweep run`` takes the same network through
    ``Spec.from_dict`` (``network.init`` set to it); this is that spec for one network.
    """
    ratios = sorted(set(ratio)) if isinstance(ratio, (list, tuple, np.ndarray)) else [ratio]
    net = {"init": network, "bias_std": 0.0, "input": "gaussian" if inputs is None else inputs, "labels": labels}
    for key, value in (("activation", activation), ("layer_order", layer_order), ("n_inputs", n_inputs),
                       ("clean_outputs", clean_outputs), ("clean_outputs_tolerance", clean_outputs_tolerance)):
        if value is not None:
            net[key] = value
    return Spec.from_dict({
        "network": net,
        "grid": {"ratio": ratios, "layer": list(layer) if isinstance(layer, tuple) else layer},
        "noise": {"distribution": noise, "norm": norm, "draws": draws},
        "random_seed": random_seed,
        "compute": {"precision": precision},
        "execution": {"seeds_per_block": 1},
    }, names=API_NAMES, cache_dir=cache_dir)


def results(spec: Spec) -> xr.Dataset:
    """Every block of ``spec`` measured in this process, as the Dataset its store would hold when done.

    The same variables, dimensions, coordinates and attributes as :func:`pipeline.open_results` gives
    for a store that ``nnsweep run`` made from ``spec`` (``created`` and ``wall_time`` aside), in memory.
    """
    check_fits(spec, machine_memory(), "this machine")
    ds = template(spec).compute().copy(deep=True)  # dask gives one shared array to variables alike
    for key in all_blocks(spec):
        t0 = time.perf_counter()
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow shows as inf, as in `nnsweep estimate`
            block = measure_block(spec, key.L, key.m, key.seeds)
        for name in RESULT_VARIABLES:
            ds[name].values[key.selection(VARIABLES[name][0])] = getattr(block, name)[None, None]
        ds["wall_time"].values[key.selection(NET)] = time.perf_counter() - t0
        ds["done"].values[key.selection(NET)] = 1
    return with_rel_change(ds)


def sensitivity(network: Any, inputs: Any = None, labels: Any = None, **options) -> xr.Dataset:
    """How weight noise moves the outputs of ``network``: the results of ``nnsweep estimate`` as a Dataset.

    Args:
        network: a list of weight matrices, each ``(n_out, n_in)`` as ``nn.Linear`` holds it; a list of
            ``(W, b)`` pairs; a mapping of names to arrays (a state dict: read by the same rules as a file);
            a PyTorch ``nn.Module`` (its activation modules and its own outputs on ``inputs`` are used and
            checked, :mod:`pipeline.inmemory`); the path of a network file; or a validated :class:`Spec`
            (then no other argument).
        inputs: an ``(n, d)`` array (or tensor) of inputs; None for Gaussian inputs (``n_inputs`` of them).
        labels: ``n`` class indices; adds ``accuracy`` and ``clean_accuracy``.
        **options: the options of ``nnsweep estimate``, same names and defaults: ``ratio`` (one or a
            list), ``layer`` (1..L or ``"all"``), ``draws`` (64), ``noise`` (gaussian, rademacher, sphere),
            ``norm`` (frobenius, spectral), ``random_seed``, ``precision``, ``activation``, ``layer_order``,
            ``n_inputs``, ``clean_outputs``, ``clean_outputs_tolerance``; and ``cache_dir``, where the
            network and arrays are written (:mod:`pipeline.inmemory`).

    Returns:
        The results store's Dataset (:func:`pipeline.open_results`'s variables, dimensions and
        attributes); ``ds.nnsweep.summary()`` is what ``nnsweep estimate --json`` prints, and
        ``ds.nnsweep.table()`` one row per cell.

    Raises:
        SpecError: as ``nnsweep estimate`` refuses the same network or options, naming the argument.
    """
    if isinstance(network, Spec):
        if inputs is not None or labels is not None or options:
            raise UserError("sensitivity(spec) takes no other argument: the spec says everything; pass a network "
                            "instead of a spec to give inputs, labels or options.")
        return results(network)
    return results(spec_of(network, inputs, labels, **options))


def find_ratio(network: Any, inputs: Any = None, labels: Any = None, *, layer: int | None = None,
               criterion: str = "accuracy-drop", tolerance: float | None = None, half_width: float | None = None,
               **options) -> dict:
    """The largest noise ratio whose accuracy drop (or prediction-change share) stays within ``tolerance``.

    What ``nnsweep estimate --find-ratio`` prints as JSON; the method, its interval and how it relates to
    flatness measures are in :mod:`pipeline.tolerance`.

    Args:
        network, inputs, labels: as :func:`sensitivity` takes them (or a :class:`Spec` of one layer).
        layer: the perturbed layer.
        criterion: ``accuracy-drop`` (needs labels) or ``pred-change``.
        tolerance: default 0.01 (accuracy-drop) or 0.05 (pred-change).
        half_width: the largest half-width of each level's 95% interval (default tolerance / 4).
        **options: :func:`sensitivity`'s options but ``ratio``; ``draws`` is each level's first number of draws.
    """
    from .tolerance import find_ratio as search

    if not isinstance(network, Spec):  # without a layer, the spec lists all and the search refuses it
        network = spec_of(network, inputs, labels, layer="all" if layer is None else layer, **options)
    return search(network, criterion, tolerance, half_width)
