"""Growing a store in place: more seeds, more L or m values, everything else equal.

A grown store must equal, cell by cell, a store computed from scratch with the
larger spec, and only the new blocks may be computed. Runs go through
``run_sweep`` on a real local cluster (the function behind `nnsweep run`), and
once through the command line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import zarr

from pipeline.cli import main
from pipeline.errors import StoreError
from pipeline.execute import local_cluster, run_sweep
from pipeline.spec import Spec
from pipeline.store import VARIABLES, open_results
from pipeline_helpers import raw_spec, read_arrays, snapshot, write_spec

pytestmark = pytest.mark.timeout(180)

# 2 L x 2 m, 8 seeds in blocks of 4: 8 blocks
BASE = raw_spec(grid={"L": [2, 3], "m": [8, 16], "ratio": [0.05, 0.3], "layer": "all", "seeds": 8},
                execution={"seeds_per_block": 4})
ALL_VARS = tuple(v for v in VARIABLES if v != "wall_time")


def spec_of(**grid) -> Spec:
    return Spec.from_dict(raw_spec(BASE, grid={**BASE["grid"], **grid}))


@pytest.fixture(scope="module")
def client():
    with local_cluster(2) as c:
        yield c


def fresh(spec: Spec, path, client) -> dict[str, np.ndarray]:
    """The larger spec computed from scratch into a new store."""
    assert run_sweep(spec, path, client, progress=False).ok
    return read_arrays(path, ALL_VARS)


def assert_same_cells(grown_path, fresh_arrays: dict[str, np.ndarray]) -> None:
    """Cell by cell, every variable but wall time (and the done marks)."""
    grown = read_arrays(grown_path, ALL_VARS)
    for name in ALL_VARS:
        assert grown[name].shape == fresh_arrays[name].shape, name
        assert np.array_equal(grown[name], fresh_arrays[name], equal_nan=True), name


def grow_case(tmp_path, client, small: Spec, large: Spec, blocks_new: int, blocks_kept: int):
    path = tmp_path / "grown.zarr"
    assert run_sweep(small, path, client, progress=False).ok
    before = zarr.open_array(str(path), path="wall_time", mode="r")[...]
    summary = run_sweep(large, path, client, progress=False)
    assert summary.ok
    assert (summary.done, summary.skipped, summary.total) == (blocks_new, blocks_kept, blocks_new + blocks_kept)
    assert_same_cells(path, fresh(large, tmp_path / "fresh.zarr", client))
    return path, before


def test_more_seeds_computes_only_the_new_blocks_and_equals_a_fresh_store(tmp_path, client):
    path, before = grow_case(tmp_path, client, spec_of(seeds=8), spec_of(seeds=16), blocks_new=8, blocks_kept=8)
    after = zarr.open_array(str(path), path="wall_time", mode="r")[...]
    # the blocks kept were not computed again: their timings are the first run's
    assert np.array_equal(after[:, :, :8], before)
    assert json.loads(open_results(path).attrs["spec"])["grid"]["seeds"] == list(range(16))


def test_a_short_last_block_is_computed_again_as_a_full_block(tmp_path, client):
    # 6 seeds in blocks of 4: seeds 4..5 are a short block; with 10 seeds it becomes 4..7
    grow_case(tmp_path, client, spec_of(seeds=6), spec_of(seeds=10), blocks_new=2 * 4, blocks_kept=4)


def test_one_more_width_computes_only_its_blocks(tmp_path, client):
    grow_case(tmp_path, client, spec_of(m=[8, 16]), spec_of(m=[8, 16, 32]), blocks_new=4, blocks_kept=8)


def test_a_deeper_network_with_every_layer_grows_the_layer_axis(tmp_path, client):
    # layer: all follows the largest L; layer 4 does not exist in the blocks of L = 2, 3
    grow_case(tmp_path, client, spec_of(L=[2, 3]), spec_of(L=[2, 3, 4]), blocks_new=4, blocks_kept=8)


@pytest.mark.parametrize("change, field", [
    ({"grid": {"ratio": [0.05, 0.1]}}, "grid.ratio"),
    ({"noise": {"draws": 8}}, "noise.draws"),
    ({"random_seed": 12}, "random_seed"),
    ({"network": {"input_dim": 17}}, "network.input_dim"),
    ({"grid": {"m": [8, 12, 16]}}, "grid.m"),            # a value inside the range, not appended
    ({"grid": {"seeds": [0, 1, 2, 3, 4, 5, 6, 9]}}, "grid.seeds"),  # a seed replaced
    ({"grid": {"L": [3]}}, "grid.L"),                    # a value removed
    ({"grid": {"layer": [1, 2]}}, "grid.layer"),
])
def test_any_other_difference_is_refused_naming_the_field_and_nothing_is_written(tmp_path, client, change,
                                                                                 field):
    path = tmp_path / "s.zarr"
    assert run_sweep(spec_of(), path, client, progress=False).ok
    before = snapshot(path)
    raw = raw_spec(BASE)
    for section, value in change.items():
        raw[section] = {**raw[section], **value} if isinstance(value, dict) else value
    with pytest.raises(StoreError, match=f"{field} is ") as e:
        run_sweep(Spec.from_dict(raw), path, client, progress=False)
    assert "Nothing was written" in str(e.value)
    assert snapshot(path) == before


def test_readers_never_see_a_half_grown_store(tmp_path, client):
    path = tmp_path / "s.zarr"
    small, large = spec_of(seeds=8, m=[8, 16]), spec_of(seeds=16, m=[8, 16, 32])
    assert run_sweep(small, path, client, progress=False).ok
    old = open_results(path).load()
    seen, stop = [], threading.Event()

    def read():
        while not stop.is_set():
            try:
                ds = open_results(path)
                seen.append((dict(ds.sizes), json.loads(ds.attrs["spec"])["grid"]))
            except StoreError as e:
                seen.append(str(e))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert run_sweep(large, path, client, progress=False).ok
    finally:
        stop.set()
        reader.join(timeout=30)
    new = open_results(path)
    for item in seen:
        if isinstance(item, str):
            assert "is being grown" in item and "open it again" in item, item
            continue
        sizes, grid = item
        # the arrays are all of the old or all of the new size; the spec may lag behind the arrays
        assert sizes in (dict(old.sizes), dict(new.sizes)), sizes
        assert grid in (json.loads(old.attrs["spec"])["grid"], json.loads(new.attrs["spec"])["grid"])
    assert len(seen) > 0
    # what was there before the growth is unchanged
    assert old.delta_norm.equals(new.delta_norm.sel(m=old.m, seed=old.seed))


def test_nnsweep_run_grows_and_status_shows_the_history(tmp_path, client):
    from click.testing import CliRunner

    small, large = raw_spec(BASE, name="g"), raw_spec(BASE, name="g", grid={**BASE["grid"], "seeds": 16})
    path = tmp_path / "g.zarr"
    assert run_sweep(Spec.from_dict(small), path, client, progress=False).ok
    hash1 = open_results(path).attrs["spec_hash"]
    grow = subprocess.run([sys.executable, "-m", "pipeline", "run", str(write_spec(tmp_path, large)), "--store",
                           str(path), "--workers", "1", "--no-progress"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert grow.returncode == 0, grow.stderr
    assert f"grew {path} in place: grid.seeds 8 -> 16 values" in grow.stderr
    assert "8 blocks computed, 8 already done, 0 failed, of 16" in grow.stdout
    hash2 = open_results(path).attrs["spec_hash"]
    assert hash2 == Spec.from_dict(large).hash != hash1

    status = CliRunner().invoke(main, ["status", str(path)])
    assert status.exit_code == 0, status.output
    assert f"history:   created {open_results(path).attrs['created']} from spec {hash1[:12]}" in status.output
    assert f"grid.seeds 8 -> 16 values (spec {hash2[:12]})" in status.output
    assert "blocks:    16 of 16 done" in status.output
    history = json.loads(CliRunner().invoke(main, ["status", str(path), "--json"]).output)["history"]
    assert [h["spec_hash"] for h in history] == [hash1]
    assert history[0]["spec"]["grid"]["seeds"] == list(range(8)) and history[0]["grown"] == {"grid.seeds": [8, 16]}


def test_cli_refusal_is_one_paragraph_with_exit_2(tmp_path, client):
    from click.testing import CliRunner

    path = tmp_path / "s.zarr"
    assert run_sweep(spec_of(), path, client, progress=False).ok
    other = write_spec(tmp_path, raw_spec(BASE, noise={"draws": 5}))
    before = snapshot(path)
    r = CliRunner().invoke(main, ["run", str(other), "--store", str(path), "--no-progress"])
    assert r.exit_code == 2, r.output
    assert "noise.draws is 4 there and 5 in the new spec" in r.output and "Traceback" not in r.output
    assert snapshot(path) == before


def test_one_file_per_cell_grows_with_the_files_of_the_new_cells(tmp_path, client, digits_zoo):
    # trained networks, a file per (L, m, seed), 20 inputs with labels: L and seeds grow at once
    np.save(tmp_path / "x.npy", digits_zoo["x"][:20])
    np.save(tmp_path / "y.npy", digits_zoo["y"][:20])
    models = tmp_path / "models"
    shutil.copytree(digits_zoo["models"], models)

    def spec(L, seeds):
        return Spec.from_dict({
            "random_seed": 3,
            "network": {"init": str(models / "digits_L{L}_m{m}_seed{seed}.safetensors"),
                        "input": str(tmp_path / "x.npy"), "labels": str(tmp_path / "y.npy"),
                        "input_dim": 64, "output_dim": 10},
            "grid": {"L": L, "m": [16], "ratio": [0.1, 0.3], "layer": [1, 2], "seeds": seeds},
            "noise": {"draws": 4}, "execution": {"seeds_per_block": 1}})

    path, _ = grow_case(tmp_path, client, spec([2], 1), spec([2, 3], 2), blocks_new=3, blocks_kept=1)
    # a network of the store replaced by another: refused, naming its file
    shutil.copy(models / "digits_L2_m16_seed1.safetensors", models / "digits_L2_m16_seed0.safetensors")
    before = snapshot(path)
    with pytest.raises(StoreError, match="network.files.init L=2 m=16 seed=0 is "):
        run_sweep(spec([2, 3], 2), path, client, progress=False)
    assert snapshot(path) == before
