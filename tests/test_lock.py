"""One writer per store: the lock beside the store, its holder named, stale locks taken over, races.

Holders are real processes; the race runs real `nnsweep run` processes against a real scheduler.
"""

from __future__ import annotations

import concurrent.futures
import errno
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import lock, store
from pipeline.cli import main
from pipeline.lock import StoreLocked, lock_path, store_lock
from pipeline.spec import Spec

from pipeline_helpers import (
    RESULT_VARS, SMALL, Procs, build_store, fill_in_process, raw_spec, read_arrays, snapshot, write_spec,
)

pytestmark = pytest.mark.timeout(300)
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

HOLD = """
import sys, time
from pipeline.lock import store_lock
with store_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """Start a process that holds a store's lock; killed at teardown."""
    procs = []

    def start(path) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, env=ENV,
                             start_new_session=True)
        procs.append(p)
        assert p.stdout.readline().strip() == b"held"
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)


def assert_locked(result, pid: int):
    out = result.output
    assert result.exit_code == 2, out
    assert "Traceback" not in out and "dashboard:" not in out, out
    error = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "in use by another nnsweep process" in error[0], out
    assert f"pid {pid}" in error[0] and "started 20" in error[0] and ".lock" in error[0], out


def test_second_run_on_a_locked_new_store_exits_2_naming_the_holder(tmp_path, holder):
    path = tmp_path / "s.zarr"
    p = holder(path)
    result = CliRunner().invoke(main, ["run", str(write_spec(tmp_path, SMALL)), "--store", str(path),
                                       "--no-progress"])
    assert_locked(result, p.pid)
    assert not path.exists()


def test_locked_existing_store_is_left_byte_identical(tmp_path, holder):
    path = tmp_path / "s.zarr"
    build_store(path, SMALL, skip=lambda key: key.seed_start >= 4)
    before = snapshot(path)
    p = holder(path)
    for args in (["run", str(write_spec(tmp_path, SMALL)), "--store", str(path), "--no-progress"],
                 ["verify", str(path), "--repair", "--no-progress"]):
        result = CliRunner().invoke(main, args)
        if args[0] == "verify":  # nothing to repair: verify writes nothing and needs no lock
            assert result.exit_code == 0, result.output
            continue
        assert_locked(result, p.pid)
    assert snapshot(path) == before


def test_a_killed_holder_leaves_a_stale_lock_that_the_next_run_takes(tmp_path, holder):
    path = tmp_path / "s.zarr"
    p = holder(path)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    stale = json.loads(Path(lock_path(store.as_location(str(path)))).read_text())
    assert stale["pid"] == p.pid  # the file is still there, but the kernel released the flock
    with store_lock(str(path)):
        now = json.loads(Path(lock_path(store.as_location(str(path)))).read_text())
        assert now["pid"] == os.getpid() and now["token"] != stale["token"]
    assert not Path(lock_path(store.as_location(str(path)))).exists()


def test_lock_is_reentrant_in_a_thread_and_exclusive_between_threads(tmp_path):
    path = str(tmp_path / "s.zarr")
    seen = []
    with store_lock(path):
        with store_lock(path):  # create_or_resume inside `run` takes it again
            pass

        def other():
            try:
                with store_lock(path):
                    seen.append("acquired")
            except StoreLocked as e:
                seen.append(str(e))

        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert len(seen) == 1 and f"pid {os.getpid()}" in seen[0]
    assert not os.path.exists(path + ".lock")


def test_without_flock_a_dead_holder_on_this_host_is_stale(tmp_path, monkeypatch):
    """Filesystems that refuse flock fall back to an exclusive create and a pid check."""
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    path = str(tmp_path / "s.zarr")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    me = lock.Holder.me()
    Path(path + ".lock").write_text(lock.Holder(me.host, int(dead.stdout), me.started, "old").dumps())
    with store_lock(path):  # taken over: that pid is gone
        assert json.loads(Path(path + ".lock").read_text())["pid"] == os.getpid()
        with pytest.raises(StoreLocked, match=f"pid {os.getpid()}"):  # a live holder is respected
            threading_result = []
            t = threading.Thread(target=lambda: threading_result.append(_try_lock(path)))
            t.start()
            t.join()
            raise threading_result[0]
    assert not Path(path + ".lock").exists()
    other_host = lock.Holder("elsewhere.example.org", 1, me.started, "old")
    Path(path + ".lock").write_text(other_host.dumps())
    with pytest.raises(StoreLocked, match="host elsewhere.example.org"):  # cannot be judged from here
        with store_lock(path):
            pass


def _try_lock(path: str) -> Exception:
    try:
        with store_lock(path):
            return AssertionError("acquired a lock that is held")
    except StoreLocked as e:
        return e


# --------------------------------------------------------------------------- two runs racing

RACE_A = raw_spec(name="race", random_seed=5, network={"input_dim": 8, "output_dim": 3},
                  grid={"L": [2], "m": [8], "ratio": [0.1], "seeds": 4}, noise={"draws": 2},
                  execution={"seeds_per_block": 2})
RACE_B = raw_spec(RACE_A, grid={"L": [2], "m": [8, 16], "ratio": [0.1], "seeds": 4})


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """A real scheduler and one worker on 127.0.0.1, shared by every run of the race."""
    procs = Procs(tmp_path_factory.mktemp("cluster"))
    try:
        _, address = procs.scheduler()
        procs.worker(address, "w1")
        yield address
    finally:
        procs.kill_all()


def _run_process(spec: Path, path: Path, address: str) -> tuple[int, str]:
    p = subprocess.run([sys.executable, "-m", "pipeline", "run", str(spec), "--store", str(path), "--scheduler",
                        address, "--no-progress"], capture_output=True, text=True, env=ENV, timeout=240)
    return p.returncode, p.stdout + p.stderr


def _run_thread(spec: Path, path: Path, address: str) -> tuple[int, str]:
    """`nnsweep run` minus the interpreter start: the same API call, its errors mapped as the CLI maps them."""
    import traceback

    from pipeline.errors import UserError
    from pipeline.execute import run
    from pipeline.spec import load_spec

    try:
        summary = run(load_spec(spec), store=str(path), scheduler=address, progress=False)
    except UserError as e:
        return 2, f"Error: {e}"
    except Exception:  # anything else would be a traceback in the CLI
        return 1, traceback.format_exc()
    return (0 if summary.ok else 1), str(summary)


def _race(tmp_path: Path, scheduler: str, runs: int, runner) -> None:
    specs = {name: write_spec(tmp_path, raw, f"{name}.yaml") for name, raw in (("a", RACE_A), ("b", RACE_B))}
    references = {}
    for name, raw in (("a", RACE_A), ("b", RACE_B)):
        spec = Spec.from_dict(raw)
        fill_in_process(spec, tmp_path / f"ref-{name}.zarr")
        references[spec.hash] = read_arrays(tmp_path / f"ref-{name}.zarr", (*RESULT_VARS, "done"))

    refused = []

    def race(i: int) -> None:
        path = tmp_path / f"race{i}.zarr"
        pair = ("a", "a") if i % 2 == 0 else ("a", "b")  # the same spec twice, or two different specs
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            outcomes = list(pool.map(lambda s: runner(specs[s], path, scheduler), pair))
        codes = [c for c, _ in outcomes]
        for code, out in outcomes:
            assert "Traceback" not in out, out
            assert code in (0, 2), out
            if code == 2:
                assert "in use by another nnsweep process" in out or "made from another spec" in out, out
        assert 0 in codes, outcomes
        refused.extend(c for c in codes if c == 2)
        attrs = store.read_attrs(str(path))
        got = read_arrays(path, (*RESULT_VARS, "done"))
        for name, expected in references[attrs["spec_hash"]].items():
            np.testing.assert_array_equal(got[name], expected, err_msg=f"race {i}: {name}")
        assert not Path(str(path) + ".lock").exists()

    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # two races at a time
        list(pool.map(race, range(runs)))
    assert refused, "no run was ever refused: the runs did not overlap, so nothing raced"


def test_two_runs_racing_on_a_new_store_always_leave_one_correct_store(tmp_path, scheduler):
    """20 races of two runs (in threads of this process: the lock is a flock per open file, which
    threads contend for as processes do), half of them of two different specs."""
    import dask

    # each Client makes itself dask's default scheduler and restores the previous one on closing;
    # two closing at once can leave it set: restore this process's setting for the tests that follow
    with dask.config.set(scheduler=dask.config.get("scheduler", "threads")):
        _race(tmp_path, scheduler, 20, _run_thread)


def test_two_nnsweep_processes_racing(tmp_path, scheduler):
    """The same race with real `nnsweep run` processes, fewer times (each starts an interpreter)."""
    _race(tmp_path, scheduler, 2, _run_process)
