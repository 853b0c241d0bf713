"""`nnsweep estimate`, called in-process, and the estimate API behind it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.analysis.theory import attenuation
from pipeline.cli import main
from pipeline.estimation import estimate
from pipeline.measure import measure_block
from pipeline.spec import Spec

SMALL = ["--L", "3", "--m", "16", "--d", "8", "--k", "4", "--seeds", "3", "--draws", "4"]
KEYS = {"mean_abs_change", "mean_rel_change", "ci95", "median_rel_change", "bound"}


def run(*args):
    return CliRunner().invoke(main, ["estimate", *args])


def run_json(*args) -> dict:
    res = run(*SMALL, *args, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def check_summary(s: dict):
    assert KEYS <= set(s)
    lo, hi = s["ci95"]
    assert isinstance(s["ci95"], list) and len(s["ci95"]) == 2
    assert lo <= s["mean_rel_change"] <= hi
    assert 0 < s["median_rel_change"] and 0 < s["mean_abs_change"] <= s["bound"]


def test_json_one_layer():
    out = run_json("--layer", "2", "--ratio", "0.2")
    check_summary(out)
    assert "by_layer" not in out
    assert out["theory_attenuation"] == pytest.approx(attenuation(0.2, 1))
    assert out["n_networks"] == 3 and out["n_draws"] == 4


def test_json_all_layers():
    out = run_json("--layer", "all")
    check_summary(out)
    assert set(out["by_layer"]) == {"1", "2", "3"}
    for i, s in out["by_layer"].items():
        check_summary(s)
        assert s["theory_attenuation"] == pytest.approx(attenuation(0.1, 3 - int(i)))
    # every layer has as many draws, so the overall mean is the mean of the layers' means
    means = [s["mean_abs_change"] for s in out["by_layer"].values()]
    assert out["mean_abs_change"] == pytest.approx(np.mean(means), rel=1e-12)
    rel = [s["mean_rel_change"] for s in out["by_layer"].values()]
    assert out["mean_rel_change"] == pytest.approx(np.mean(rel), rel=1e-12)


def test_json_numbers_are_the_kernel_numbers():
    out = run_json("--layer", "all", "--random-seed", "5", "--noise", "rademacher", "--norm", "spectral",
                   "--bias-std", "0.1", "--init", "orthogonal")
    spec = Spec.from_dict({
        "random_seed": 5,
        "network": {"input_dim": 8, "output_dim": 4, "init": "orthogonal", "bias_std": 0.1},
        "grid": {"L": [3], "m": [16], "ratio": [0.1], "seeds": 3},
        "noise": {"distribution": "rademacher", "norm": "spectral", "draws": 4},
    })
    block = measure_block(spec, 3, 16, (0, 1, 2))
    rel = block.delta_norm[0] / block.output_norm[None, :, None]  # (layer, seed, draw)
    for c, s in enumerate(out["by_layer"].values()):
        assert s["mean_abs_change"] == pytest.approx(block.delta_norm[0, c].mean(), rel=1e-12)
        assert s["mean_rel_change"] == pytest.approx(rel[c].mean(), rel=1e-12)
        assert s["median_rel_change"] == pytest.approx(np.median(rel[c]), rel=1e-12)
        assert s["bound"] == pytest.approx(block.bound[0, c].mean(), rel=1e-12)
    assert estimate(spec) == out


def test_options_change_the_numbers():
    base = run_json("--layer", "1")
    assert run_json("--layer", "1")["mean_abs_change"] == base["mean_abs_change"]  # reproducible
    for extra in (["--ratio", "0.3"], ["--random-seed", "1"], ["--noise", "rademacher"], ["--init", "xavier"]):
        assert run_json("--layer", "1", *extra)["mean_abs_change"] != base["mean_abs_change"], extra


def test_table_output():
    res = run(*SMALL)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "L=3 m=16" in lines[0]
    rows = [ln.split()[0] for ln in lines[2:] if ln.split() and ln.split()[0] in {"1", "2", "3", "all"}]
    assert rows == ["1", "2", "3", "all"]


def test_json_is_strict_json_with_one_network():
    """With one network there is no confidence interval; --json must still print
    standard JSON (null, not the non-standard NaN token)."""
    res = run(*SMALL[:-4], "--seeds", "1", "--draws", "3", "--layer", "1", "--json")
    assert res.exit_code == 0, res.output

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    out = json.loads(res.output, parse_constant=refuse)
    assert out["n_networks"] == 1


def _weights(path, shapes, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, **{f"W{j}": rng.standard_normal(s) / np.sqrt(s[1]) for j, s in enumerate(shapes, 1)})
    return str(path)


def test_weight_file_init(tmp_path):
    path = _weights(tmp_path / "w.npz", [(16, 8), (16, 16), (4, 16)])
    out = run_json("--init", path, "--layer", "all")
    check_summary(out)
    # every "network" is the same file, so the clean output norm is the same for all seeds
    assert len({round(s["mean_abs_change"] / s["mean_rel_change"], 9) for s in out["by_layer"].values()}) == 1


def _garbage(tmp_path):
    p = tmp_path / "garbage.npz"
    p.write_bytes(bytes(range(256)) * 4)
    return str(p)


def _unchained(tmp_path):
    return _weights(tmp_path / "unchained.npz", [(16, 8), (16, 12), (4, 16)])


@pytest.mark.parametrize("args, words", [
    (["--m", "-5"], ["--m", "-5"]),
    (["--L", "0"], ["--L", "0"]),
    (["--ratio", "0"], ["--ratio", "'0'"]),
    (["--ratio", "-0.1"], ["--ratio", "-0.1"]),
    (["--ratio", "nan"], ["--ratio", "nan"]),
    (["--ratio", "inf"], ["--ratio", "inf"]),
    (["--ratio", "abc"], ["--ratio", "abc"]),
    (["--layer", "4"], ["--layer", "4"]),
    (["--layer", "0"], ["--layer", "0"]),
    (["--layer", "first"], ["--layer", "first"]),
    (["--noise", "cauchy"], ["--noise", "cauchy"]),
    (["--bias-std", "-1"], ["--bias-std", "-1"]),
    (["--init", "missing.npz"], ["network.init", "missing.npz"]),
    (["--init", "kaiming"], ["network.init", "kaiming"]),
    (_garbage, ["network.init", "garbage.npz"]),
    (_unchained, ["network.init", "unchained.npz", "chain"]),
])
def test_bad_input_exits_2_with_a_message(tmp_path, args, words):
    if callable(args):
        args = ["--init", args(tmp_path)]
    res = run(*SMALL, *args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert "Error" in res.output
    for w in words:
        assert w in res.output, (w, res.output)


@pytest.mark.parametrize("flag, value, field", [
    ("--L", "2", "grid.L"),
    ("--m", "8", "grid.m"),
    ("--d", "5", "network.input_dim"),
    ("--k", "3", "network.output_dim"),
])
def test_weight_file_must_match_the_dimensions(tmp_path, flag, value, field):
    path = _weights(tmp_path / "w.npz", [(16, 8), (16, 16), (4, 16)])
    args = dict(zip(SMALL[::2], SMALL[1::2]))
    args[flag] = value
    res = run(*[t for kv in args.items() for t in kv], "--init", path)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and field in res.output
