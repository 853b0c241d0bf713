"""store: the template, one chunk per block, done marks after data, provenance, lazy reads.

Everything here runs in this process on real zarr stores in tmp_path; no cluster.
"""

from __future__ import annotations

import datetime
import json
import os
from importlib import metadata

import dask.array
import numpy as np
import pytest
import xarray as xr
import zarr

from pipeline import plan, store
from pipeline.errors import StoreError
from pipeline.measure import measure_block

from pipeline_helpers import (
    RESULT_VARS, assert_bit_identical, block_chunk_dir, chunk_path, fill_in_process, make_spec, read_arrays,
    reference_arrays,
    snapshot,
)

FLOAT_VARS = [name for name, v in store.VARIABLES.items() if v[1] == "f8"]


@pytest.fixture(scope="module")
def full_store(tmp_path_factory):
    """A store of the small spec (3 seeds per block: 8 seeds make a short last block), all written."""
    path = tmp_path_factory.mktemp("full") / "full.zarr"
    spec, left = fill_in_process(make_spec(execution={"seeds_per_block": 3}), path)
    assert left == []
    return spec, path


def chunk_files(path, var: str) -> list[str]:
    root = os.path.join(path, var, "c")
    return sorted(os.path.relpath(os.path.join(r, f), root) for r, _, fs in os.walk(root) for f in fs)


def test_template_every_variable_has_units_description_and_nan_fill(tmp_path):
    spec = make_spec()
    ds = store.template(spec)
    assert set(RESULT_VARS) | {"done", "wall_time"} <= set(ds.data_vars)
    for name, var in ds.data_vars.items():
        assert var.attrs.get("units"), name
        assert var.attrs.get("description"), name
    path = tmp_path / "t.zarr"
    store.create_or_resume(spec, str(path))
    for name in FLOAT_VARS:
        arr = zarr.open_array(str(path), path=name, mode="r")
        assert np.isnan(arr.fill_value), name
        assert np.isnan(arr[...]).all(), f"{name}: a fresh store must read as NaN everywhere"
        assert arr.attrs["units"] and arr.attrs["description"]
    assert not store.done_mask(str(path)).any()
    # the template writes metadata only: no variable has a chunk yet
    assert all(chunk_files(path, name) == [] for name in store.VARIABLES)


def test_template_coordinates_hold_the_swept_values():
    spec = make_spec(grid={"L": [3, 2], "m": [16, 8], "ratio": [0.3, 0.05], "seeds": [9, 4, 5]})
    ds = store.template(spec)
    assert ds["L"].values.tolist() == [2, 3]
    assert ds["m"].values.tolist() == [8, 16]
    assert ds["ratio"].values.tolist() == [0.05, 0.3]
    assert ds["layer"].values.tolist() == [1, 2, 3]
    assert ds["seed"].values.tolist() == [4, 5, 9]
    assert ds["draw"].values.tolist() == list(range(spec.noise.draws))
    assert ds["input"].values.tolist() == [0]
    assert ds["delta_norm"].dims == ds["pred_changed"].dims == ("L", "m", "ratio", "layer", "seed", "input", "draw")
    assert ds["accuracy"].dims == ("L", "m", "ratio", "layer", "seed", "draw")
    assert ds["bound"].dims == ("L", "m", "ratio", "layer", "seed", "input")
    assert ds["output_norm"].dims == ds["margin"].dims == ("L", "m", "seed", "input")
    assert ds["done"].dims == ds["clean_accuracy"].dims == ("L", "m", "seed")
    assert store.template(make_spec(network={"n_inputs": 5}))["input"].values.tolist() == list(range(5))


@pytest.mark.parametrize("spb", [1, 3, 8])
def test_each_block_is_exactly_one_chunk_of_every_variable(tmp_path, spb):
    path = tmp_path / "s.zarr"
    spec, _ = store.create_or_resume(make_spec(execution={"seeds_per_block": spb}), str(path))
    sizes = {"L": 2, "m": 2, "ratio": 3, "layer": 3, "seed": 8, "input": 1, "draw": 4}
    for name, (dims, *_) in store.VARIABLES.items():
        arr = zarr.open_array(str(path), path=name, mode="r")
        expected = tuple({"L": 1, "m": 1, "seed": spb}.get(d, sizes[d]) for d in dims)
        assert arr.chunks == expected, name
        for key in plan.all_blocks(spec):  # the region starts on a chunk boundary and ends in that chunk
            for d, s in key.region().items():
                c = expected[dims.index(d)]
                assert s.start % c == 0 and (s.stop - 1) // c == s.start // c, (name, key, d)


def test_write_block_touches_only_its_own_chunk_and_marks_done_after(tmp_path):
    path = tmp_path / "one.zarr"
    spec, _ = store.create_or_resume(make_spec(execution={"seeds_per_block": 3}), str(path))
    blocks = plan.all_blocks(spec)
    key = next(k for k in blocks if k.seed_start == 6)  # the short last block: 2 seeds of 3
    store.write_block(str(path), key, measure_block(spec, key.L, key.m, key.seeds), 1.5)
    for name in store.VARIABLES:
        files = chunk_files(path, name)
        assert files == [os.path.relpath(chunk_path(path, name, key, spec), path / name / "c")], name
    done = store.done_mask(str(path))
    expected = np.zeros_like(done)
    expected[key.region()["L"], key.region()["m"], key.region()["seed"]] = True
    assert np.array_equal(done, expected)
    assert [k for k in blocks if k not in plan.pending_blocks(spec, done)] == [key]


def test_failed_data_write_leaves_the_block_not_done(tmp_path):
    """A real I/O failure: a file sits where the block's delta_norm chunk directory must go."""
    path = tmp_path / "f.zarr"
    spec, _ = store.create_or_resume(make_spec(), str(path))
    key = plan.all_blocks(spec)[0]
    block_chunk_dir(path, key, spec)
    with pytest.raises(OSError):
        store.write_block(str(path), key, measure_block(spec, key.L, key.m, key.seeds), 0.1)
    assert not store.done_mask(str(path)).any(), "done was marked although the data write failed"


def test_full_store_matches_the_kernel_and_layers_beyond_L_are_nan(full_store):
    spec, path = full_store
    got = read_arrays(path)
    assert_bit_identical(got, reference_arrays(spec), "in-process store vs kernel")
    assert store.done_mask(str(path)).all()
    g = spec.grid
    for li, L in enumerate(g.L):
        for col, layer in enumerate(g.layer):
            for name in ("delta_norm", "hidden_flip_fraction", "pred_changed", "bound"):
                cells = got[name][li, :, :, col]
                if layer > L:
                    assert np.isnan(cells).all(), (name, L, layer)
                else:
                    assert np.isfinite(cells).all(), (name, L, layer)
    assert np.isfinite(got["output_norm"]).all() and (got["output_norm"] > 0).all()
    assert np.isfinite(got["delta_norm"]).sum() == plan.n_cells(spec)  # one value per cell that exists
    assert (got["delta_norm"][np.isfinite(got["delta_norm"])] > 0).all()
    wall = zarr.open_array(str(path), path="wall_time", mode="r")[...]
    assert np.all(wall == 0.25)


def test_rewriting_a_block_is_harmless(tmp_path):
    path = tmp_path / "re.zarr"
    spec, _ = fill_in_process(make_spec(), path)
    before = read_arrays(path)
    key = plan.all_blocks(spec)[3]
    store.write_block(str(path), key, measure_block(spec, key.L, key.m, key.seeds), 9.0)
    assert_bit_identical(read_arrays(path), before, "after rewriting a block")
    assert store.done_mask(str(path)).all()


def test_open_results_is_lazy_and_rel_change_is_delta_over_output_norm(full_store):
    spec, path = full_store
    ds = store.open_results(path)
    for name in (*RESULT_VARS, "rel_change", "done"):
        assert isinstance(ds[name].data, dask.array.Array), f"{name} is not dask-backed"
    assert ds["delta_norm"].data.chunksize == (1, 1, 3, 3, 3, 1, 4)
    assert ds["rel_change"].attrs["units"] and ds["rel_change"].attrs["description"]
    raw = read_arrays(path)
    expected = raw["delta_norm"] / raw["output_norm"][:, :, None, None, :, :, None]
    got = ds["rel_change"].transpose("L", "m", "ratio", "layer", "seed", "input", "draw").values
    assert np.array_equal(got, expected, equal_nan=True)
    # the theory's scale: at He init the relative change is close to r on average
    by_ratio = ds["rel_change"].mean(["L", "m", "layer", "seed", "input", "draw"]).values
    assert np.all(by_ratio / np.array(spec.grid.ratio) > 0.3)
    assert np.all(by_ratio / np.array(spec.grid.ratio) < 3)


def test_store_carries_its_provenance(full_store):
    spec, path = full_store
    attrs = store.read_attrs(str(path))
    assert attrs["spec_hash"] == spec.hash
    assert json.loads(attrs["spec"]) == json.loads(json.dumps(spec.to_dict(), sort_keys=True))
    assert int(attrs["seeds_per_block"]) == 3
    versions = json.loads(attrs["versions"])
    for pkg in ("numpy", "dask", "xarray", "zarr"):
        assert versions[pkg] == metadata.version(pkg), pkg
    created = datetime.datetime.fromisoformat(attrs["created"])
    assert created.tzinfo is not None
    age = datetime.datetime.now(datetime.timezone.utc) - created
    assert datetime.timedelta(0) <= age < datetime.timedelta(hours=1)


def test_check_store_refuses_another_spec_and_writes_nothing(full_store):
    spec, path = full_store
    before = snapshot(path)
    other = make_spec(random_seed=12)
    with pytest.raises(StoreError) as e:
        store.create_or_resume(other, str(path))
    msg = str(e.value)
    assert str(path) in msg and "another spec" in msg and spec.hash[:12] in msg and other.hash[:12] in msg
    assert snapshot(path) == before


def test_check_store_resumes_with_the_stores_block_size(full_store):
    spec, path = full_store
    resumed, existed = store.check_store(make_spec(execution={"seeds_per_block": 5}), str(path))
    assert existed and resumed.execution.seeds_per_block == 3
    assert resumed.hash == spec.hash


@pytest.mark.parametrize("kind", ["file", "foreign_dir", "foreign_zarr"])
def test_not_a_results_store_is_refused_untouched(tmp_path, kind):
    path = tmp_path / "x.zarr"
    if kind == "file":
        path.write_text("hello")
    elif kind == "foreign_dir":
        path.mkdir()
        (path / "notes.txt").write_text("mine")
    else:
        zarr.open_group(str(path), mode="w").create_array("a", shape=(3,), dtype="f8")
    before = snapshot(path)
    with pytest.raises(StoreError, match="x.zarr"):
        store.create_or_resume(make_spec(), str(path))
    with pytest.raises(StoreError, match="x.zarr"):
        store.open_results(str(path))
    assert snapshot(path) == before


def test_open_results_of_a_missing_store_says_so(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        store.open_results(tmp_path / "nothing.zarr")
    assert not (tmp_path / "nothing.zarr").exists()


def test_open_results_reads_with_xarray_like_any_zarr(full_store):
    _, path = full_store
    plain = xr.open_zarr(path, consolidated=False)
    ours = store.open_results(path)
    for name in RESULT_VARS:
        assert np.array_equal(plain[name].values, ours[name].values, equal_nan=True)


def test_a_store_of_an_older_schema_is_refused_untouched(full_store, tmp_path):
    """Schema 3 draws every weight matrix from its own stream: a schema-2 store's numbers are of other
    networks, so resuming into it or reading it is refused, with what to do, and nothing changes."""
    import shutil

    from click.testing import CliRunner

    from pipeline.cli import main

    spec, path = full_store
    old = tmp_path / "old.zarr"
    shutil.copytree(path, old)
    group = zarr.open_group(str(old), mode="r+")
    group.attrs["schema_version"] = 2
    before = snapshot(old)
    for action in (lambda: store.create_or_resume(spec, str(old)), lambda: store.open_results(str(old))):
        with pytest.raises(StoreError) as e:
            action()
        msg = str(e.value)
        assert "schema version 2" in msg and f"reads version {store.SCHEMA_VERSION}" in msg
        assert "batches of draws" in msg and "nnsweep run SPEC --store NEW.zarr" in msg
    res = CliRunner().invoke(main, ["query", str(old)])
    assert res.exit_code == 2 and "schema version 2" in res.output and "Traceback" not in res.output
    assert snapshot(old) == before


def test_every_chunk_is_written_by_exactly_one_block(tmp_path):
    """Write the blocks one by one: each write adds exactly its own chunk of every variable, and
    together they write every chunk of every variable once (3 seeds per block: a short last block)."""
    path = tmp_path / "w.zarr"
    spec, _ = store.create_or_resume(make_spec(execution={"seeds_per_block": 3}), str(path))
    before, writer = snapshot(path), {}
    for key in plan.all_blocks(spec):
        store.write_block(str(path), key, measure_block(spec, key.L, key.m, key.seeds), 0.1)
        after = snapshot(path)
        changed = {name for name, entry in after.items() if before.get(name) != entry and entry[0] == "file"}
        assert changed == {str(chunk_path(path, v, key, spec).relative_to(path)) for v in store.VARIABLES}, key
        for name in changed:
            assert writer.setdefault(name, key) == key, f"{name} written by {writer[name]} and {key}"
        before = after
    every = set()
    for name, (dims, *_) in store.VARIABLES.items():
        arr = zarr.open_array(str(path), path=name, mode="r")
        every |= {f"{name}/{arr.metadata.encode_chunk_key(i)}" for i in np.ndindex(*arr.cdata_shape)}
    assert set(writer) == every


def test_creation_writes_metadata_only_whatever_the_grid(tmp_path):
    """10^5 blocks: no chunk of any variable is written, and it takes what a tiny grid takes."""
    import time

    raw = {"grid": {"L": [1, 2], "m": list(range(4, 54)), "ratio": [0.1], "seeds": 4}, "network": {"input_dim": 4},
           "noise": {"draws": 2}, "execution": {"seeds_per_block": 4}}
    seconds = {}
    for name, seeds in (("small", 4), ("large", 4000)):
        raw["grid"]["seeds"] = seeds
        spec = make_spec(raw)
        t0 = time.perf_counter()
        spec, _ = store.create_or_resume(spec, str(tmp_path / f"{name}.zarr"))
        assert not store.done_mask(str(tmp_path / f"{name}.zarr")).any()
        assert len(plan.pending_blocks(spec, store.done_mask(str(tmp_path / f"{name}.zarr")))) == 100 * seeds // 4
        seconds[name] = time.perf_counter() - t0
    for name in store.VARIABLES:
        assert chunk_files(tmp_path / "large.zarr", name) == [], name
    assert seconds["large"] < 10 * seconds["small"] + 5, seconds


def test_done_mask_reads_what_zarr_reads_and_a_damaged_mark_is_not_done(tmp_path):
    path = tmp_path / "d.zarr"
    spec, left = fill_in_process(make_spec(execution={"seeds_per_block": 3}), path, skip=3)
    assert left
    done = zarr.open_array(str(path), path="done", mode="r")[...].astype(bool)
    assert np.array_equal(store.done_mask(str(path)), done) and done.any() and not done.all()
    key = next(k for k in plan.all_blocks(spec) if k not in left)
    mark = chunk_path(path, "done", key, spec)
    mark.write_bytes(mark.read_bytes()[:-1] + bytes([mark.read_bytes()[-1] ^ 1]))  # its checksum fails
    done[key.selection(store.VARIABLES["done"][0])] = False
    assert np.array_equal(store.done_mask(str(path)), done)
