"""The nnsweep CLI end to end: kill and resume, failing blocks, bad input, status and query.

`nnsweep run` is killed for real (SIGKILL of a subprocess and its embedded
cluster); bad input is checked in-process with CliRunner, where every error
must come before a cluster starts and leave the store byte for byte as it was.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import re
import signal
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import xarray as xr
import zarr
from click.testing import CliRunner

from pipeline import plan, store
from pipeline.cli import main

from pipeline_helpers import (
    RESULT_VARS, SMALL, assert_bit_identical, block_chunk_dir, chunk_path, fill_in_process, make_spec, n_done_seeds,
    raw_spec, read_arrays, reference_arrays, snapshot, wait_until, write_spec,
)

pytestmark = pytest.mark.timeout(240)

# 12 blocks of two L=8, m=256 networks (about 0.2 s each): long enough to kill mid-run.
KILL = raw_spec(name="killme", random_seed=3, network={"input_dim": 64, "output_dim": 10},
                grid={"L": [8], "m": [256], "ratio": [0.1, 0.3], "layer": "all", "seeds": 24},
                noise={"draws": 32}, execution={"seeds_per_block": 2})


def invoke(*args: str):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def assert_user_error(result, *needles: str) -> None:
    """Exit status 2, every needle in the message, no traceback, no cluster started."""
    out = result.output
    assert result.exit_code == 2, out
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out and "dashboard:" not in out, out
    for needle in needles:
        assert needle in out, f"{needle!r} not in {out!r}"


# ---------------------------------------------------------------------------------------------
# SIGKILL of `nnsweep run`, then the same command again
# ---------------------------------------------------------------------------------------------

def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def group_alive(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of a process group."""
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return out


def test_sigkill_mid_run_then_resume_gives_identical_results(tmp_path, procs):
    spec_path = write_spec(tmp_path, KILL, "kill.yaml")
    path = tmp_path / "kill.zarr"
    first = procs.nnsweep_run(spec_path, path, "first", "--workers", "2")
    wait_until(lambda: n_done_seeds(path) >= 2 or first.poll() is not None, 180, "the first block")
    # Stop the client, which holds the embedded scheduler, as soon as a block is done: from then on
    # the workers can finish only the few blocks they already hold, so the run cannot complete.
    os.kill(first.pid, signal.SIGSTOP)
    workers = psutil.Process(first.pid).children(recursive=True)
    assert first.poll() is None and n_done_seeds(path) < 24, "the run finished before it could be stopped:\n" \
        + procs.log("first")
    assert len(workers) >= 2, "expected the embedded cluster's worker processes"

    t_kill = time.monotonic()
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    # The workers are not killed with the client: they must notice on their own and exit,
    # or they could go on writing into the store while the rerun computes the same blocks.
    wait_until(lambda: not any(alive(w) for w in workers), 20, "the killed client's worker processes to exit")
    orphan_lifetime = time.monotonic() - t_kill
    print(f"\n{len(workers)} child processes of the SIGKILLed client ({', '.join(w.name() for w in workers)}) "
          f"gone {orphan_lifetime:.2f} s after the kill")
    assert orphan_lifetime < 10
    assert group_alive(first.pid) == [], "processes of the killed run survive in its process group"

    quiet = snapshot(path)
    time.sleep(0.5)
    assert snapshot(path) == quiet, "something still writes into the store after the client was killed"
    spec, _ = store.check_store(make_spec(KILL), str(path))
    pending = plan.pending_blocks(spec, store.done_mask(str(path)))
    finished = [k for k in plan.all_blocks(spec) if k not in pending]
    n_before = len(finished)
    assert 0 < n_before < 12
    kept = {p: (p.read_bytes(), p.stat().st_mtime_ns)
            for k in finished for v in store.VARIABLES for p in [chunk_path(path, v, k, spec)]}

    second = procs.nnsweep_run(spec_path, path, "second", "--workers", "2")
    assert second.wait(timeout=180) == 0, procs.log("second")
    text = procs.log("second")
    assert f"resuming {path}: {n_before} of 12 blocks already done, {12 - n_before} to compute" in text, text
    assert f"{12 - n_before} blocks computed, {n_before} already done, 0 failed, of 12" in text, text
    assert "Traceback" not in text
    for p, (data, mtime) in kept.items():  # done blocks were neither recomputed nor rewritten
        assert p.read_bytes() == data and p.stat().st_mtime_ns == mtime, p
    assert store.done_mask(str(path)).all()
    assert_bit_identical(read_arrays(path), reference_arrays(spec), "killed and resumed vs uninterrupted")


# ---------------------------------------------------------------------------------------------
# A block that fails, on a running scheduler (--scheduler)
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def scheduler(local_client):
    return local_client(2).scheduler.address


def test_failing_block_is_reported_run_exits_nonzero_and_rerun_retries_only_it(tmp_path, scheduler):
    spec_path = write_spec(tmp_path, SMALL)
    path = tmp_path / "fail.zarr"
    spec, _ = store.create_or_resume(make_spec(), str(path))
    bad = plan.all_blocks(spec)[2]
    blocker = block_chunk_dir(path, bad, spec)  # a file where a chunk directory goes

    first = invoke("run", spec_path, "--store", path, "--scheduler", scheduler, "--no-progress")
    assert first.exit_code == 1, first.output
    assert "Traceback" not in first.output
    assert "15 blocks computed, 0 already done, 1 failed, of 16" in first.output, first.output
    line = next(s for s in first.output.splitlines() if s.strip().startswith("failed:"))
    assert f"failed: {bad}: FileExistsError" in line and str(blocker) in line, line
    assert "Rerun the same command" in first.output
    assert store.done_mask(str(path)).sum() == 32 - 2  # seeds: 8 per (L, m), 2 in the failed block

    blocker.unlink()
    second = invoke("run", spec_path, "--store", path, "--scheduler", scheduler, "--no-progress")
    assert second.exit_code == 0, second.output
    assert "resuming" in second.output and "15 of 16 blocks already done, 1 to compute" in second.output
    assert "1 blocks computed, 15 already done, 0 failed, of 16" in second.output, second.output
    assert_bit_identical(read_arrays(path), reference_arrays(spec), "after the rerun")


# ---------------------------------------------------------------------------------------------
# Bad input: exit 2, a message naming the thing, nothing written, no cluster started
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def spec_file(tmp_path) -> Path:
    return write_spec(tmp_path, SMALL)


def test_resume_into_a_store_of_another_spec_is_refused(tmp_path, spec_file):
    path = tmp_path / "other.zarr"
    fill_in_process(make_spec(random_seed=1234), path, skip=8)
    before = snapshot(path)
    result = invoke("run", spec_file, "--store", path, "--no-progress")
    assert_user_error(result, str(path), "another spec", make_spec().hash[:12], "Nothing was written")
    assert snapshot(path) == before


@pytest.mark.parametrize("kind,needle", [
    ("file", "an existing file"),
    ("foreign_zarr", "zarr store not made by nnsweep"),
    ("foreign_dir", "not a zarr store"),
])
def test_store_path_that_is_not_a_results_store_is_refused(tmp_path, spec_file, kind, needle):
    path = tmp_path / "target"
    if kind == "file":
        path.write_bytes(b"precious data\n")
    elif kind == "foreign_zarr":
        group = zarr.open_group(str(path), mode="w")
        group.create_array("mine", shape=(4,), dtype="i4")[...] = np.arange(4)
        group.attrs["owner"] = "someone else"
    else:
        path.mkdir()
        (path / "thesis.tex").write_text("\\section{Intro}")
        (path / "sub").mkdir()
    before = snapshot(path)
    result = invoke("run", spec_file, "--store", path, "--no-progress")
    assert_user_error(result, str(path), needle)
    assert snapshot(path) == before
    status = invoke("status", path)
    assert_user_error(status, str(path))
    assert snapshot(path) == before


def test_missing_spec_is_refused(tmp_path):
    path = tmp_path / "new.zarr"
    result = invoke("run", tmp_path / "nope.yaml", "--store", path, "--no-progress")
    assert_user_error(result, str(tmp_path / "nope.yaml"), "does not exist")
    assert not path.exists()


def test_invalid_spec_is_refused_naming_the_field(tmp_path):
    bad = write_spec(tmp_path, raw_spec(grid={"L": [2, 0]}), "bad.yaml")
    path = tmp_path / "new.zarr"
    result = invoke("run", bad, "--store", path, "--no-progress")
    assert_user_error(result, "grid.L", "0")
    assert not path.exists()


def test_zero_seeds_per_block_is_refused(tmp_path, spec_file):
    path = tmp_path / "new.zarr"
    result = invoke("run", spec_file, "--store", path, "--seeds-per-block", "0", "--no-progress")
    assert_user_error(result, "--seeds-per-block", "0")
    assert not path.exists()


def test_seeds_per_block_different_from_the_stores_is_refused(tmp_path, spec_file):
    path = tmp_path / "spb.zarr"
    fill_in_process(make_spec(), path, skip=5)  # 2 seeds per block
    before = snapshot(path)
    result = invoke("run", spec_file, "--store", path, "--seeds-per-block", "4", "--no-progress")
    assert_user_error(result, str(path), "holds 2 seeds per block", "--seeds-per-block 4")
    assert snapshot(path) == before


# ---------------------------------------------------------------------------------------------
# status and query on a store with one block missing
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def partial_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("partial") / "partial.zarr"
    spec, left = fill_in_process(make_spec(), path, skip=1)
    assert [(k.L, k.m, k.seeds) for k in left] == [(2, 8, (6, 7))]
    return spec, path


@pytest.fixture(scope="module")
def direct(partial_store) -> xr.Dataset:
    """The store read eagerly with xarray alone, rel_change computed here."""
    _, path = partial_store
    ds = xr.open_zarr(path, consolidated=False).load()
    return ds.assign(rel_change=ds["delta_norm"] / ds["output_norm"])


def test_status_json_reports_progress_and_provenance(partial_store):
    spec, path = partial_store
    result = invoke("status", path, "--json")
    assert result.exit_code == 0, result.output
    s = json.loads(result.output)
    assert (s["blocks_done"], s["blocks_total"], s["seeds_per_block"]) == (15, 16, 2)
    assert s["spec_hash"] == spec.hash
    assert s["grid"]["L"] == [2, 3] and s["grid"]["ratio"] == [0.05, 0.1, 0.3]
    for pkg in ("numpy", "dask", "xarray", "zarr"):
        assert s["versions"][pkg] == metadata.version(pkg), pkg
    created = datetime.datetime.fromisoformat(s["created"])
    assert abs(datetime.datetime.now(datetime.timezone.utc) - created) < datetime.timedelta(hours=1)
    text = invoke("status", path)
    assert text.exit_code == 0 and "15 of 16 done" in text.output and spec.hash[:12] in text.output


def test_query_csv_mean_matches_xarray(partial_store, direct):
    _, path = partial_store
    result = invoke("query", path, "--sel", "ratio=0.1", "--reduce", "mean", "--over", "layer,seed,input,draw",
                    "--format", "csv")
    assert result.exit_code == 0, result.output
    got = pd.read_csv(io.StringIO(result.output)).set_index(["L", "m", "ratio"])["rel_change"]
    want = direct["rel_change"].sel(ratio=[0.1]).mean(["layer", "seed", "input", "draw"]).to_series()
    assert list(got.index) == list(want.index)
    np.testing.assert_allclose(got.values, want.values, rtol=1e-12)


def test_query_json_median_default_over_seed_input_and_draw(partial_store, direct):
    _, path = partial_store
    result = invoke("query", path, "--var", "delta_norm", "--sel", "L=3", "--sel", "m=16", "--reduce",
                    "median", "--format", "json")
    assert result.exit_code == 0, result.output
    got = pd.DataFrame(json.loads(result.output)).set_index(["L", "m", "ratio", "layer"])["delta_norm"]
    want = direct["delta_norm"].sel(L=[3], m=[16]).median(["seed", "input", "draw"]).to_series()
    assert list(got.index) == list(want.index) and len(got) == 3 * 3
    np.testing.assert_allclose(got.values, want.values, rtol=1e-9)  # full precision: see the test below


@pytest.mark.parametrize("var", ["delta_norm", "accuracy", "output_norm"])
def test_query_help_names_the_dimensions_the_default_reduces_over(partial_store, direct, var):
    """--reduce without --over removes exactly the dimensions --help names (those the variable has)."""
    _, path = partial_store
    text = " ".join(invoke("query", "--help").output.split())
    named = re.search(r"\(default: over ([^)]*)\)", text).group(1)
    named = [w for w in re.split(r"[ ,]+", named) if w in direct.dims]
    assert named == ["seed", "input", "draw"]
    result = invoke("query", path, "--var", var, "--reduce", "count", "--format", "csv")
    assert result.exit_code == 0, result.output
    kept = set(pd.read_csv(io.StringIO(result.output)).columns) - {var}
    assert set(direct[var].dims) - kept == set(named) & set(direct[var].dims)


def test_query_count_skips_missing_and_absent_cells(partial_store, direct):
    _, path = partial_store
    result = invoke("query", path, "--sel", "L=2", "--sel", "m=8", "--sel", "ratio=0.3", "--reduce", "count",
                    "--format", "csv")
    assert result.exit_code == 0, result.output
    got = pd.read_csv(io.StringIO(result.output)).set_index("layer")["rel_change"]
    # seeds 6 and 7 are not computed yet and layer 3 does not exist for L = 2
    assert got.to_dict() == {1: 6 * 4, 2: 6 * 4, 3: 0}
    want = direct["rel_change"].sel(L=2, m=8, ratio=0.3).count(["seed", "input", "draw"]).values
    assert got.tolist() == want.tolist()


def test_query_table_max_of_hidden_flip_fraction(partial_store, direct):
    _, path = partial_store
    result = invoke("query", path, "--var", "hidden_flip_fraction", "--sel", "L=3", "--sel", "ratio=0.3",
                    "--reduce", "max", "--over", "seed,input,draw")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()]
    values = [float(r[-1]) for r in rows if r and re.fullmatch(r"[0-9.e+-]+", r[-1]) and len(r) >= 2
              and r[-2] in {"1", "2", "3"}]
    want = direct["hidden_flip_fraction"].sel(L=3, ratio=0.3).max(["seed", "input", "draw"]).transpose("m", "layer").values
    assert len(values) == want.size == 6
    np.testing.assert_allclose(values, want.ravel(), rtol=1e-5)


def test_query_without_reduce_returns_the_raw_cells(partial_store):
    _, path = partial_store
    result = invoke("query", path, "--var", "delta_norm", "--sel", "L=3", "--sel", "m=8", "--sel", "ratio=0.05",
                    "--sel", "layer=2", "--sel", "seed=5", "--format", "csv")
    assert result.exit_code == 0, result.output
    got = pd.read_csv(io.StringIO(result.output))["delta_norm"].values
    want = read_arrays(path, ["delta_norm"])["delta_norm"][1, 0, 0, 1, 5, 0]
    assert np.array_equal(got, want)  # CSV writes floats with all their digits


@pytest.mark.parametrize("args,needles", [
    (("--sel", "depth=3"), ("depth=3", "L, m, ", "ratio", "layer", "seed", "draw")),
    (("--sel", "ratio=0.7"), ("ratio=0.7", "0.05, 0.1, 0.3")),
    (("--sel", "L=abc"), ("L=abc", "2, 3")),
    (("--sel", "ratio"), ("'ratio'", "DIM=VALUE")),
    (("--var", "nonsense"), ("nonsense", "delta_norm")),
    (("--reduce", "mean", "--over", "width"), ("width",)),
    (("--over", "seed"), ("--reduce",)),
])
def test_bad_query_arguments_exit_2_naming_them(partial_store, args, needles):
    _, path = partial_store
    before = snapshot(path)
    assert_user_error(invoke("query", path, *args), *needles)
    assert snapshot(path) == before


def test_query_sel_on_a_dimension_the_variable_lacks_is_a_user_error(partial_store):
    """output_norm has no layer dimension: a clear message, not a KeyError traceback."""
    _, path = partial_store
    assert_user_error(invoke("query", path, "--var", "output_norm", "--sel", "layer=1"), "layer", "output_norm")


def test_query_results_cover_every_variable(partial_store, direct):
    _, path = partial_store
    for var in RESULT_VARS:
        over = [d for d in direct[var].dims if d != "L"]
        result = invoke("query", path, "--var", var, "--reduce", "mean", "--over", ",".join(over),
                        "--format", "csv")
        assert result.exit_code == 0, (var, result.output)
        got = pd.read_csv(io.StringIO(result.output)).set_index("L")[var]
        want = direct[var].mean(over).to_series().dropna()  # accuracy is NaN without labels
        assert list(got.index) == list(want.index) and (len(got) == 2 or var in ("accuracy", "clean_accuracy"))
        if want.empty:
            continue
        np.testing.assert_allclose(got.values, want.values, rtol=1e-12)


def test_query_json_keeps_every_digit(partial_store):
    """JSON output must not round: small values (rel_change at small r, tiny outputs) would lose
    digits or become 0, and a fit of the ratio exponent reads these numbers."""
    _, path = partial_store
    args = ("query", path, "--sel", "L=3", "--sel", "m=16", "--reduce", "mean")
    csv = pd.read_csv(io.StringIO(invoke(*args, "--format", "csv").output))["rel_change"].values
    js = pd.DataFrame(json.loads(invoke(*args, "--format", "json").output))["rel_change"].values
    assert np.array_equal(js, csv), f"JSON {js.tolist()} vs CSV {csv.tolist()}"
