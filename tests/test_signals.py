"""SIGINT and SIGTERM of `nnsweep run`: one line, exit 130 / 143, nothing left running.

Real processes: a `dask scheduler` and `dask worker` subprocesses on
127.0.0.1, or the embedded cluster; the signal is sent as a terminal (Ctrl-C
to the whole process group) or a batch system (SIGTERM to the process) would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pipeline_helpers import ENV, assert_bit_identical, n_done_seeds, read_arrays, reference_run, wait_until

pytestmark = pytest.mark.timeout(240)

# 8 blocks of most of a second each: a signal after the first lands mid-sweep.
SLOW = {
    "name": "slow", "random_seed": 3,
    "network": {"input_dim": 64, "output_dim": 10},
    "grid": {"L": [8], "m": [512], "ratio": [0.1, 0.3], "seeds": 24},
    "noise": {"draws": 256},
    "execution": {"seeds_per_block": 3},
}
TOTAL_SEEDS = 24


@pytest.fixture(scope="module")
def slow(tmp_path_factory) -> tuple[Path, dict]:
    """SLOW's spec file and its results computed block by block in this process, without Dask."""
    return reference_run(tmp_path_factory.mktemp("slow"), SLOW)


@pytest.fixture
def scheduler(procs):
    """A `dask scheduler` and two single-threaded `dask worker` processes; yields the address."""
    _, address = procs.scheduler()
    for i in (1, 2):
        procs.worker(address, f"w{i}")
    return address


def run_state(address: str) -> tuple[dict[str, str], int]:
    """The run's tasks the scheduler knows (key -> state), and how many tasks the workers are executing."""
    from distributed import Client

    def tasks(dask_scheduler):  # nested, so that it is pickled by value
        return {str(k): ts.state for k, ts in dask_scheduler.tasks.items() if str(k).startswith("block-")}

    def running(dask_worker):
        return len(dask_worker.state.executing)

    with Client(address, timeout=30) as c:
        return c.run_on_scheduler(tasks), sum(c.run(running).values())


def start_run(spec: Path, store: Path, log: Path, *where: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(spec), "--store", str(store),
                             "--no-progress", *where], stdout=log.open("w"), stderr=subprocess.STDOUT, env=ENV,
                            start_new_session=True, cwd=log.parent)


def assert_one_line_how_to_resume(log: Path, signame: str, total_blocks: int) -> str:
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    started = [i for i, line in enumerate(lines) if line.startswith("dashboard: ")]
    assert started, lines
    after = lines[started[0] + 1:]
    assert len(after) == 1, "\n".join(lines)
    line = after[0]
    assert line.startswith(f"interrupted ({signame}): ") and "Run the same command again" in line, line
    assert f"of {total_blocks} blocks are done" in line, line
    return line


def resume_and_compare(spec: Path, store: Path, ref: dict, log: Path, done_seeds: int, *where: str) -> None:
    p = start_run(spec, store, log, *where)
    assert p.wait(timeout=180) == 0, log.read_text()
    done_blocks = done_seeds // 3
    assert f"{8 - done_blocks} blocks computed, {done_blocks} already done, 0 failed" in log.read_text()
    assert_bit_identical(read_arrays(store), ref, "after the interruption and a rerun")


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_cancels_the_runs_tasks_on_an_external_scheduler(scheduler, slow, tmp_path, sig, status):
    spec, ref = slow
    store, log = tmp_path / "run.zarr", tmp_path / "run.log"
    run = start_run(spec, store, log, "--scheduler", scheduler)
    wait_until(lambda: n_done_seeds(store) >= 3, 120, "the first block", interval=0.05)
    assert n_done_seeds(store) < TOTAL_SEEDS, "the sweep ended before the signal"
    assert run_state(scheduler)[0], "no task of the run on the scheduler"
    os.kill(run.pid, sig)
    assert run.wait(timeout=60) == status, log.read_text()
    assert_one_line_how_to_resume(log, sig.name, 8)
    # The scheduler forgets every task of the run at once; a block a worker was
    # already running cannot be stopped mid-way (a Python thread), finishes and is kept.
    assert not run_state(scheduler)[0]
    wait_until(lambda: run_state(scheduler) == ({}, 0), 10, "the workers to finish what they were running",
               interval=0.2)
    done = n_done_seeds(store)
    time.sleep(2)
    assert n_done_seeds(store) == done and run_state(scheduler) == ({}, 0), "a block started after the signal"
    resume_and_compare(spec, store, ref, tmp_path / "rerun.log", done, "--scheduler", scheduler)


def test_ctrl_c_on_the_embedded_cluster_prints_one_line_and_leaves_no_process(slow, tmp_path):
    spec, ref = slow
    store, log = tmp_path / "run.zarr", tmp_path / "run.log"
    run = start_run(spec, store, log, "--workers", "2")
    wait_until(lambda: n_done_seeds(store) >= 3, 120, "the first block", interval=0.05)
    assert n_done_seeds(store) < TOTAL_SEEDS, "the sweep ended before the signal"
    workers = psutil.Process(run.pid).children(recursive=True)
    assert len(workers) >= 2, workers
    os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    assert run.wait(timeout=60) == 130, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert_one_line_how_to_resume(log, "SIGINT", 8)
    wait_until(lambda: not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE], 30,
               "the worker processes to end", interval=0.2)
    resume_and_compare(spec, store, ref, tmp_path / "rerun.log", n_done_seeds(store), "--workers", "2")
