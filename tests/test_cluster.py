"""Real clusters and their faults: `dask scheduler` and `dask worker` subprocesses on 127.0.0.1.

Each test starts its own processes (the ``procs`` fixture kills them). Faults
are injected at observable states, never after a guessed delay: once some
blocks are done in the store, the workers are frozen (SIGSTOP), so the sweep is
certainly unfinished when the fault lands, whatever the machine's speed.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.spec import load_spec
from pipeline_helpers import ENV, assert_bit_identical, n_done_seeds, read_arrays, reference_arrays, wait_until

pytestmark = pytest.mark.timeout(240)

FAULT_SPEC = {
    "name": "faults",
    "random_seed": 7,
    "network": {"input_dim": 64, "output_dim": 10},
    "grid": {"L": [8], "m": [256, 384], "ratio": [0.1, 0.3], "seeds": 24},
    "noise": {"draws": 64},
    "execution": {"seeds_per_block": 2},
}
SEEDS = 2 * 24  # (L, m) pairs times seeds


@pytest.fixture
def fault_spec(tmp_path) -> Path:
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump(FAULT_SPEC))
    return path


def freeze(*workers) -> None:
    """Stop worker processes (SIGSTOP): no block finishes until they are continued."""
    for w in workers:
        os.kill(w.pid, signal.SIGSTOP)


def thaw(*workers) -> None:
    for w in workers:
        os.kill(w.pid, signal.SIGCONT)


def frozen_idle(address: str, workers) -> bool:
    """Freeze the workers; keep them frozen (True) if the scheduler then holds no finished result,
    i.e. the client has taken every result and waits for the next one; else thaw them (False)."""
    from distributed import Client

    freeze(*workers)
    with Client(address, timeout=30) as c:
        held = c.run_on_scheduler(lambda dask_scheduler: sum(ts.state == "memory"
                                                             for ts in dask_scheduler.tasks.values()))
    if held:
        thaw(*workers)
    return not held


def assert_same_as_in_process(path: Path, spec_path: Path) -> None:
    """Every block done and every number equal to the spec computed in this process without Dask."""
    assert n_done_seeds(path) == SEEDS
    assert_bit_identical(read_arrays(path), reference_arrays(load_spec(spec_path)), "cluster run")


def test_sigkill_worker_mid_sweep_completes_identical(procs, fault_spec, tmp_path):
    _, address = procs.scheduler()
    w1 = procs.worker(address, "w1", "--no-nanny")
    w2 = procs.worker(address, "w2", "--no-nanny")
    procs.wait_workers(address, 2)
    out = tmp_path / "run.zarr"
    client = procs.nnsweep_run(fault_spec, out, "client", "--scheduler", address)
    wait_until(lambda: n_done_seeds(out) >= 4, 120, "the first blocks")
    freeze(w1, w2)
    assert n_done_seeds(out) < SEEDS and client.poll() is None, procs.log("client")
    os.kill(w1.pid, signal.SIGKILL)
    thaw(w2)
    assert client.wait(timeout=180) == 0, procs.log("client")
    assert "0 failed" in procs.log("client")
    assert_same_as_in_process(out, fault_spec)


def test_sigkill_scheduler_exits_1_then_rerun_on_new_scheduler(procs, fault_spec, tmp_path):
    sched, address = procs.scheduler()
    old_workers = [procs.worker(address, f"w{i}", "--no-nanny", "--death-timeout", "5") for i in (1, 2)]
    procs.wait_workers(address, 2)
    out = tmp_path / "run.zarr"
    client = procs.nnsweep_run(fault_spec, out, "client", "--scheduler", address)
    wait_until(lambda: n_done_seeds(out) >= 4, 120, "the first blocks")
    wait_until(lambda: frozen_idle(address, old_workers), 120, "a moment when the client holds no result")
    assert n_done_seeds(out) < SEEDS and client.poll() is None, procs.log("client")
    os.kill(sched.pid, signal.SIGKILL)
    rc = client.wait(timeout=120)
    log = procs.log("client")
    assert rc == 1, log  # the documented status of a lost scheduler
    assert "lost the scheduler" in log and "Traceback" not in log, log
    # the frozen workers never finish the blocks they hold; once they are gone the store is still
    for w in old_workers:
        os.kill(w.pid, signal.SIGKILL)
        w.wait(timeout=30)
    done_before = n_done_seeds(out)
    assert 0 < done_before < SEEDS

    _, address2 = procs.scheduler("scheduler2")
    procs.worker(address2, "w3", "--no-nanny")
    procs.worker(address2, "w4", "--no-nanny")
    procs.wait_workers(address2, 2)
    client2 = procs.nnsweep_run(fault_spec, out, "client2", "--scheduler", address2)
    assert client2.wait(timeout=180) == 0, procs.log("client2")
    blocks_done_before = done_before // 2  # two seeds per block
    assert f"{SEEDS // 2 - blocks_done_before} blocks computed, {blocks_done_before} already done" \
        in procs.log("client2"), procs.log("client2")
    assert_same_as_in_process(out, fault_spec)


def test_worker_out_of_memory_is_reported_with_block_and_hint(procs, tmp_path):
    # One block needs far more than the worker's limit: four 4096 x 4096 float64
    # matrices are 512 MiB, the nanny allows 300 MB and restarts the worker.
    spec = tmp_path / "oom.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "oom", "network": {"input_dim": 16, "output_dim": 4},
        "grid": {"L": [4], "m": [4096], "ratio": [0.1], "seeds": 1}, "noise": {"draws": 4},
    }))
    _, address = procs.scheduler("scheduler", env={**ENV, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"})
    procs.worker(address, "w1", "--memory-limit", "300MB")
    procs.wait_workers(address, 1)
    client = procs.nnsweep_run(spec, tmp_path / "oom.zarr", "client", "--scheduler", address)
    rc = client.wait(timeout=180)
    log = procs.log("client")
    assert rc == 1, log
    assert "L=4 m=4096 seeds=0..0" in log and "fewer seeds per block" in log, log
    assert "Traceback" not in log
    assert n_done_seeds(tmp_path / "oom.zarr") == 0


@pytest.mark.parametrize("cluster_timeout", [None, 2])
def test_unreachable_scheduler_fails_within_the_timeout(tmp_path, fault_spec, cluster_timeout):
    """Nothing listens on port 9: exit 2 with the address, within the timeout (10 s unless the
    cluster file sets one), nothing written. Timed in-process, so Python's start-up is not counted."""
    address = "tcp://127.0.0.1:9"
    args = ["run", str(fault_spec), "--store", str(tmp_path / "x.zarr"), "--no-progress"]
    if cluster_timeout is None:
        args += ["--scheduler", address]
    else:
        cfile = tmp_path / "remote.yaml"
        cfile.write_text(yaml.safe_dump({"backend": "scheduler",
                                         "cluster": {"address": address, "timeout": cluster_timeout}}))
        args += ["--cluster", str(cfile)]
    t0 = time.monotonic()
    r = CliRunner().invoke(main, args)
    elapsed = time.monotonic() - t0
    assert r.exit_code == 2, r.output
    assert address in r.output and "Traceback" not in r.output
    limit = cluster_timeout or 10
    assert elapsed < limit + 1.0, f"failed after {elapsed:.1f} s, the timeout is {limit} s"  # 1 s: reading the spec
    assert not (tmp_path / "x.zarr").exists()
