"""Real clusters and their faults: `dask scheduler` and `dask worker` subprocesses on 127.0.0.1.

Each test starts its own processes, bounds its waits, and kills what it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr

from pipeline.spec import load_spec
from pipeline_helpers import fill_in_process

pytestmark = pytest.mark.timeout(240)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONUNBUFFERED": "1"}
DASK = [sys.executable, "-m", "distributed.cli"]
FAULT_SPEC = {
    "name": "faults",
    "random_seed": 7,
    "network": {"input_dim": 64, "output_dim": 10},
    "grid": {"L": [8], "m": [256, 384], "ratio": [0.1, 0.3], "seeds": 24},
    "noise": {"draws": 64},
    "execution": {"seeds_per_block": 2},
}


class Procs:
    """Processes started by a test, killed (with their groups) at teardown."""

    def __init__(self, tmp: Path):
        self.tmp, self.procs = tmp, []

    def start(self, args: list[str], name: str, env: dict | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env or ENV,
                             start_new_session=True, cwd=self.tmp)
        self.procs.append(p)
        return p

    def scheduler(self, name: str = "scheduler", env: dict | None = None) -> tuple[subprocess.Popen, str]:
        sfile = self.tmp / f"{name}.json"
        p = self.start(DASK[:2] + ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                                   "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sfile)],
                       name, env)
        deadline = time.monotonic() + 30
        while not sfile.exists() or not sfile.read_text().strip():
            assert p.poll() is None and time.monotonic() < deadline, (self.tmp / f"{name}.log").read_text()
            time.sleep(0.1)
        return p, json.loads(sfile.read_text())["address"]

    def worker(self, address: str, name: str, *extra: str) -> subprocess.Popen:
        return self.start(DASK[:2] + ["distributed.cli.dask_worker", address, "--host", "127.0.0.1",
                                      "--nthreads", "1", "--no-dashboard", "--name", name, *extra], name)

    def wait_workers(self, address: str, n: int) -> None:
        from distributed import Client

        with Client(address, timeout=30) as c:
            c.wait_for_workers(n, timeout=60)

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            p.wait(timeout=10)


@pytest.fixture
def procs(tmp_path):
    ps = Procs(tmp_path)
    yield ps
    ps.kill_all()


@pytest.fixture
def fault_spec(tmp_path) -> Path:
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump(FAULT_SPEC))
    return path


def reference_store(spec_path: Path, path: Path) -> xr.Dataset:
    """The same spec computed block by block in this process: no Dask at all."""
    fill_in_process(load_spec(spec_path), path)
    return xr.open_zarr(path, consolidated=False)


def assert_same_results(a: Path, b: xr.Dataset) -> None:
    ds = xr.open_zarr(a, consolidated=False)
    assert ds["done"].values.all()
    for var in ("delta_norm", "hidden_flip_fraction", "bound", "output_norm"):
        np.testing.assert_array_equal(ds[var].values, b[var].values, err_msg=var)


def n_done(path: Path) -> int:
    try:
        return int(zarr.open_array(str(path), path="done", mode="r")[...].sum())
    except Exception:  # not created yet
        return 0


def nnsweep_run(procs: Procs, spec: Path, store_path: Path, address: str, name: str) -> subprocess.Popen:
    return procs.start([sys.executable, "-m", "pipeline", "run", str(spec), "--store", str(store_path),
                        "--scheduler", address, "--no-progress"], name)


def wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_sigkill_worker_mid_sweep_completes_identical(procs, fault_spec, tmp_path):
    _, address = procs.scheduler()
    w1 = procs.worker(address, "w1", "--no-nanny")
    procs.worker(address, "w2", "--no-nanny")
    procs.wait_workers(address, 2)
    out = tmp_path / "run.zarr"
    client = nnsweep_run(procs, fault_spec, out, address, "client")
    total = 2 * 24
    wait_until(lambda: n_done(out) >= 4, 120, "the first blocks")
    assert n_done(out) < total, "the sweep finished before the worker could be killed"
    os.kill(w1.pid, signal.SIGKILL)
    assert client.wait(timeout=180) == 0, (tmp_path / "client.log").read_text()
    log = (tmp_path / "client.log").read_text()
    assert "0 failed" in log
    assert_same_results(out, reference_store(fault_spec, tmp_path / "ref.zarr"))


def test_sigkill_scheduler_then_rerun_on_new_scheduler(procs, fault_spec, tmp_path):
    sched, address = procs.scheduler()
    old_workers = [procs.worker(address, f"w{i}", "--no-nanny", "--death-timeout", "5") for i in (1, 2)]
    procs.wait_workers(address, 2)
    out = tmp_path / "run.zarr"
    client = nnsweep_run(procs, fault_spec, out, address, "client")
    wait_until(lambda: n_done(out) >= 4, 120, "the first blocks")
    os.kill(sched.pid, signal.SIGKILL)
    rc = client.wait(timeout=120)
    log = (tmp_path / "client.log").read_text()
    assert rc != 0, log
    assert "lost the scheduler" in log and "Traceback" not in log, log
    # the old workers may still finish the blocks they hold; once they are gone the store is still
    for w in old_workers:
        os.kill(w.pid, signal.SIGKILL)
        w.wait(timeout=30)
    done_before = n_done(out)
    assert 0 < done_before < 48

    _, address2 = procs.scheduler("scheduler2")
    procs.worker(address2, "w3", "--no-nanny")
    procs.worker(address2, "w4", "--no-nanny")
    procs.wait_workers(address2, 2)
    client2 = nnsweep_run(procs, fault_spec, out, address2, "client2")
    assert client2.wait(timeout=180) == 0, (tmp_path / "client2.log").read_text()
    log2 = (tmp_path / "client2.log").read_text()
    blocks_done_before = done_before // 2  # two seeds per block
    assert f"{48 // 2 - blocks_done_before} blocks computed, {blocks_done_before} already done" in log2, log2
    assert_same_results(out, reference_store(fault_spec, tmp_path / "ref.zarr"))


def test_worker_out_of_memory_is_reported_with_block_and_hint(procs, tmp_path):
    # One block needs far more than the worker's limit: four 4096 x 4096 float64
    # matrices are 512 MiB, the nanny allows 300 MB and restarts the worker.
    spec = tmp_path / "oom.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "oom", "network": {"input_dim": 16, "output_dim": 4},
        "grid": {"L": [4], "m": [4096], "ratio": [0.1], "seeds": 1}, "noise": {"draws": 4},
    }))
    env = {**ENV, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"}
    _, address = procs.scheduler(env=env)
    procs.worker(address, "w1", "--memory-limit", "300MB")
    procs.wait_workers(address, 1)
    client = nnsweep_run(procs, spec, tmp_path / "oom.zarr", address, "client")
    rc = client.wait(timeout=180)
    log = (tmp_path / "client.log").read_text()
    assert rc == 1, log
    assert "L=4 m=4096 seeds=0..0" in log and "fewer seeds per block" in log, log
    assert "Traceback" not in log
    assert n_done(tmp_path / "oom.zarr") == 0


def test_unreachable_scheduler_fails_fast_with_address(tmp_path, fault_spec):
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pipeline", "run", str(fault_spec), "--store",
                        str(tmp_path / "x.zarr"), "--scheduler", "tcp://127.0.0.1:9", "--no-progress"],
                       capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 2, r.stderr
    assert "tcp://127.0.0.1:9" in r.stderr and "Traceback" not in r.stderr
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "x.zarr").exists()
