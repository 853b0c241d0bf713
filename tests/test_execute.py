"""execute: run_sweep on real LocalClusters (worker processes on 127.0.0.1), real zarr stores.

Results must depend only on the spec: block size, worker count and resuming
after an interruption may not change a single bit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import zarr

from pipeline import plan, store
from pipeline.errors import StoreError
from pipeline.execute import run_sweep
from pipeline.measure import measure_block

from pipeline_helpers import (
    RESULT_VARS,
    assert_bit_identical, block_chunk_dir, chunk_path, fill_in_process, make_spec, read_arrays, reference_arrays,
    snapshot,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def cluster1(local_client):
    return local_client(1)


@pytest.fixture
def cluster2(local_client):
    return local_client(2)


@pytest.fixture(scope="module")
def reference():
    return reference_arrays(make_spec())


def assert_scheduler_holds_no_tasks(client):
    n = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
    assert n == 0, f"{n} tasks (and their results) are still held on the scheduler after the run"


@pytest.mark.parametrize("workers,spb", [(1, 2), (1, 4), (2, 2), (2, 4), (2, 3)])
def test_results_do_not_depend_on_block_size_or_workers(request, tmp_path, reference, workers, spb):
    client = request.getfixturevalue(f"cluster{workers}")
    assert len(client.nthreads()) == workers
    spec = make_spec(execution={"seeds_per_block": spb})
    path = tmp_path / "run.zarr"
    summary = run_sweep(spec, str(path), client, progress=False)
    n_blocks = 2 * 2 * math.ceil(8 / spb)
    assert summary.ok, summary.failed
    assert (summary.total, summary.done, summary.skipped) == (n_blocks, n_blocks, 0)
    assert summary.cells == plan.n_cells(spec)
    assert f"{n_blocks} blocks computed, 0 already done, 0 failed, of {n_blocks}" in str(summary)
    assert_bit_identical(read_arrays(path), reference, f"{workers} workers, {spb} seeds per block")
    assert zarr.open_array(str(path), path="delta_norm", mode="r").chunks == (1, 1, 3, 3, spb, 1, 4)
    assert store.done_mask(str(path)).all()
    wall = zarr.open_array(str(path), path="wall_time", mode="r")[...]
    assert np.all(np.isfinite(wall) & (wall > 0))
    assert_scheduler_holds_no_tasks(client)


def test_resume_computes_only_missing_blocks_and_overwrites_a_torn_one(tmp_path, reference, cluster2):
    """The state a killed run leaves: some blocks done, one block's data written but not marked
    done (killed between the two writes), the rest missing. Resuming must give the same bits."""
    path = tmp_path / "resume.zarr"
    spec, left = fill_in_process(make_spec(), path, skip=5)  # done blocks have wall_time 0.25
    torn = left[0]
    r = torn.region()
    for name in ("delta_norm", "hidden_flip_fraction"):
        arr = zarr.open_array(str(path), path=name, mode="r+")
        arr[r["L"], r["m"], :, :, r["seed"], :] = 12345.0  # a stale chunk without a done mark
    assert chunk_path(path, "delta_norm", torn, spec).is_file()
    done_before = store.done_mask(str(path))
    summary = run_sweep(spec, str(path), cluster2, progress=False)
    assert summary.ok, summary.failed
    assert (summary.total, summary.skipped, summary.done) == (16, 11, 5)
    assert "5 blocks computed, 11 already done" in str(summary)
    assert_bit_identical(read_arrays(path), reference, "resumed run")
    wall = zarr.open_array(str(path), path="wall_time", mode="r")[...]
    assert np.all(wall[done_before] == 0.25), "a block that was already done was recomputed"
    assert np.all(wall[~done_before] != 0.25) and np.all(wall[~done_before] > 0)


def test_rerun_of_a_complete_store_computes_nothing_and_writes_nothing(tmp_path, cluster2):
    path = tmp_path / "complete.zarr"
    spec, _ = fill_in_process(make_spec(), path)
    before = snapshot(path)
    summary = run_sweep(spec, str(path), cluster2, progress=False)
    assert summary.ok and (summary.done, summary.skipped, summary.total) == (0, 16, 16)
    assert snapshot(path) == before


def test_a_failing_block_is_reported_the_others_go_on_and_a_rerun_retries_it(tmp_path, reference, cluster2):
    """A real write failure: a plain file sits where one block's delta_norm chunk directory goes."""
    path = tmp_path / "fail.zarr"
    spec, _ = store.create_or_resume(make_spec(), str(path))
    bad = plan.all_blocks(spec)[5]
    blocker = block_chunk_dir(path, bad, spec)
    summary = run_sweep(spec, str(path), cluster2, progress=False)
    assert not summary.ok
    assert (summary.done, len(summary.failed), summary.total) == (15, 1, 16)
    key, message = summary.failed[0]
    assert key == str(bad) and "FileExistsError" in message, summary.failed
    text = str(summary)
    assert f"failed: {bad}: FileExistsError" in text and "Rerun the same command" in text
    done = store.done_mask(str(path))
    assert [k for k in plan.all_blocks(spec) if k not in plan.pending_blocks(spec, done)] == \
        [k for k in plan.all_blocks(spec) if k != bad]

    blocker.unlink()
    again = run_sweep(spec, str(path), cluster2, progress=False)
    assert again.ok and (again.done, again.skipped) == (1, 15)
    assert_bit_identical(read_arrays(path), reference, "after retrying the failed block")


def test_run_sweep_refuses_a_store_of_another_spec_untouched(tmp_path, cluster1):
    path = tmp_path / "other.zarr"
    fill_in_process(make_spec(random_seed=99), path, skip=10)
    before = snapshot(path)
    with pytest.raises(StoreError, match="another spec"):
        run_sweep(make_spec(), str(path), cluster1, progress=False)
    assert snapshot(path) == before


def test_run_sweep_matches_measure_block_for_a_zoo_of_weight_files(tmp_path, cluster1):
    """Networks read from files (one per seed through a path template) and a set of inputs read from
    a .npy are read on the workers the same way: the store equals the kernel run in this process."""
    rng = np.random.default_rng(5)
    for seed in range(3):
        np.savez(tmp_path / f"w_seed{seed}.npz", W1=rng.standard_normal((8, 16)), W2=rng.standard_normal((8, 8)),
                 W3=rng.standard_normal((4, 8)), b1=rng.standard_normal(8), b2=np.zeros(8), b3=np.zeros(4))
    np.save(tmp_path / "x.npy", rng.standard_normal((5, 16)))
    np.save(tmp_path / "y.npy", rng.integers(0, 4, size=5))
    spec = make_spec(network={"init": str(tmp_path / "w_seed{seed}.npz"), "input": str(tmp_path / "x.npy"),
                              "labels": str(tmp_path / "y.npy"), "input_dim": 16},
                     grid={"L": [3], "m": [8], "ratio": [0.1, 0.2], "layer": "all", "seeds": 3})
    path = tmp_path / "file.zarr"
    summary = run_sweep(spec, str(path), cluster1, progress=False)
    assert summary.ok and summary.done == 2
    r = measure_block(spec, 3, 8, (0, 1, 2))
    got = read_arrays(path)
    for name in RESULT_VARS:
        assert np.array_equal(got[name][0, 0], getattr(r, name)), name
    assert got["delta_norm"].shape[-2:] == (5, spec.noise.draws) and np.isfinite(got["accuracy"]).all()


def test_same_spec_into_two_stores_on_one_scheduler_writes_both(tmp_path, cluster2):
    """Task keys include the store: two concurrent runs of one spec are not merged."""
    import threading

    from pipeline.spec import Spec
    from pipeline.store import done_mask

    spec = Spec.from_dict({"network": {"input_dim": 8, "output_dim": 3},
                           "grid": {"L": [2, 3], "m": [8], "ratio": [0.1], "seeds": 6},
                           "noise": {"draws": 2}, "execution": {"seeds_per_block": 2}})
    paths = [str(tmp_path / "A.zarr"), str(tmp_path / "B.zarr")]
    summaries = {}
    threads = [threading.Thread(target=lambda p=p: summaries.__setitem__(p, run_sweep(spec, p, cluster2,
                                                                                      progress=False)))
               for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for p in paths:
        assert summaries[p].ok and summaries[p].done == 6
        assert done_mask(p).all(), p


def test_cells_per_second_counts_every_input(tmp_path, cluster2):
    spec = make_spec(network={"n_inputs": 3}, grid={"L": [2], "m": [8], "seeds": 4})
    summary = run_sweep(spec, str(tmp_path / "in.zarr"), cluster2, progress=False)
    assert summary.ok, summary.failed
    assert summary.cells == plan.n_cells(spec) == 3 * 3 * 2 * 4 * 4  # inputs, ratios, layers, seeds, draws
    assert f"{summary.cells / summary.seconds:,.0f} cells/s" in str(summary)
