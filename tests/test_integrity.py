"""A store that cannot silently lie: checksums, `nnsweep verify`, damaged blocks named by every reader,
non-finite results refused, creation that completes or is recognised as incomplete.

Stores are real zarr stores in tmp_path, filled in this process; `nnsweep run` uses a real embedded
cluster where recomputing is the point.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from pipeline import plan, store
from pipeline.cli import main
from pipeline.errors import ResultNotFinite, StoreError
from pipeline.execute import RunSummary
from pipeline.measure import measure_block
from pipeline.spec import Spec

from pipeline_helpers import (
    RESULT_VARS, SMALL, build_store, chunk_path, raw_spec, read_arrays, snapshot, write_spec,
)

pytestmark = pytest.mark.timeout(240)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *needles, status=2):
    out = result.output
    assert result.exit_code == status, out
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, out
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A complete store of the small spec, never modified: tests copy it."""
    path = tmp_path_factory.mktemp("pristine") / "s.zarr"
    build_store(path, SMALL)
    return path


@pytest.fixture
def damaged(pristine, tmp_path):
    """A copy of the store with one chunk file deleted and one byte flipped in another block's chunk."""
    path = tmp_path / "s.zarr"
    shutil.copytree(pristine, path)
    spec = Spec.from_dict(SMALL)
    blocks = sorted(plan.all_blocks(spec), key=lambda k: (k.L_index, k.m_index, k.seed_start))
    lost, flipped = blocks[1], blocks[6]
    chunk_path(path, "delta_norm", lost, spec).unlink()
    target = chunk_path(path, "bound", flipped, spec)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x10
    target.write_bytes(bytes(data))
    return path, lost, flipped


def test_every_array_carries_a_crc32c_checksum(pristine):
    group = zarr.open_group(str(pristine), mode="r")
    for name in [*store.VARIABLES, *store.dim_lengths(Spec.from_dict(SMALL))]:
        codecs = [c.to_dict()["name"] for c in group[name].metadata.codecs]
        assert codecs[-1] == "crc32c", (name, codecs)


def test_verify_of_a_sound_store_finds_nothing(pristine):
    before = snapshot(pristine)
    result = invoke("verify", pristine, "--no-progress", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["blocks_done"] == report["blocks_total"] == 16 and report["damage"] == []
    assert report["checksums"] is True
    assert snapshot(pristine) == before


def test_verify_names_both_damaged_blocks(damaged):
    path, lost, flipped = damaged
    before = snapshot(path)
    result = invoke("verify", path, "--no-progress")
    assert result.exit_code == 1, result.output
    assert f"{lost} (delta_norm chunk is missing)" in result.output
    assert f"{flipped} (bound fails its crc32c checksum)" in result.output
    assert "2 damaged blocks" in result.output
    assert snapshot(path) == before  # verify without --repair writes nothing


def test_repair_then_run_gives_the_undamaged_store(damaged, pristine, tmp_path):
    path, lost, flipped = damaged
    result = invoke("verify", path, "--repair", "--no-progress")
    assert result.exit_code == 0 and "repaired: 2 blocks" in result.output, result.output
    done = store.done_mask(str(path))
    spec = Spec.from_dict(SMALL)
    for key in (lost, flipped):
        assert not done[key.L_index, key.m_index, key.seed_start]
    assert done.sum() == done.size - 4  # two blocks of two seeds, nothing else
    assert invoke("verify", path, "--no-progress").exit_code == 0

    spec_path = write_spec(tmp_path, SMALL)
    run = invoke("run", spec_path, "--store", path, "--workers", "1", "--no-progress")
    assert run.exit_code == 0, run.output
    assert "2 blocks computed, 14 already done" in run.output
    assert store.done_mask(str(path)).all()
    now, ref = read_arrays(path, (*RESULT_VARS, "done")), read_arrays(pristine, (*RESULT_VARS, "done"))
    for name in (*RESULT_VARS, "done"):
        np.testing.assert_array_equal(now[name], ref[name], err_msg=name)
    # byte for byte: every chunk of the results is the one the undamaged run wrote
    for name in (*RESULT_VARS, "done"):
        for key in (lost, flipped):
            assert chunk_path(path, name, key, spec).read_bytes() == chunk_path(pristine, name, key, spec).read_bytes()


@pytest.mark.parametrize("command", [
    ("query", "--reduce", "mean"),
    ("query", "--var", "bound"),
    ("fit", "--bootstrap", "10", "--no-progress"),
    ("report", "--bootstrap", "10", "--no-progress", "--out", "REPORT"),
])
def test_readers_name_the_damaged_block(damaged, tmp_path, command):
    path, lost, flipped = damaged
    before = snapshot(path)
    args = [a if a != "REPORT" else tmp_path / "report" for a in command]
    result = invoke(args[0], path, *args[1:])
    # rel_change reads delta_norm (the lost chunk); bound, fit and report read the flipped chunk too
    needles = [str(lost)] if command[0] == "query" and "bound" not in command else [str(flipped)]
    assert_one_line_error(result, "is damaged", "nnsweep verify", *needles)
    assert snapshot(path) == before


def test_status_counts_a_block_with_an_unreadable_done_mark_as_not_done(pristine, tmp_path):
    path = tmp_path / "s.zarr"
    shutil.copytree(pristine, path)
    spec = Spec.from_dict(SMALL)
    key = plan.all_blocks(spec)[0]
    mark = chunk_path(path, "done", key, spec)
    mark.write_bytes(b"\0" + mark.read_bytes()[1:])
    result = invoke("status", path)
    assert result.exit_code == 0 and "15 of 16 done" in result.output, result.output
    report = json.loads(invoke("verify", path, "--json", "--no-progress").output)
    assert [(d["L"], d["m"], d["variable"]) for d in report["damage"]] == [(key.L, key.m, "done")]


def test_non_finite_results_are_refused_and_not_marked_done(tmp_path):
    spec, _ = store.create_or_resume(Spec.from_dict(SMALL), str(tmp_path / "s.zarr"))
    key = plan.all_blocks(spec)[0]
    result = measure_block(spec, key.L, key.m, key.seeds)
    before = snapshot(tmp_path / "s.zarr")
    result.delta_norm[0, 0, 1, 0, 2] = np.inf  # (ratio, layer, seed, input, draw)
    with pytest.raises(ResultNotFinite) as info:
        store.write_block(str(tmp_path / "s.zarr"), key, result, 0.1)
    msg = str(info.value)
    assert "delta_norm holds 1 non-finite values (inf)" in msg
    assert f"ratio={spec.grid.ratio[0]}, layer={spec.grid.layer[0]}, seed={key.seeds[1]}, input=0, draw=2" in msg
    assert "rerunning gives the same result" in msg
    assert snapshot(tmp_path / "s.zarr") == before  # refused before anything was written


def test_nan_where_a_layer_does_not_exist_is_accepted(tmp_path):
    spec, _ = store.create_or_resume(Spec.from_dict(SMALL), str(tmp_path / "s.zarr"))
    key = next(k for k in plan.all_blocks(spec) if k.L == 2)  # layer 3 does not exist: NaN there is right
    result = measure_block(spec, key.L, key.m, key.seeds)
    assert np.isnan(result.delta_norm[:, 2]).all()
    store.write_block(str(tmp_path / "s.zarr"), key, result, 0.1)
    assert store.done_mask(str(tmp_path / "s.zarr"))[key.L_index, key.m_index, key.seed_start]


def test_a_run_whose_blocks_overflow_fails_without_saying_rerun(tmp_path):
    raw = raw_spec(grid={"L": [2], "m": [8], "ratio": [1e300], "seeds": 2})
    result = invoke("run", write_spec(tmp_path, raw), "--store", tmp_path / "o.zarr", "--workers", "1",
                    "--no-progress")
    assert result.exit_code == 1, result.output
    assert "ResultNotFinite" in result.output and "overflow float64" in result.output
    assert "Rerun" not in result.output
    assert not store.done_mask(str(tmp_path / "o.zarr")).any()
    mixed = RunSummary("s", 2, 0, failed=[("a", "ResultNotFinite: x"), ("b", "OSError: disk full")])
    assert "Rerun the same command" in str(mixed)


# --------------------------------------------------------------------------- damaged or half-made stores

def test_store_missing_its_done_array(pristine, tmp_path):
    path = tmp_path / "s.zarr"
    shutil.copytree(pristine, path)
    shutil.rmtree(path / "done")
    before = snapshot(path)
    for args in (("status", path), ("query", path), ("fit", path, "--no-progress"), ("verify", path)):
        assert_one_line_error(invoke(*args), "the array 'done' is missing")
    result = invoke("run", write_spec(tmp_path, SMALL), "--store", path, "--no-progress")
    assert_one_line_error(result, "the array 'done' is missing")
    assert snapshot(path) == before


def test_store_with_corrupt_array_metadata(pristine, tmp_path):
    path = tmp_path / "s.zarr"
    shutil.copytree(pristine, path)
    (path / "bound" / "zarr.json").write_text("{not json")
    assert_one_line_error(invoke("status", path), "the array 'bound' has unreadable metadata")
    assert_one_line_error(invoke("verify", path), "the array 'bound' has unreadable metadata")


def test_half_created_store_is_recognised_and_recreated(tmp_path):
    spec = Spec.from_dict(SMALL)
    path = tmp_path / "s.zarr"
    # what a kill during creation leaves: the root group with its creating mark, some arrays
    ds = store.template(spec)[["delta_norm"]]
    ds.attrs = {store.CREATING: spec.hash}
    ds.to_zarr(path, mode="w-", compute=False, zarr_format=3, consolidated=False)
    for args in (("status", path), ("query", path), ("verify", path)):
        assert_one_line_error(invoke(*args), "was not completely created")
    spec2, existed = store.create_or_resume(spec, str(path))
    assert not existed
    attrs = store.read_attrs(str(path))
    assert attrs["spec_hash"] == spec.hash and store.CREATING not in attrs
    store.check_arrays(str(path))


def test_the_root_mark_is_written_last(tmp_path, monkeypatch):
    """A failure while the arrays are written leaves no results store behind."""
    spec = Spec.from_dict(SMALL)
    path = tmp_path / "s.zarr"
    put = zarr.core.attributes.Attributes.put
    arrays_when_marked = []

    def fail_on_mark(self, attrs):
        if "spec_hash" not in attrs:
            return put(self, attrs)
        arrays_when_marked.extend(sorted(p.name for p in path.iterdir() if (p / "zarr.json").exists()))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zarr.core.attributes.Attributes, "put", fail_on_mark)
    with pytest.raises(StoreError, match="could not create the store .*No space left on device"):
        store.create_or_resume(spec, str(path))
    # every array existed before the mark was written, and the failed store was removed
    assert set(store.VARIABLES) | set(store.dim_lengths(spec)) == set(arrays_when_marked)
    assert not path.exists()


def test_new_store_in_a_read_only_directory(tmp_path):
    # root may write anywhere but in sysfs, which refuses new files to everyone
    ro = Path("/sys") if os.geteuid() == 0 else tmp_path / "ro"
    if ro != Path("/sys"):
        ro.mkdir()
        ro.chmod(0o555)
    before = sorted(os.listdir(ro))
    try:
        result = invoke("run", write_spec(tmp_path, SMALL), "--store", ro / "nnsweep-test.zarr", "--no-progress")
        assert_one_line_error(result, "cannot create the lock file", "Permission denied", "Nothing was written")
        assert sorted(os.listdir(ro)) == before
    finally:
        ro.chmod(0o755) if ro != Path("/sys") else None


def test_dangling_symlink_as_store(tmp_path):
    link = tmp_path / "s.zarr"
    link.symlink_to(tmp_path / "nowhere")
    result = invoke("run", write_spec(tmp_path, SMALL), "--store", link, "--no-progress")
    assert_one_line_error(result, "dangling symbolic link")
    assert_one_line_error(invoke("status", link), "dangling symbolic link")
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()


def test_store_path_too_long(tmp_path):
    long = tmp_path / ("x" * 300 + ".zarr")
    result = invoke("run", write_spec(tmp_path, SMALL), "--store", long, "--no-progress")
    assert_one_line_error(result, "File name too long")
    assert_one_line_error(invoke("status", long), "File name too long")
    assert len(result.output) < 600, result.output  # the path is shortened in the message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]
