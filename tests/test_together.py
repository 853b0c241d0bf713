"""Noise in every layer at once (layer 0, "together"): the kernel against an independent Monte Carlo that
perturbs every weight matrix and reruns the network, the linear answer, the worst joint direction and the
bound against their definitions, precision, and the single-layer cells left bit-identical."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.measure import measure_block, measure_network
from pipeline.network import Network
from pipeline.spec import Spec
from pipeline.store import open_results
from pipeline.together import joint_worst, together_bound
from pipeline_helpers import RESULT_VARS, build_store, raw_spec

WIDTHS = (5, 12, 10, 3)  # d, two hidden layers, k
ACT = {"relu": lambda z: np.maximum(z, 0.0), "tanh": np.tanh}


def make_network(seed: int, with_biases: bool, activation: str):
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal((b, a)) * np.sqrt(2.0 / a) for a, b in zip(WIDTHS[:-1], WIDTHS[1:])]
    bs = [0.3 * rng.standard_normal(b) for b in WIDTHS[1:]] if with_biases else None
    return ws, bs, Network(ws, bs, activations=[activation] * (len(ws) - 1))


def forward(ws, bs, x, act):
    """The network's outputs for inputs x (n, d), plainly: (n, k)."""
    h = x.T
    for j, w in enumerate(ws):
        h = w @ h + (0.0 if bs is None else bs[j][:, None])
        if j < len(ws) - 1:
            h = ACT[act](h)
    return h.T


def scaled(e: np.ndarray, target: float, norm: str) -> np.ndarray:
    size = np.linalg.norm(e) if norm == "frobenius" or e.ndim == 1 else np.linalg.norm(e, 2)
    return e * target / size


def reference(ws, bs, x, labels, r, draws, rng, distribution, norm, biases, act):
    """Per draw: ||v* - v|| per input, predictions changed per input, accuracy; every W_j (and b_j) perturbed
    by its own eta formed whole, and the whole network rerun."""
    clean = forward(ws, bs, x, act)

    def sample(shape):
        return rng.choice([-1.0, 1.0], size=shape) if distribution == "rademacher" else rng.standard_normal(shape)

    def size(a):
        return np.linalg.norm(a) if norm == "frobenius" or a.ndim == 1 else np.linalg.norm(a, 2)

    delta, changed, acc = [], [], []
    for _ in range(draws):
        pw = [w + scaled(sample(w.shape), r * size(w), norm) for w in ws]
        pb = bs if not biases else [b + scaled(sample(b.shape), r * np.linalg.norm(b), norm) for b in bs]
        out = forward(pw, pb, x, act)
        delta.append(np.linalg.norm(out - clean, axis=1))
        changed.append(out.argmax(axis=1) != clean.argmax(axis=1))
        acc.append(np.mean(out.argmax(axis=1) == labels))
    return np.array(delta), np.array(changed, float), np.array(acc), np.linalg.norm(clean, axis=1)


def pipeline_together(net, x, labels, ratios, draws, distribution, norm, biases, **kw):
    res = measure_network(net, x, np.array(ratios), (0,), draws, distribution, norm,
                          lambda i: np.random.default_rng([99, i]), labels=labels, biases=biases, **kw)
    return res


def agree(a: np.ndarray, b: np.ndarray) -> None:
    """Means of independent samples a and b within 4.5 standard errors of their difference."""
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    assert abs(a.mean() - b.mean()) <= 4.5 * se + 1e-12, (a.mean(), b.mean(), se)


@pytest.mark.parametrize("distribution, norm, biases, act, n", [
    ("gaussian", "frobenius", False, "relu", 20),  # eta_j formed: as many columns per draw as inputs of W_j
    ("gaussian", "frobenius", True, "relu", 2),    # two ratios x two inputs < 5: the exact QR sampler
    ("rademacher", "spectral", True, "tanh", 20),
    ("sphere", "frobenius", True, "relu", 20),
    ("gaussian", "spectral", False, "relu", 3),
    ("rademacher", "frobenius", False, "tanh", 3),
])
def test_against_a_monte_carlo_that_perturbs_every_matrix(distribution, norm, biases, act, n):
    ws, bs, net = make_network(1, True, act)
    rng = np.random.default_rng(5)
    x, labels = rng.standard_normal((n, WIDTHS[0])), rng.integers(0, WIDTHS[-1], n)
    clean_pred = forward(ws, bs, x, act).argmax(axis=1)
    labels[:n * 3 // 5] = clean_pred[:n * 3 // 5]  # an accuracy well inside (0, 1)
    r, draws = 0.4, 300
    res = pipeline_together(net, x, labels, [0.01, r], draws, distribution, norm, biases)
    res = dataclasses.replace(res, **{f: getattr(res, f)[1:] for f in ("delta_norm", "pred_changed", "accuracy",
                                                                      "bound")})
    delta, changed, acc, out_norm = reference(ws, bs, x, labels, r, draws, rng, distribution, norm, biases, act)
    assert np.allclose(res.output_norm, out_norm)
    agree((res.delta_norm[0, 0] / out_norm[:, None]).mean(axis=0), (delta / out_norm).mean(axis=1))  # E R
    agree(res.pred_changed[0, 0].mean(axis=0), changed.mean(axis=1))
    assert 0.02 < changed.mean() < 0.9  # the comparison has something to compare
    agree(res.accuracy[0, 0], acc)
    assert res.clean_accuracy == pytest.approx(np.mean(clean_pred == labels))
    assert np.all(res.bound[0, 0] >= res.delta_norm[0, 0].max(axis=1))


@pytest.mark.parametrize("distribution, biases", [("gaussian", False), ("rademacher", True)])
def test_linear_answer_against_monte_carlo_at_small_r(distribution, biases):
    ws, bs, net = make_network(2, True, "relu")
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, WIDTHS[0]))
    r, draws = 1e-4, 600
    res = pipeline_together(net, x, None, [r], draws, distribution, "frobenius", biases)
    delta, *_ = reference(ws, bs, x, np.zeros(3), r, draws, rng, distribution, "frobenius", biases, "relu")
    for i in range(3):
        lin2 = res.linear_rms[0, 0, i] ** 2
        for sq in (delta[:, i] ** 2, res.delta_norm[0, 0, i] ** 2):  # the independent MC and the kernel's
            se = sq.std(ddof=1) / np.sqrt(draws)
            assert abs(sq.mean() - lin2) <= 4.5 * se, (sq.mean(), lin2, se)
    # the worst joint direction, through the network, moves it as much as its first-order value says
    assert np.allclose(res.worst_realised[0, 0], res.worst_linear[0, 0], rtol=1e-3)
    assert np.all(res.worst_linear[0, 0] > 3 * res.linear_rms[0, 0])


def test_linear_answer_is_the_sum_of_the_layers_and_the_worst_lies_between():
    """Without perturbed biases, E||sum_j J_j eta_j h||^2 is the sum of the single layers' mean squares, and
    the worst joint change at least each layer's worst and at most their sum."""
    _, _, net = make_network(3, False, "relu")
    x = np.random.default_rng(0).standard_normal((4, WIDTHS[0]))
    res = measure_network(net, x, np.array([1e-3]), (0, 1, 2, 3), 2, "gaussian", "frobenius",
                          lambda i: np.random.default_rng(i))
    rms, worst = res.linear_rms[0], res.worst_linear[0]  # (layer, input)
    assert np.allclose(rms[0] ** 2, (rms[1:] ** 2).sum(axis=0))
    assert np.all(worst[0] >= worst[1:].max(axis=0) * (1 - 1e-9))
    assert np.all(worst[0] <= worst[1:].sum(axis=0) * (1 + 1e-9))


def test_joint_worst_against_brute_force():
    rng = np.random.default_rng(4)
    for trial in range(6):
        grams = []
        for _ in range(3):
            a = rng.standard_normal((2, 4 if trial % 2 else 1))  # rank one: f has kinks where a term is 0
            grams.append((a @ a.T)[None])
        grams = np.stack(grams)  # (3, 1, 2, 2)
        value, w = joint_worst(grams)
        t = np.linspace(0, np.pi, 200001)
        ws = np.stack([np.cos(t), np.sin(t)], axis=1)
        brute = sum(np.sqrt(np.einsum("ta,ab,tb->t", ws, g[0], ws)) for g in grams).max()
        assert value[0] == pytest.approx(brute, rel=1e-8)
        assert sum(np.sqrt(w[0] @ g[0] @ w[0]) for g in grams) == pytest.approx(value[0])


def test_bound_is_neyshabur_without_biases():
    """Without biases and with ReLU: (prod_j (||W_j||_2 + r ||W_j||_F) - prod_j ||W_j||_2) ||x||."""
    ws, _, net = make_network(6, False, "relu")
    x = np.random.default_rng(1).standard_normal((2, WIDTHS[0]))
    ratios = np.array([1e-3, 0.3, 2.0])
    res = measure_network(net, x, ratios, (0,), 50, "gaussian", "frobenius", lambda i: np.random.default_rng(i))
    s = np.array([np.linalg.norm(w, 2) for w in ws])
    c = np.array([np.linalg.norm(w) for w in ws])
    expect = (np.prod(s[None] + ratios[:, None] * c[None], axis=1) - np.prod(s))[:, None] * np.linalg.norm(x, axis=1)
    assert np.allclose(res.bound[:, 0], expect, rtol=1e-4)  # the Lanczos estimates of ||W_j||_2
    assert np.all(res.bound[:, 0] >= res.delta_norm[:, 0].max(axis=-1))


def test_float32_against_float64_at_small_r():
    ws, bs, net64 = make_network(7, True, "tanh")
    net32 = Network(ws, bs, dtype=np.float32, activations=["tanh", "tanh"])
    x = np.random.default_rng(2).standard_normal((4, WIDTHS[0]))
    args = (np.array([1e-6, 1e-3]), (0,), 16, "gaussian", "frobenius", lambda i: np.random.default_rng(i))
    d64 = measure_network(net64, x, *args, biases=True).delta_norm
    d32 = measure_network(net32, x, *args, biases=True).delta_norm
    # float32 weights differ from float64 ones by ~6e-8 relative; the change keeps that relative accuracy
    assert np.max(np.abs(d32 / d64 - 1)) < 1e-4


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_draw_batches_do_not_change_the_draws(distribution):
    """To the last bit: the together passes divide every batch (pieces of 2 draws, batches of 4 against one)."""
    _, _, net = make_network(9, True, "relu")
    x = np.random.default_rng(3).standard_normal((3, WIDTHS[0]))
    args = (np.array([0.1]), (0, 2), 10, distribution, "frobenius", lambda i: np.random.default_rng(i))
    whole = measure_network(net, x, *args, biases=True, piece_draws=2)
    batched = measure_network(net, x, *args, biases=True, batch_draws=4, piece_draws=2)
    for name in ("delta_norm", "hidden_flip_fraction", "pred_changed", "worst_realised", "bound"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(batched, name), err_msg=name)


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_single_layer_cells_bit_identical_beside_together_cells(precision):
    base = raw_spec(grid={"L": [2, 3], "m": [8], "ratio": [0.05, 0.3], "layer": "all", "seeds": 2},
                    network={"bias_std": 0.1}, compute={"precision": precision})
    with_all = raw_spec(base, grid={"layer": ["together", "all"]}, noise={"biases": True})
    a, b = Spec.from_dict(base), Spec.from_dict(with_all)
    assert b.grid.layer == (0, 1, 2, 3)
    for L in (2, 3):
        ra, rb = measure_block(a, L, 8, a.grid.seeds), measure_block(b, L, 8, b.grid.seeds)
        for name in RESULT_VARS:
            x, y = getattr(ra, name), getattr(rb, name)
            if x.ndim >= 2 and x.shape[1] == 3 and name not in ("output_norm", "margin"):
                y = y[:, 1:]  # the (ratio, layer, ...) fields: drop layer 0
            assert np.array_equal(x, y, equal_nan=True), (L, name)
        assert np.all(np.isfinite(rb.delta_norm[:, 0])) and np.all(rb.delta_norm[:, 0] > 0)


def test_spec_hash_and_record_unchanged_by_the_default():
    raw = raw_spec()
    explicit = raw_spec(noise={"biases": False})
    assert Spec.from_dict(raw).hash == Spec.from_dict(explicit).hash
    assert "biases" not in Spec.from_dict(raw).to_dict()["noise"]
    assert Spec.from_dict(raw_spec(grid={"layer": ["together", 1]})).hash != Spec.from_dict(raw).hash
    on = Spec.from_dict(raw_spec(grid={"layer": [0, 1]}, noise={"biases": True}))
    assert on.to_dict()["noise"]["biases"] is True and on.grid.layer == (0, 1)


@pytest.mark.parametrize("grid, noise, words", [
    ({"layer": ["together", "first"]}, {}, ["grid.layer", "'first'", "together"]),
    ({"layer": [0, "together"]}, {}, ["grid.layer", "without repeated values"]),
    ({"layer": [1]}, {"biases": True}, ["noise.biases", "together"]),
    ({"layer": ["together"]}, {"biases": "yes"}, ["noise.biases", "'yes'", "true or false"]),
])
def test_bad_specs_name_the_field(grid, noise, words):
    from pipeline.errors import SpecError

    with pytest.raises(SpecError) as e:
        Spec.from_dict(raw_spec(grid=grid, noise=noise))
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_estimate_shows_the_together_cells_by_layer():
    args = ["estimate", "--L", "3", "--m", "16", "--d", "8", "--k", "4", "--seeds", "3", "--draws", "8",
            "--ratio", "0.1", "--layer", "2,together", "--json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert set(out["by_layer"]) == {"together", "2"}
    # a direct reduction of the same networks' block: R per cell, pooled over seeds, inputs and draws
    spec = Spec.from_dict({"network": {"input_dim": 8, "output_dim": 4, "init": "he"},
                           "grid": {"L": [3], "m": [16], "ratio": [0.1], "layer": [0, 2], "seeds": 3},
                           "noise": {"draws": 8}, "execution": {"seeds_per_block": 3}})
    block = measure_block(spec, 3, 16, spec.grid.seeds)
    rel = block.delta_norm[0] / block.output_norm[None, :, :, None]  # (layer, seed, input, draw)
    assert out["by_layer"]["together"]["mean_rel_change"] == pytest.approx(rel[0].mean())
    assert out["mean_rel_change"] == pytest.approx(rel[1].mean())  # the pooled row leaves together out
    assert out["by_layer"]["together"]["theory_first_order"] == pytest.approx(0.1 * np.sqrt(3))
    table = CliRunner().invoke(main, args[:-1])
    assert table.exit_code == 0 and "together" in table.output


def test_fit_and_report_leave_the_together_cells_out(tmp_path):
    base = raw_spec(grid={"L": [2, 3], "m": [8], "ratio": [0.05, 0.3], "layer": "all", "seeds": 4})
    plain = build_store(tmp_path / "plain.zarr", base)
    mixed = build_store(tmp_path / "mixed.zarr", raw_spec(base, grid={"layer": ["together", "all"]}))
    fits = []
    for path in (plain, mixed):
        res = CliRunner().invoke(main, ["fit", path, "--json", "--bootstrap", "20", "--no-progress"])
        assert res.exit_code == 0, res.output
        fits.append(json.loads(res.stdout))
    assert fits[1].pop("together_cells_left_out") is True and fits[0].pop("together_cells_left_out") is False
    for f in fits:
        f.pop("store")
    assert fits[0] == fits[1]  # the same single-layer cells give the same fit, nothing mixed in
    text = CliRunner().invoke(main, ["fit", mixed, "--bootstrap", "0", "--no-progress"])
    assert text.exit_code == 0 and "layer 0" in text.output
    rep = CliRunner().invoke(main, ["report", mixed, "--out", str(tmp_path / "rep"), "--bootstrap", "0",
                                    "--no-progress"])
    assert rep.exit_code == 0, rep.output
    assert "left out" in (tmp_path / "rep" / "index.md").read_text()
    status = CliRunner().invoke(main, ["status", mixed])
    assert status.exit_code == 0 and "layer=[together, 1, 2, 3]" in status.output, status.output
    only = build_store(tmp_path / "only.zarr", raw_spec(base, grid={"L": [2], "layer": "together", "seeds": 2}))
    res = CliRunner().invoke(main, ["fit", only])
    assert res.exit_code == 2 and "Traceback" not in res.output and "layer=0" in res.output


def test_one_network_store_with_together_cells_reads_through_every_command(tmp_path):
    """A store of one network with together cells: query of a first-order variable (NaN at layer 0 by
    design) is not called damaged, and the report's control-variate answer reads the single layers' columns."""
    spec = raw_spec(grid={"L": [3], "m": [8], "ratio": [0.05], "layer": ["together", "all"], "seeds": 1},
                    noise={"draws": 12})
    path = build_store(tmp_path / "one.zarr", spec)
    q = CliRunner().invoke(main, ["query", path, "--var", "linear_change", "--reduce", "mean",
                                  "--over", "seed,input,draw", "--format", "json"])
    assert q.exit_code == 0 and "damaged" not in q.output, q.output
    # the together cells by name or by coordinate: the same numbers, and only theirs
    by = {}
    for sel in ("layer=together", "layer=0", "layer=TOGETHER"):
        res = CliRunner().invoke(main, ["query", path, "--sel", sel, "--reduce", "mean",
                                        "--over", "seed,input,draw", "--format", "json"])
        assert res.exit_code == 0, res.output
        by[sel] = json.loads(res.stdout)
    assert by["layer=together"] == by["layer=0"] == by["layer=TOGETHER"]
    ds = open_results(path)
    expected = float((ds.delta_norm / ds.output_norm).sel(layer=0).mean().values)
    (row,) = by["layer=0"]
    assert row["layer"] == 0 and row["rel_change"] == pytest.approx(expected, rel=1e-12)
    bad = CliRunner().invoke(main, ["query", path, "--sel", "layer=everything"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output and "layer" in bad.output
    ver = CliRunner().invoke(main, ["verify", path, "--no-progress"])
    assert ver.exit_code == 0, ver.output
    rep = CliRunner().invoke(main, ["report", path, "--out", str(tmp_path / "rep"), "--bootstrap", "0",
                                    "--no-progress"])
    assert rep.exit_code == 0 and "Traceback" not in rep.output, rep.output
