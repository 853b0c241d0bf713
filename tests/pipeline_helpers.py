"""Helpers shared by the plan, store, execute and CLI pipeline tests.

Plain functions, no fixtures: each test module defines the fixtures it needs
(clusters are module-scoped there) and calls these.
"""

from __future__ import annotations

import copy
import os
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


def raw_spec(base: dict = SMALL, **changes) -> dict:
    """A deep copy of ``base`` with whole sections or nested keys replaced by ``changes``."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out


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


def build_store(path, raw: dict, skip=lambda key: False) -> str:
    """Create a store from a raw spec and write, in this process, every block for which
    ``skip(key)`` is false; return its path."""
    spec, _ = store.create_or_resume(Spec.from_dict(raw), str(path))
    for key in plan.all_blocks(spec):
        if not skip(key):
            store.write_block(str(path), key, measure_block(spec, key.L, key.m, key.seeds), 0.0)
    return str(path)


def n_done_seeds(path) -> int:
    """Seeds marked done, or -1 while the store (or its done array) does not exist yet."""
    try:
        return int(zarr.open_array(str(path), path="done", mode="r")[...].sum())
    except Exception:  # not created yet, or metadata half-written
        return -1


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


def wait_until(cond, timeout: float, what: str, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)
