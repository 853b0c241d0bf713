"""Shared fixtures. Keep this small: only what several test files need."""

from __future__ import annotations

import copy

import pytest

from pipeline.spec import Spec

TINY = {
    "random_seed": 7,
    "network": {"input_dim": 6, "output_dim": 3},
    "grid": {"L": [3], "m": [5], "ratio": [0.1], "layer": "all", "seeds": 2},
    "noise": {"distribution": "gaussian", "norm": "frobenius", "draws": 4},
}


def _merge(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def tiny_raw():
    """Factory of raw spec dicts: a tiny sweep with nested sections updated by ``changes``."""
    def make(**changes) -> dict:
        return _merge(TINY, changes)
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
