"""Shared fixtures: tiny specs, the session's embedded clusters, and processes a test starts.

The plain helpers they use (spec merging, reference results, process control)
are in pipeline_helpers.py, one of each.
"""

from __future__ import annotations

import contextlib

import pytest

from pipeline.spec import Spec
from pipeline_helpers import Procs, merge

TINY = {
    "random_seed": 7,
    "network": {"input_dim": 6, "output_dim": 3},
    "grid": {"L": [3], "m": [5], "ratio": [0.1], "layer": "all", "seeds": 2},
    "noise": {"distribution": "gaussian", "norm": "frobenius", "draws": 4},
}


@pytest.fixture
def tiny_raw():
    """Factory of raw spec dicts: a tiny sweep with nested sections updated by ``changes``."""
    def make(**changes) -> dict:
        return merge(TINY, changes)
    return make


@pytest.fixture
def tiny_spec(tiny_raw):
    """Factory of validated tiny specs, e.g. ``tiny_spec(grid={"L": [1, 2]})``."""
    def make(**changes) -> Spec:
        return Spec.from_dict(tiny_raw(**changes))
    return make


@pytest.fixture(scope="session")
def digits_zoo(tmp_path_factory):
    """A tiny zoo trained by examples/digits/train.py on scikit-learn's digits (L 2 and 3, m 16, 2 seeds),
    with the test inputs and labels: {"root", "models", "x", "y"}."""
    import importlib.util
    from pathlib import Path

    import numpy as np

    script = Path(__file__).parent.parent / "examples" / "digits" / "train.py"
    module_spec = importlib.util.spec_from_file_location("digits_train", script)
    train = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(train)
    root = tmp_path_factory.mktemp("digits")
    accuracy = train.main(["--out", str(root), "--L", "2", "3", "--m", "16", "--seeds", "2", "--max-iter", "60"])
    assert min(accuracy.values()) > 0.85, accuracy  # they really are trained
    return {"root": root, "models": root / "models", "x": np.load(root / "data" / "x_test.npy"),
            "y": np.load(root / "data" / "y_test.npy")}


@pytest.fixture(scope="session")
def local_client():
    """Factory of clients of embedded local clusters by worker count, e.g. ``local_client(2)``.

    Each cluster (worker processes on 127.0.0.1) starts on first use and is shared by
    the whole session; they stop at its end.
    """
    from pipeline.execute import local_cluster

    clients = {}
    with contextlib.ExitStack() as stack:
        def get(workers: int):
            if workers not in clients:
                clients[workers] = stack.enter_context(local_cluster(workers))
            return clients[workers]
        yield get


@pytest.fixture
def procs(tmp_path):
    """Start real processes (schedulers, workers, ``nnsweep run``) in tmp_path; killed at teardown."""
    ps = Procs(tmp_path)
    yield ps
    ps.kill_all()
