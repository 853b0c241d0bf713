"""nnsweep: weight-noise sensitivity sweeps of ReLU networks.

The public API: load a spec, measure, run a sweep, read the results; answer the
question for a network in memory (``sensitivity``, ``find_ratio``). Names are
imported on first use, so ``nnsweep --help`` does not load dask, xarray or zarr.

>>> import pipeline
>>> pipeline.load_spec.__module__
'pipeline.spec'
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BlockFailed": "errors", "ClusterLost": "errors", "SpecError": "errors", "StoreError": "errors",
    "UserError": "errors", "Interrupted": "errors",
    "Spec": "spec", "load_spec": "spec",
    "Network": "network", "build_network": "network", "make_inputs": "network", "make_labels": "network",
    "BlockResult": "measure", "measure_block": "measure", "measure_network": "measure",
    "BlockKey": "plan", "all_blocks": "plan", "pending_blocks": "plan",
    "open_results": "store",
    "estimate": "estimation",
    "run": "execute",
    "sensitivity": "api", "find_ratio": "api",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
