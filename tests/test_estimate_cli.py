"""`nnsweep estimate`, called in-process, and the estimate API behind it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from pipeline import config, pooling, sizes
from pipeline.analysis.theory import attenuation
from pipeline.cli import main
from pipeline.estimation import estimate
from pipeline.measure import block_batches, measure_block
from pipeline.network import layer_shapes
from pipeline.spec import Spec

SMALL = ["--L", "3", "--m", "16", "--d", "8", "--k", "4", "--seeds", "3", "--draws", "4"]
KEYS = {"mean_abs_change", "mean_rel_change", "ci95", "median_rel_change", "bound"}


def run(*args):
    return CliRunner().invoke(main, ["estimate", *args])


def run_json(*args) -> dict:
    res = run(*SMALL, *args, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


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
    delta = block.delta_norm[0, :, :, 0]  # (layer, seed, draw): one input
    rel = delta / block.output_norm[None, :, :]
    for c, s in enumerate(out["by_layer"].values()):
        assert s["mean_abs_change"] == pytest.approx(delta[c].mean(), rel=1e-12)
        assert s["mean_rel_change"] == pytest.approx(rel[c].mean(), rel=1e-12)
        assert s["median_rel_change"] == pytest.approx(np.median(rel[c]), rel=1e-12)
        assert s["bound"] == pytest.approx(block.bound[0, c].mean(), rel=1e-12)
        assert s["pred_change_rate"] == pytest.approx(block.pred_changed[0, c].mean(), rel=1e-12)
        v = block.output_norm  # (seed, input)
        assert s["worst_rel"] == pytest.approx((block.worst_realised[0, c] / v).mean(), rel=1e-12)
        assert s["worst_linear_rel"] == pytest.approx((block.worst_linear[0, c] / v).mean(), rel=1e-12)
        assert s["linear_rms_rel"] is None  # spectral scaling: no closed form
        # over networks: each network's mean over draws is one sample (scipy's t-interval)
        per_net = rel[c].mean(axis=1)
        want = stats.t.interval(0.95, 2, loc=per_net.mean(), scale=stats.sem(per_net))
        assert s["ci95"] == pytest.approx(list(want), rel=1e-12) and s["ci95_over"] == "networks"
    assert out["ci95"] == pytest.approx(scipy_interval(rel.mean(axis=(0, 2))), rel=1e-12)
    assert estimate(spec) == out


def test_linear_answer_in_the_json():
    """linear_rms_rel is the root mean square of linear_rms / ||v||, the small-r prediction of
    rms_rel_change; at r = 1e-3 the two agree to Monte-Carlo error."""
    out = run_json("--layer", "2", "--ratio", "0.001", "--draws", "400", "--seeds", "2")
    spec = Spec.from_dict({"network": {"input_dim": 8, "output_dim": 4},
                           "grid": {"L": [3], "m": [16], "ratio": [0.001], "layer": [2], "seeds": 2},
                           "noise": {"draws": 400}})
    block = measure_block(spec, 3, 16, (0, 1))
    want = np.sqrt(np.mean((block.linear_rms[0, 0] / block.output_norm) ** 2))
    assert out["linear_rms_rel"] == pytest.approx(want, rel=1e-12)
    assert out["rms_rel_change"] == pytest.approx(out["linear_rms_rel"], rel=0.1)
    assert out["worst_rel"] > out["rms_rel_change"]


def scipy_interval(per_network: np.ndarray) -> list[float]:
    """The 95% t-interval of the mean over networks, with the standard error std / sqrt(n)."""
    n = per_network.size
    sem = np.std(per_network, ddof=1) / np.sqrt(n)
    return list(stats.t.interval(0.95, n - 1, loc=per_network.mean(), scale=sem))


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
    rows = [ln.split()[:2] for ln in lines[2:] if len(ln.split()) > 2 and ln.split()[0] == "0.1"]
    assert rows == [["0.1", "1"], ["0.1", "2"], ["0.1", "3"], ["0.1", "all"]]
    assert "95% CI over networks" in lines[0]


def refuse(token):
    raise ValueError(f"non-standard JSON token {token}")


def test_one_network_gets_an_interval_over_draws():
    """With one network the draws are the samples: the CI is scipy's t-interval of the per-draw means,
    and --json is standard JSON."""
    res = run(*SMALL[:-4], "--seeds", "1", "--draws", "30", "--layer", "1", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout, parse_constant=refuse)
    assert out["n_networks"] == 1 and out["ci95_over"] == "draws"
    spec = Spec.from_dict({"network": {"input_dim": 8, "output_dim": 4},
                           "grid": {"L": [3], "m": [16], "ratio": [0.1], "layer": [1], "seeds": 1},
                           "noise": {"draws": 30}})
    block = measure_block(spec, 3, 16, (0,))
    per_draw = block.delta_norm[0, 0, 0, 0] / block.output_norm[0, 0]
    want = stats.t.interval(0.95, 29, loc=per_draw.mean(), scale=stats.sem(per_draw))
    assert out["ci95"] == pytest.approx(list(want), rel=1e-12)


def _weights(path, shapes, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, **{f"W{j}": rng.standard_normal(s) / np.sqrt(s[1]) for j, s in enumerate(shapes, 1)})
    return str(path)


def test_weight_file_init(tmp_path):
    """L, m, d and k come from the file; it is one network, so the CI is over draws."""
    path = _weights(tmp_path / "w.npz", [(16, 8), (16, 16), (4, 16)])
    res = run("--init", path, "--draws", "6", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout, parse_constant=refuse)
    check_summary(out)
    assert set(out["by_layer"]) == {"1", "2", "3"}
    assert out["n_networks"] == 1 and out["ci95_over"] == "draws"
    assert "theory_first_order" not in out and "theory_attenuation" not in out  # no random-network theory
    table = run("--init", path, "--draws", "6").output
    assert "1 network x 6 draws" in table and "networks" not in table.splitlines()[0].split(";")[0]
    assert "theory R" not in table


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
    (["--init", "missing.npz"], ["--init", "missing.npz"]),
    (["--init", "kaiming"], ["--init", "kaiming"]),
    (["--input", "missing.npy"], ["--input", "missing.npy"]),
    (["--labels", "missing.npy"], ["--labels", "missing.npy"]),
    (["--ratio", "0.1,x"], ["--ratio", "x"]),
])
def test_bad_input_exits_2_with_a_message(tmp_path, args, words):
    res = run(*SMALL, *args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert "Error" in res.output
    for w in words:
        assert w in res.output, (w, res.output)


@pytest.mark.parametrize("args, words", [
    (["--L", "2"], ["--L", "2", "[3]"]),
    (["--m", "8"], ["--m", "8", "[16]"]),
    (["--d", "5"], ["--d", "5", "8"]),
    (["--k", "3"], ["--k", "3", "4"]),
    (["--seeds", "2"], ["--seeds", "2", "one network"]),
    (["--layer", "4"], ["--layer", "4"]),
    (["--bias-std", "0.5"], ["--bias-std"]),
])
def test_weight_file_options_that_conflict_name_the_option(tmp_path, args, words):
    path = _weights(tmp_path / "w.npz", [(16, 8), (16, 16), (4, 16)])
    res = run("--init", path, "--draws", "2", *args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "grid." not in res.output and "network." not in res.output
    for w in words:
        assert w in res.output, (w, res.output)
    # the same values as the file are accepted
    assert run("--init", path, "--draws", "2", "--L", "3", "--m", "16", "--d", "8", "--k", "4").exit_code == 0


@pytest.mark.parametrize("make, words", [
    (lambda d: _weights(d / "garbage.npz", []) and (d / "garbage.npz").write_bytes(b"x" * 99), ["--init", "garbage.npz"]),
    (lambda d: _weights(d / "unchained.npz", [(16, 8), (16, 12), (4, 16)]), ["--init", "unchained.npz", "chain"]),
    (lambda d: np.savez(d / "nan.npz", W1=np.full((4, 8), np.nan), W2=np.ones((4, 4))), ["--init", "nan.npz", "NaN"]),
])
def test_bad_weight_files_exit_2(tmp_path, make, words):
    make(tmp_path)
    name = words[1]
    res = run("--init", str(tmp_path / name), "--draws", "2")
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for w in words:
        assert w in res.output, (w, res.output)


def test_inputs_labels_and_several_ratios(tmp_path, digits_zoo):
    """A trained network, the test set and its labels: prediction changes and accuracy, overall,
    by layer and by ratio, equal to the kernel's numbers; the clean accuracy is scikit-learn's."""
    model = str(digits_zoo["models"] / "digits_L3_m16_seed0.safetensors")
    x, y = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(x, digits_zoo["x"][:50])
    np.save(y, digits_zoo["y"][:50])
    res = run("--init", model, "--input", str(x), "--labels", str(y), "--ratio", "0.1,1.0", "--draws", "20",
              "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout, parse_constant=refuse)
    assert set(out["by_ratio"]) == {"0.1", "1.0"} and out["n_inputs"] == 50 and out["n_networks"] == 1
    spec = Spec.from_dict({"network": {"init": model, "input": str(x), "labels": str(y)},
                           "grid": {"ratio": [0.1, 1.0]}, "noise": {"draws": 20}})
    block = measure_block(spec, 3, 16, (0,))
    for c, (r, s) in enumerate(out["by_ratio"].items()):
        assert s["pred_change_rate"] == pytest.approx(block.pred_changed[c].mean(), rel=1e-12)
        assert s["accuracy"] == pytest.approx(block.accuracy[c].mean(), rel=1e-12)
        for i, sl in s["by_layer"].items():
            assert sl["pred_change_rate"] == pytest.approx(block.pred_changed[c, int(i) - 1].mean(), rel=1e-12)
            assert sl["accuracy"] == pytest.approx(block.accuracy[c, int(i) - 1].mean(), rel=1e-12)
    big, small = out["by_ratio"]["1.0"], out["by_ratio"]["0.1"]
    assert big["pred_change_rate"] > small["pred_change_rate"] and big["accuracy"] < out["clean_accuracy"]
    net = np.load(y)  # the clean network's accuracy, computed directly with the file's weights
    from pipeline.files import parse_network

    arrays = parse_network(open(model, "rb").read(), model)
    h = digits_zoo["x"][:50].T
    for j, (w, b) in enumerate(zip(arrays.weights, arrays.biases)):
        h = w @ h + b[:, None]
        h = np.maximum(h, 0) if j < len(arrays.weights) - 1 else h
    assert out["clean_accuracy"] == pytest.approx(np.mean(h.argmax(axis=0) == net))
    table = run("--init", model, "--input", str(x), "--labels", str(y), "--ratio", "0.1,1.0", "--draws", "5").output
    assert "accuracy" in table and "pred chg" in table and "50 inputs" in table


@pytest.mark.parametrize("make, option, words", [
    (lambda d: np.save(d / "a.npy", np.ones((3, 7))), "--input", ["--input", "a.npy", "(3, 7)"]),
    (lambda d: np.save(d / "a.npy", np.array([[np.nan] * 8])), "--input", ["--input", "non-finite"]),
    (lambda d: np.save(d / "a.npy", np.zeros((2, 8))), "--input", ["--input", "all-zero"]),
    (lambda d: np.save(d / "a.npy", np.array([0, 1, 2])), "--labels", ["--labels", "(3,)", "1 integer"]),
    (lambda d: np.save(d / "a.npy", np.array([7])), "--labels", ["--labels", "7", "0..3"]),
    (lambda d: np.save(d / "a.npy", np.array([0.5])), "--labels", ["--labels", "float"]),
])
def test_bad_inputs_and_labels_exit_2(tmp_path, make, option, words):
    make(tmp_path)
    res = run(*SMALL, option, str(tmp_path / "a.npy"))
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "network." not in res.output
    for w in words:
        assert w in res.output, (w, res.output)


def test_one_network_pools_ratios_by_draw():
    """Every ratio reuses the same draws: pooled over ratios, one network still has one sample per draw,
    so two nearly equal ratios give the interval of one (not a narrower one)."""
    base = [*SMALL[:-4], "--seeds", "1", "--draws", "20", "--layer", "2", "--json"]
    one = json.loads(run(*base, "--ratio", "0.1").stdout)
    two = json.loads(run(*base, "--ratio", "0.1,0.1000001").stdout)
    assert two["ci95"] == pytest.approx(one["ci95"], rel=1e-4)
    assert two["ci95_over"] == "draws"


@pytest.mark.parametrize("seeds", [1, 3])
def test_estimate_is_the_same_whatever_the_batches(seeds, monkeypatch):
    """Batches of 1, 7 and all 60 draws (pieces of one draw) give the same estimate, number for number,
    and it is the statistics of the whole block; the medians narrow their brackets on the way."""
    monkeypatch.setattr(config, "PIECE_BYTES", 1)  # one draw per piece, so a batch can be any number of draws
    monkeypatch.setattr(config, "FIRST_ORDER_BYTES", 1)  # first-order changes a draw at a time too
    monkeypatch.setattr(pooling, "CAP", 50)  # the medians keep a fraction of the values
    spec = Spec.from_dict({"network": {"input_dim": 8, "output_dim": 4, "n_inputs": 6},
                           "grid": {"L": [3], "m": [16], "ratio": [0.05, 0.3], "layer": "all", "seeds": seeds},
                           "noise": {"draws": 60}})
    per_draw = sizes.batch_bytes(layer_shapes(3, 16, 8, 4), 6, 2, 3, np.float64)
    results = []
    for draws_per_batch, batches in ((1, 60), (7, 9), (100, 1)):
        monkeypatch.setenv("NNSWEEP_DRAW_BATCH_MEMORY", str(per_draw * draws_per_batch))
        assert sum(start == 0 for _, start, _ in block_batches(spec, 3, 16, spec.grid.seeds)) == seeds
        assert len(list(block_batches(spec, 3, 16, spec.grid.seeds))) == seeds * batches
        results.append(estimate(spec))
    assert results[0] == results[1] == results[2]
    block = measure_block(spec, 3, 16, spec.grid.seeds)
    rel = block.delta_norm / block.output_norm[None, None, :, :, None]  # (ratio, layer, seed, input, draw)
    out = results[0]
    assert out["median_rel_change"] == np.median(rel)
    assert out["mean_rel_change"] == pytest.approx(rel.mean(), rel=1e-12)
    assert out["rms_rel_change"] == pytest.approx(np.sqrt(np.mean(rel**2)), rel=1e-12)
    assert out["pred_change_rate"] == pytest.approx(block.pred_changed.mean(), rel=1e-12)
    for r, by_ratio in enumerate(out["by_ratio"].values()):
        assert by_ratio["median_rel_change"] == np.median(rel[r])
        for c, s in enumerate(by_ratio["by_layer"].values()):
            assert s["median_rel_change"] == np.median(rel[r, c])
            assert s["mean_abs_change"] == pytest.approx(block.delta_norm[r, c].mean(), rel=1e-12)
    for c, s in enumerate(out["by_layer"].values()):
        assert s["median_rel_change"] == np.median(rel[:, c])


def test_no_control_variate_leaves_the_plain_estimate_alone():
    """--no-control-variate prints the plain estimate, the same numbers as the default's plain ones; the
    default prints the control variate for one network (a table test would pass with either)."""
    args = ["--L", "3", "--m", "16", "--d", "8", "--k", "4", "--seeds", "1", "--draws", "24", "--n-inputs", "5",
            "--ratio", "0.001", "--layer", "2", "--json"]
    with_cv, plain = (json.loads(run(*args, *extra).stdout) for extra in ([], ["--no-control-variate"]))
    assert with_cv["printed"] == "control_variate" and plain["printed"] == "plain"
    assert plain["control_variate"] is None and "--no-control-variate" in plain["printed_why"]
    assert plain["plain"] == {k: with_cv["plain"][k] for k in ("mean_rel_change", "ci95")}
    assert plain["mean_rel_change"] == with_cv["mean_rel_change"] and plain["ci95"] == with_cv["ci95"]
    cv = with_cv["control_variate"]["ci95"]
    assert cv[1] - cv[0] < plain["ci95"][1] - plain["ci95"][0]
    # without it, no draw's first-order change is taken (only the control variate reads them), and every other
    # number is the same: the kernel's batches differ then (no first-order chunks), its numbers do not
    cv_only = ("control_variate", "printed", "printed_why", "plain", "by_layer")
    assert {k: v for k, v in plain.items() if k not in cv_only} == {k: v for k, v in with_cv.items()
                                                                    if k not in cv_only}
    spec = Spec.from_dict({"network": {"input_dim": 8, "output_dim": 4, "n_inputs": 5},
                           "grid": {"L": [3], "m": [16], "ratio": [0.001, 0.3], "layer": "all", "seeds": 1},
                           "noise": {"draws": 24}})
    parts = {flag: list(block_batches(spec, 3, 16, (0,), with_first_order=flag)) for flag in (True, False)}
    assert np.isnan(parts[False][0][2].linear_change).all() and np.isfinite(parts[True][0][2].linear_change).all()
    for name in ("delta_norm", "pred_changed", "hidden_flip_fraction"):  # per draw, batch after batch
        assert np.array_equal(*(np.concatenate([getattr(p, name) for _, _, p in parts[flag]], axis=-1)
                                for flag in (True, False)), equal_nan=True), name
    for name in ("worst_realised", "linear_rms", "bound"):  # per network
        assert np.array_equal(getattr(parts[True][0][2], name), getattr(parts[False][0][2], name)), name
