"""Helpers shared by the tests: specs, reference results, store inspection and real processes.

Plain functions and one class; the fixtures built on them (tiny specs, the
session's local clusters, ``procs``) are in conftest.py.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
import zarr

from pipeline import plan, store
from pipeline.measure import measure_block
from pipeline.spec import Spec

RESULT_VARS = store.RESULT_VARIABLES

# Small enough to run in about a second on two workers, yet every axis has at
# least two values, L differs (so some cells are layer > L) and the seed count
# is not a multiple of every block size used.
SMALL = {
    "name": "small",
    "random_seed": 11,
    "network": {"input_dim": 16, "output_dim": 4},
    "grid": {"L": [2, 3], "m": [8, 16], "ratio": [0.05, 0.1, 0.3], "layer": "all", "seeds": 8},
    "noise": {"draws": 4},
    "execution": {"seeds_per_block": 2},
}


def merge(base: dict, changes: dict) -> dict:
    """A deep copy of ``base`` with ``changes`` merged in: a mapping updates the mapping it
    replaces key by key (at any depth), any other value replaces the old one."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def raw_spec(base: dict = SMALL, **changes) -> dict:
    """A raw spec dict: ``base`` with sections or nested keys changed, e.g. ``raw_spec(grid={"L": [4]})``."""
    return merge(base, changes)


def make_spec(base: dict = SMALL, **changes) -> Spec:
    return Spec.from_dict(raw_spec(base, **changes))


def write_spec(directory: Path, raw: dict, name: str = "spec.yaml") -> Path:
    path = Path(directory) / name
    path.write_text(yaml.safe_dump(raw))
    return path


def reference_arrays(spec: Spec) -> dict[str, np.ndarray]:
    """Every result variable in store order, computed in this process without Dask or zarr.

    All seeds of an (L, m) go through ``measure_block`` at once, which is itself
    a different chunking from any block size a store uses.
    """
    g = spec.grid
    out = {}
    for li, L in enumerate(g.L):
        for mi, m in enumerate(g.m):
            r = measure_block(spec, L, m, g.seeds)
            for name in RESULT_VARS:
                value = getattr(r, name)
                if name not in out:
                    out[name] = np.full((len(g.L), len(g.m)) + value.shape, np.nan)
                out[name][li, mi] = value
    return out


def read_arrays(path, names=RESULT_VARS) -> dict[str, np.ndarray]:
    """Variables of a store read straight from zarr (no xarray decoding)."""
    return {name: zarr.open_array(str(path), path=name, mode="r")[...] for name in names}


def assert_bit_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray], what: str = "") -> None:
    for name in RESULT_VARS:
        x, y = a[name], b[name]
        assert x.shape == y.shape, f"{what} {name}: shapes {x.shape} != {y.shape}"
        assert np.array_equal(x, y, equal_nan=True), \
            f"{what} {name}: {np.sum(~((x == y) | (np.isnan(x) & np.isnan(y))))} cells differ"
        assert np.array_equal(np.isnan(x), np.isnan(y)), f"{what} {name}: NaN positions differ"


def fill_in_process(spec: Spec, path, skip: int = 0) -> tuple[Spec, list[plan.BlockKey]]:
    """Create the store and write every block but the last ``skip`` ones, in this process.

    Returns the store's spec and the blocks left undone.
    """
    spec, _ = store.create_or_resume(spec, str(path))
    blocks = plan.all_blocks(spec)
    keep = blocks[:len(blocks) - skip]
    for key in keep:
        store.write_block(str(path), key, measure_block(spec, key.L, key.m, key.seeds), 0.25)
    return spec, blocks[len(keep):]


def reference_run(directory: Path, raw: dict) -> tuple[Path, dict[str, np.ndarray]]:
    """``raw`` written as DIRECTORY/spec.yaml, and its results computed block by block in this process,
    without Dask (stored in DIRECTORY/ref.zarr): what a run of that file must reproduce."""
    from pipeline.spec import load_spec

    spec = write_spec(directory, raw)
    fill_in_process(load_spec(spec), Path(directory) / "ref.zarr")
    return spec, read_arrays(Path(directory) / "ref.zarr")


def build_store(path, raw: dict, skip=lambda key: False) -> str:
    """Create a store from a raw spec and write, in this process, every block for which
    ``skip(key)`` is false; return its path."""
    spec, _ = store.create_or_resume(Spec.from_dict(raw), str(path))
    for key in plan.all_blocks(spec):
        if not skip(key):
            store.write_block(str(path), key, measure_block(spec, key.L, key.m, key.seeds), 0.0)
    return str(path)


def n_done_seeds(path) -> int:
    """Seeds marked done in a local store; 0 while the store (or its done array) does not exist yet."""
    try:
        return int(zarr.open_array(str(path), path="done", mode="r")[...].sum())
    except Exception:  # not created yet, or metadata half-written
        return 0


def chunk_path(path, var: str, key: plan.BlockKey, spec: Spec) -> Path:
    """The file of ``var``'s chunk that block ``key`` writes (zarr v3, default '/' chunk keys)."""
    dims = store.VARIABLES[var][0]
    spb = spec.execution.seeds_per_block
    index = {"L": key.L_index, "m": key.m_index, "seed": key.seed_start // spb}
    return Path(path, var, "c", *(str(index.get(d, 0)) for d in dims))


def block_chunk_dir(path, key: plan.BlockKey, spec: Spec) -> Path:
    """Put a plain file where the block's delta_norm chunk directory must go: a real write failure."""
    blocker = chunk_path(path, "delta_norm", key, spec).parent
    blocker.parent.mkdir(parents=True)
    blocker.write_text("in the way")
    return blocker


def snapshot(path) -> dict[str, tuple]:
    """Every entry under ``path`` (or the file itself): relative name -> (kind, bytes)."""
    path = Path(path)
    if not path.exists():
        return {}
    if path.is_file():
        return {".": ("file", path.read_bytes())}
    out = {}
    for root, dirs, files in os.walk(path):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), path)] = ("dir", b"")
        for f in files:
            full = os.path.join(root, f)
            out[os.path.relpath(full, path)] = ("file", Path(full).read_bytes())
    return out


def wait_until(cond, timeout: float, what: str, interval: float = 0.05):
    """Poll ``cond`` until it returns something true (returned), failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)


# --- real processes ------------------------------------------------------------------------------

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONUNBUFFERED": "1"}
DASK = [sys.executable, "-m"]


class Procs:
    """Processes a test starts, each in its own session (process group) with its working directory
    and its log ``NAME.log`` in ``tmp``; :meth:`kill_all` (the ``procs`` fixture's teardown) kills
    the groups, so no process outlives its test."""

    def __init__(self, tmp: Path):
        self.tmp, self.procs = Path(tmp), []

    def start(self, args: list, name: str, env: dict | None = None) -> subprocess.Popen:
        with open(self.tmp / f"{name}.log", "w") as log:
            p = subprocess.Popen([str(a) for a in args], stdout=log, stderr=subprocess.STDOUT, env=env or ENV,
                                 start_new_session=True, cwd=self.tmp)
        self.procs.append(p)
        return p

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def nnsweep_run(self, spec: Path, store_path: Path, name: str, *options: str) -> subprocess.Popen:
        """``nnsweep run SPEC --store STORE --no-progress OPTIONS`` (e.g. ``--scheduler``, ``--workers``)."""
        return self.start([sys.executable, "-m", "pipeline", "run", spec, "--store", store_path, "--no-progress",
                           *options], name)

    def scheduler(self, name: str = "scheduler", *extra: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
        """A ``dask scheduler`` on 127.0.0.1 and its address, once it has written its scheduler file."""
        sfile = self.tmp / f"{name}.json"
        p = self.start(DASK + ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--dashboard-address", "127.0.0.1:0", "--scheduler-file", sfile, *extra], name, env)

        def address():
            assert p.poll() is None, self.log(name)
            text = sfile.read_text() if sfile.exists() else ""
            return json.loads(text)["address"] if text.strip() else None

        return p, wait_until(address, 60, f"the scheduler {name} to start")

    def worker(self, address: str, name: str, *extra: str) -> subprocess.Popen:
        return self.start(DASK + ["distributed.cli.dask_worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                                  "--no-dashboard", "--name", name, *extra], name)

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
