"""Stores on an object store: s3:// against a real S3-compatible server (moto) on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import yaml

from pipeline import open_results
from pipeline.spec import load_spec
from pipeline.store import as_location, done_mask
from pipeline_helpers import RESULT_VARS, assert_bit_identical, reference_arrays

pytestmark = pytest.mark.timeout(300)

SPEC = {"name": "s3", "network": {"input_dim": 8, "output_dim": 3},
        "grid": {"L": [2, 3], "m": [8], "ratio": [0.1, 0.3], "seeds": 6}, "noise": {"draws": 3},
        "execution": {"seeds_per_block": 2}}


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto in server mode on a free loopback port, with a bucket; credentials are dummies."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "moto server did not start"
            time.sleep(0.2)
    opts = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    import s3fs

    s3fs.S3FileSystem(**opts).mkdir("nnsweep-test")
    yield opts
    proc.kill()
    proc.wait(timeout=10)


def env_without_aws():
    # no real AWS configuration may leak in: everything goes to the local endpoint
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, "AWS_EC2_METADATA_DISABLED": "true", "OMP_NUM_THREADS": "1"}


def run_cli(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True,
                          timeout=240, env=env_without_aws(), cwd=tmp_path)


def storage_args(opts):
    return [a for k, v in opts.items() for a in ("--storage-option", f"{k}={v}")]


@pytest.fixture(scope="module")
def s3_run(s3_server, tmp_path_factory):
    """One sweep into s3://, run by the CLI on two local workers."""
    tmp = tmp_path_factory.mktemp("s3run")
    spec = tmp / "s3.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    url = "s3://nnsweep-test/run.zarr"
    r = run_cli(tmp, "run", spec, "--store", url, "--workers", "2", "--no-progress", *storage_args(s3_server))
    return spec, url, r


def test_sweep_into_s3_store_matches_local(s3_server, s3_run, tmp_path):
    spec, url, r = s3_run
    assert r.returncode == 0, r.stderr
    assert "6 blocks computed, 0 already done" in r.stdout
    loc = as_location(url, s3_server)
    assert done_mask(loc).all()
    remote = open_results(loc)
    assert_bit_identical({var: remote[var].values for var in RESULT_VARS}, reference_arrays(load_spec(spec)),
                         "s3 store against the in-process computation")
    assert remote.attrs["spec_hash"] == load_spec(spec).hash
    r = run_cli(tmp_path, "status", url, "--json", *storage_args(s3_server))
    assert r.returncode == 0, r.stderr
    assert '"blocks_done": 6' in r.stdout


def test_s3_resume_recomputes_only_missing_blocks(s3_server, s3_run, tmp_path):
    """A block whose done mark is cleared (as after an interrupted run) is recomputed, only it."""
    import zarr

    spec, url, _ = s3_run
    loc = as_location(url, s3_server)
    before = open_results(loc)["delta_norm"].values
    done = zarr.open_array(url, path="done", mode="r+", storage_options=s3_server)
    done[0, 0, 0:2] = 0   # the block L=2 m=8 seeds 0..1 is no longer marked done
    r = run_cli(tmp_path, "run", spec, "--store", url, "--workers", "1", "--no-progress", *storage_args(s3_server))
    assert r.returncode == 0, r.stderr
    assert "resuming s3://nnsweep-test/run.zarr: 5 of 6 blocks already done" in r.stderr
    assert "1 blocks computed, 5 already done" in r.stdout
    np.testing.assert_array_equal(open_results(loc)["delta_norm"].values, before)
    assert done_mask(loc).all()


def test_bad_storage_options_exit_2_without_writing(s3_server, tmp_path):
    spec = tmp_path / "s3.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    r = run_cli(tmp_path, "run", spec, "--store", "s3://nnsweep-test/bad.zarr", "--workers", "1",
                "--no-progress", *storage_args(s3_server), "--storage-option", "no_such_option=1")
    assert r.returncode == 2, r.stderr
    assert "s3://nnsweep-test/bad.zarr" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(tmp_path, "run", spec, "--store", tmp_path / "local.zarr", "--no-progress",
                "--storage-option", "anon=true")
    assert r.returncode == 2 and "storage options" in r.stderr, r.stderr
    import s3fs

    assert not s3fs.S3FileSystem(**s3_server).exists("nnsweep-test/bad.zarr")
    assert not (tmp_path / "local.zarr").exists()
