"""The README's Python example runs against a store, and computes what its comment says.

The example is read from README.md itself (the python block that opens a store), so an edit of the
README that breaks it, or that forgets a dimension in the mean, fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import xarray as xr

from pipeline_helpers import build_store, raw_spec

README = Path(__file__).resolve().parents[1] / "README.md"


def example() -> str:
    """The README's python block that opens a results store."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if "open_results" in b]
    return block


def test_readme_python_example_is_the_mean_R_by_L_m_and_layer(tmp_path, monkeypatch):
    raw = raw_spec(name="quickstart", network={"n_inputs": 2}, grid={"seeds": 4})
    path = build_store(tmp_path / "results" / "quickstart.zarr", raw)
    monkeypatch.chdir(tmp_path)  # the example opens results/quickstart.zarr, where `nnsweep run` puts it
    *body, last = ast.parse(example()).body
    assert isinstance(last, ast.Expr), "the example ends with the expression it shows"
    namespace: dict = {}
    exec(compile(ast.Module(body, type_ignores=[]), "README.md", "exec"), namespace)
    got = eval(compile(ast.Expression(last.value), "README.md", "eval"), namespace)

    ds = xr.open_zarr(path, consolidated=False).load()
    want = (ds.delta_norm / ds.output_norm).sel(ratio=0.1).mean(["seed", "input", "draw"])
    assert set(got.dims) == {"L", "m", "layer"}  # "E R by L, m, layer"
    got = got.compute().transpose(*want.dims)
    assert np.isfinite(got.values).sum() == 2 * (2 + 3)  # every (L, m, layer <= L) has a value
    np.testing.assert_allclose(got.values, want.values, rtol=1e-12)
