"""Sizes from the spec alone, checked against a real store and the measured peak memory of a block."""

from __future__ import annotations

import math
import os
import tracemalloc

import pytest
import zarr

from pipeline import sizes, store
from pipeline.measure import measure_block
from pipeline.spec import Spec

from pipeline_helpers import SMALL, build_store


def test_dim_lengths_are_those_of_the_template():
    spec = Spec.from_dict(SMALL)
    assert store.dim_lengths(spec) == dict(store.template(spec).sizes)


def test_sizes_match_a_complete_store(tmp_path):
    spec = Spec.from_dict(SMALL)
    path = build_store(tmp_path / "s.zarr", SMALL)
    s = sizes.sizes(spec)
    group = zarr.open_group(path, mode="r")
    arrays = [group[name] for name in store.VARIABLES]
    assert s.store_bytes == sum(a.nbytes for a in arrays)
    assert s.cells == max(math.prod(a.shape) for a in arrays) == group["delta_norm"].size
    files = sum(len(fs) for name in store.VARIABLES for _, _, fs in os.walk(os.path.join(path, name, "c")))
    assert s.chunks == files
    assert s.blocks == len(spec.grid.L) * len(spec.grid.m) * 4


@pytest.mark.parametrize("grid, noise, network", [
    ({"L": [4], "m": [256], "ratio": [0.1, 0.3], "seeds": 4}, {"draws": 32}, {"input_dim": 64}),
    ({"L": [8], "m": [128], "ratio": [0.01, 0.1, 0.3], "seeds": 4}, {"draws": 64}, {"input_dim": 64}),
    ({"L": [3], "m": [300], "ratio": [0.1], "seeds": 2}, {"draws": 16, "distribution": "rademacher"},
     {"input_dim": 64}),
    ({"L": [2], "m": [64], "ratio": [0.1], "seeds": 4}, {"draws": 16, "norm": "spectral"}, {"input_dim": 500}),
    ({"L": [4], "m": [256], "ratio": [0.1], "seeds": 4}, {"draws": 8}, {"input_dim": 300, "weight_norm_bound": 2.0}),
    ({"L": [2], "m": [32], "ratio": [0.1, 0.2], "seeds": 4}, {"draws": 512}, {"input_dim": 16}),
    ({"L": [4], "m": [128], "ratio": [0.1, 0.3], "seeds": 4}, {"draws": 16}, {"input_dim": 64, "n_inputs": 32}),
    ({"L": [3], "m": [64], "ratio": [0.1], "seeds": 4}, {"draws": 64}, {"input_dim": 32, "n_inputs": 100}),
    ({"L": [12], "m": [384], "ratio": [0.1], "seeds": 2}, {"draws": 4}, {"input_dim": 64, "keep": "1MB"}),
    ({"L": [8], "m": [384], "ratio": [0.1, 0.3], "seeds": 2}, {"draws": 16},
     {"input_dim": 64, "keep": "1MB", "precision": "float32"}),
    ({"L": [6], "m": [256], "ratio": [0.1], "seeds": 2}, {"draws": 16}, {"input_dim": 64, "precision": "float32"}),
    # many inputs and outputs: the Jacobians J_i of every perturbed layer are kept for the first-order changes
    ({"L": [5], "m": [48], "ratio": [0.1], "seeds": 2}, {"draws": 8}, {"input_dim": 16, "output_dim": 64,
                                                                       "n_inputs": 600}),
    # noise in every layer at once: eta_j formed a pass of draws at a time, beside the single-layer columns
    ({"L": [4], "m": [256], "ratio": [0.1, 0.3], "seeds": 4, "layer": ["together", "all"]}, {"draws": 32},
     {"input_dim": 64}),
    ({"L": [3], "m": [128], "ratio": [0.1], "seeds": 2, "layer": "together"}, {"draws": 64},
     {"input_dim": 32, "n_inputs": 32, "precision": "float32"}),
    ({"L": [3], "m": [384], "ratio": [0.1], "seeds": 2, "layer": ["together", 2]},
     {"draws": 16, "distribution": "rademacher", "norm": "spectral"}, {"input_dim": 64}),
])
def test_block_memory_estimate_bounds_the_measured_peak(grid, noise, network, monkeypatch):
    """Also for networks that draw their weights again (NNSWEEP_KEEP_WEIGHTS small), and for float32."""
    network = dict(network)
    if "keep" in network:
        monkeypatch.setenv("NNSWEEP_KEEP_WEIGHTS", network.pop("keep"))
    compute = {"precision": network.pop("precision", "float64")}
    spec = Spec.from_dict({"grid": grid, "noise": noise, "network": network, "compute": compute})
    L, m = grid["L"][0], grid["m"][0]
    measure_block(spec, L, m, spec.grid.seeds[:1])  # imports and caches outside the measurement
    tracemalloc.start()
    try:
        measure_block(spec, L, m, spec.grid.seeds[:spec.execution.seeds_per_block])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    estimate = sizes.block_peak_bytes(spec)
    assert peak <= estimate <= 2.5 * peak, (peak, estimate)


def test_a_block_that_does_not_fit_a_local_worker_is_refused(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import main
    from pipeline_helpers import raw_spec, write_spec

    spec = write_spec(tmp_path, raw_spec(network={"input_dim": 16, "output_dim": 4},
                                         grid={"L": [20], "m": [6000], "ratio": [0.1], "seeds": 2}))
    need = sizes.block_peak_bytes(Spec.from_dict(raw_spec(network={"input_dim": 16, "output_dim": 4},
                                                          grid={"L": [20], "m": [6000], "ratio": [0.1], "seeds": 2})))
    workers = max(1, int(2 * sizes.machine_memory() / need))  # so many that each has half a block
    result = CliRunner().invoke(main, ["run", str(spec), "--store", str(tmp_path / "s.zarr"), "--workers",
                                       str(workers), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert f"more than each of the {workers} local workers has" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("raw", ["", "-5", "lots"])
def test_a_bad_keep_weights_size_is_refused(raw, monkeypatch):
    from pipeline.errors import SpecError
    from pipeline.network import keeps_weights

    monkeypatch.setenv("NNSWEEP_KEEP_WEIGHTS", raw)
    with pytest.raises(SpecError, match=f"NNSWEEP_KEEP_WEIGHTS={raw!r} is not allowed"):
        keeps_weights([(4, 4)], "float64")


def test_keep_weights_zero_never_keeps(monkeypatch):
    from pipeline.network import keeps_weights

    assert keeps_weights([(4, 4)], "float64")
    monkeypatch.setenv("NNSWEEP_KEEP_WEIGHTS", "0")
    assert not keeps_weights([(4, 4)], "float64")
