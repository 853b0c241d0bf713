"""The measurement kernel against a deliberately naive reference.

The reference below shares no code with pipeline.measure or pipeline.noise:
it materialises eta, scales it so ||eta||_norm = r ||W_i||_norm, forms
W_i + eta and reruns the whole network from x for every single draw.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipeline import config, measure, sizes
from pipeline.measure import RESULT_FIELDS, block_batches, measure_block, measure_network, propagate
from pipeline.network import Network, layer_shapes
from pipeline.sizes import draws_per_piece
from pipeline.spec import Spec
from pipeline_helpers import assert_bit_identical, build_store, raw_spec, read_arrays

MODELS = [(dist, norm) for dist in ("gaussian", "rademacher", "sphere") for norm in ("frobenius", "spectral")]


# ---------------------------------------------------------------- the naive reference


def naive_forward(weights, biases, x):
    """Pre-activations z_1..z_L of a ReLU network with a linear read-out."""
    pre, h = [], x
    for j, w in enumerate(weights):
        z = w @ h
        if biases is not None:
            z = z + biases[j]
        pre.append(z)
        h = np.where(z > 0, z, 0.0)
    return pre


def naive_perturbed(weights, biases, x, i, eta):
    """(||v* - v||, ReLU flips in hidden layers) with W_i replaced by W_i + eta, rerun from x."""
    clean = naive_forward(weights, biases, x)
    noisy_weights = [w + eta if j == i else w for j, w in enumerate(weights, 1)]
    noisy = naive_forward(noisy_weights, biases, x)
    flips = sum(int(np.sum((a > 0) != (b > 0))) for a, b in zip(clean[:-1], noisy[:-1]))
    return float(np.sqrt(np.sum((noisy[-1] - clean[-1]) ** 2))), flips


def naive_norm(a, norm):
    if norm == "frobenius":
        return float(np.sqrt(np.sum(a * a)))
    return float(np.linalg.svd(a, compute_uv=False)[0])


def naive_eta(rng, w, ratio, distribution, norm):
    if distribution == "rademacher":
        e = rng.choice(np.array([-1.0, 1.0]), size=w.shape)
    elif distribution == "sphere":  # a uniform direction in R^(n_out x n_in)
        e = rng.standard_normal(w.shape)
        e /= np.sqrt(np.sum(e * e))
    else:
        e = rng.standard_normal(w.shape)
    return e * (ratio * naive_norm(w, norm) / naive_norm(e, norm))


def naive_measure(weights, biases, x, layer, draws, ratio, distribution, norm, rng):
    """delta norms and flip counts of ``draws`` independent draws at one layer."""
    out = np.array([naive_perturbed(weights, biases, x, layer,
                                    naive_eta(rng, weights[layer - 1], ratio, distribution, norm))
                    for _ in range(draws)])
    return out[:, 0], out[:, 1]


def random_net(rng, L, d, m, k, biases=False, scales=None):
    widths = [d] + [m] * (L - 1) + [k]
    scales = scales or [1.0] * L
    ws = tuple(s * rng.standard_normal((widths[j + 1], widths[j])) * np.sqrt(2.0 / widths[j])
               for j, s in enumerate(scales))
    bs = tuple(0.3 * rng.standard_normal(widths[j + 1]) for j in range(L)) if biases else None
    return Network(ws, bs)


def layer_rng(seed):
    return lambda i: np.random.default_rng([seed, i])


# ---------------------------------------------------------------- (a) same eta, same numbers


@pytest.mark.parametrize("biases", [False, True])
@pytest.mark.parametrize("L", [1, 2, 4])
def test_propagate_equals_naive_rerun_for_the_same_eta(L, biases):
    rng = np.random.default_rng(100 * L + biases)
    d, m, k = 7, 9, 4
    net = random_net(rng, L, d, m, k, biases)
    x = rng.standard_normal(d)
    fwd = net.forward(x)
    n_eta = 12
    etas = {i: [rng.standard_normal(net.weights[i - 1].shape) * rng.uniform(0.01, 1.0) for _ in range(n_eta)]
            for i in range(1, L + 1)}
    perts = {i: np.stack([e @ fwd.post[i - 1] for e in etas[i]], axis=1) for i in etas}

    together = propagate(net, fwd, perts)
    assert sorted(together) == list(range(1, L + 1))
    total_flips = 0
    for i in range(1, L + 1):
        alone = propagate(net, fwd, {i: perts[i]})
        assert list(alone) == [i]
        want = np.array([naive_perturbed(net.weights, net.biases, x, i, e) for e in etas[i]])
        for delta, flips in ((alone[i].delta, alone[i].flips), (together[i].delta, together[i].flips)):
            assert delta.shape == flips.shape == (n_eta,)
            np.testing.assert_allclose(delta, want[:, 0], rtol=1e-9, atol=0)
            np.testing.assert_array_equal(flips, want[:, 1])
        total_flips += want[:, 1].sum()
        if i == L:  # nothing after the read-out can flip
            assert np.all(together[i].flips == 0)
    if L > 1:
        assert total_flips > 0  # the comparison of flip counts was not vacuous


def test_propagate_with_no_perturbation_and_single_columns():
    rng = np.random.default_rng(3)
    net = random_net(rng, 3, 4, 5, 2, biases=True)
    x = rng.standard_normal(4)
    fwd = net.forward(x)
    assert propagate(net, fwd, {}) == {}
    eta = rng.standard_normal((5, 5))
    moved, = propagate(net, fwd, {2: (eta @ fwd.post[1])[:, None]}).values()
    delta, flips = moved.delta, moved.flips
    want = naive_perturbed(net.weights, net.biases, x, 2, eta)
    assert delta[0] == pytest.approx(want[0], rel=1e-9) and flips[0] == want[1]


@pytest.mark.parametrize("biases", [False, True])
def test_measure_network_reported_units(biases):
    """hidden_flip_fraction is the flip count over the hidden units; output_norm is ||v||."""
    rng = np.random.default_rng(4)
    net = random_net(rng, 3, 4, 6, 2, biases)
    x = rng.standard_normal(4)
    res = measure_network(net, x, np.array([0.5]), (1, 2, 3, 4), 50, "gaussian", "frobenius", layer_rng(1))
    assert res.delta_norm.shape == res.hidden_flip_fraction.shape == res.pred_changed.shape == (1, 4, 1, 50)
    assert res.bound.shape == (1, 4, 1) and res.accuracy.shape == (1, 4, 50)
    assert res.output_norm[0] == pytest.approx(np.linalg.norm(naive_forward(net.weights, net.biases, x)[-1]))
    assert np.all(np.isnan(res.delta_norm[:, 3])) and np.all(np.isnan(res.bound[:, 3]))
    f = res.hidden_flip_fraction[:, :3]
    assert np.all((f >= 0) & (f <= 1)) and np.all(res.hidden_flip_fraction[:, 2] == 0)
    np.testing.assert_allclose(f * 12, np.round(f * 12), atol=1e-12)  # counts over 6 + 6 units
    assert f[:, :2].max() > 0


# ---------------------------------------------------------------- (b) same distribution


@pytest.mark.parametrize("distribution, norm", MODELS)
def test_kernel_matches_naive_in_distribution(distribution, norm):
    rng = np.random.default_rng(7)
    L, d, m, k, ratio = 3, 3, 8, 3, 0.3
    net = random_net(rng, L, d, m, k, biases=True)
    x = rng.standard_normal(d)
    fast = distribution != "rademacher" and norm == "frobenius"  # eta @ h sampled without eta: cheap
    n_kernel, n_naive = (20000, 1500) if fast else (2000, 1000)
    res = measure_network(net, x, np.array([ratio]), (1, 2, 3), n_kernel, distribution, norm, layer_rng(11))
    hidden = 2 * m
    naive_rng = np.random.default_rng(12345)
    for col, i in enumerate((1, 2, 3)):
        delta, flips = naive_measure(net.weights, net.biases, x, i, n_naive, ratio, distribution, norm,
                                     naive_rng)
        for a, b in ((res.delta_norm[0, col, 0], delta), (res.hidden_flip_fraction[0, col, 0], flips / hidden)):
            se = np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
            assert abs(a.mean() - b.mean()) <= 4.5 * se + 1e-12, (i, a.mean(), b.mean(), se)
        assert delta.mean() > 0


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher", "sphere"])
def test_readout_second_moment_is_exact(distribution):
    """At the linear read-out v* - v = eta h_{L-1}. For any noise with exchangeable,
    uncorrelated entries scaled to ||eta||_F = r ||W_L||_F,
    E||eta h||^2 = r^2 ||W_L||_F^2 ||h||^2 / n_in exactly."""
    rng = np.random.default_rng(8)
    net = random_net(rng, 2, 3, 3, 2)
    x = rng.standard_normal(3)
    h = net.forward(x).post[-1]
    ratio, draws = 0.2, 20000 if distribution != "rademacher" else 4000
    res = measure_network(net, x, np.array([ratio]), (2,), draws, distribution, "frobenius", layer_rng(2))
    sq = res.delta_norm[0, 0, 0] ** 2
    want = ratio**2 * np.sum(net.weights[1] ** 2) * np.sum(h**2) / 3
    assert abs(sq.mean() - want) <= 4.5 * sq.std() / np.sqrt(draws) + 1e-12 * want
    # and the first layer of a wide-input network (the fast path's chi-square with n_out (n_in - 1) dof)
    net = random_net(rng, 1, 2, 1, 3)
    x = rng.standard_normal(2)
    res = measure_network(net, x, np.array([ratio]), (1,), draws, distribution, "frobenius", layer_rng(3))
    sq = res.delta_norm[0, 0, 0] ** 2
    want = ratio**2 * np.sum(net.weights[0] ** 2) * np.sum(x**2) / 2
    assert abs(sq.mean() - want) <= 4.5 * sq.std() / np.sqrt(draws) + 1e-12 * want


# ---------------------------------------------------------------- (c) properties


@st.composite
def networks(draw, biases=st.booleans()):
    L = draw(st.integers(1, 4))
    d, m, k = draw(st.integers(1, 6)), draw(st.integers(1, 8)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    scales = draw(st.lists(st.floats(0.1, 10.0), min_size=L, max_size=L))
    rng = np.random.default_rng(seed)
    net = random_net(rng, L, d, m, k, draw(biases), scales)
    return net, rng.standard_normal(d) * draw(st.floats(0.1, 10.0))


models = st.sampled_from(MODELS)


@settings(max_examples=60, deadline=None)
@given(netx=networks(biases=st.just(False)), model=models, which=st.integers(0, 4),
       c=st.floats(1e-3, 1e3), seed=st.integers(0, 2**32 - 1))
def test_relative_change_is_scale_invariant_without_biases(netx, model, which, c, seed):
    net, x = netx
    which = min(which, net.depth)  # 0 scales x*, j scales W_j
    layers = tuple(range(1, net.depth + 1))
    ratios = np.array([0.05, 0.7])
    base = measure_network(net, x, ratios, layers, 3, *model, layer_rng(seed))
    assume(base.output_norm > 1e-12)
    if which == 0:
        net2, x2 = net, c * x
    else:
        net2 = Network(tuple(c * w if j == which else w for j, w in enumerate(net.weights, 1)))
        x2 = x
    scaled = measure_network(net2, x2, ratios, layers, 3, *model, layer_rng(seed))
    np.testing.assert_allclose(scaled.delta_norm / scaled.output_norm, base.delta_norm / base.output_norm,
                               rtol=1e-9, atol=1e-14)
    np.testing.assert_array_equal(scaled.hidden_flip_fraction, base.hidden_flip_fraction)
    np.testing.assert_array_equal(scaled.pred_changed, base.pred_changed)
    np.testing.assert_allclose(scaled.bound / scaled.output_norm, base.bound / base.output_norm, rtol=1e-9)


@settings(max_examples=60, deadline=None)
@given(netx=networks(), model=models, ratios=st.lists(st.floats(1e-3, 10.0), min_size=1, max_size=3),
       seed=st.integers(0, 2**32 - 1))
def test_delta_never_exceeds_the_bound(netx, model, ratios, seed):
    net, x = netx
    res = measure_network(net, x, np.array(ratios), tuple(range(1, net.depth + 1)), 4, *model,
                          layer_rng(seed))
    assert np.all(np.isfinite(res.delta_norm)) and np.all(np.isfinite(res.bound))
    # rounding allowed: a layer whose clean input is 0 has bound 0, and the batched pass
    # differs from the clean one in the last bits (as for ratio 0)
    assert np.all(res.delta_norm <= res.bound[..., None] * (1 + 1e-9) + 1e-12 * res.output_norm[:, None])


@settings(max_examples=40, deadline=None)
@given(netx=networks(), model=models, seed=st.integers(0, 2**32 - 1))
def test_ratio_zero_changes_nothing(netx, model, seed):
    net, x = netx
    res = measure_network(net, x, np.array([0.0, 0.5]), tuple(range(1, net.depth + 1)), 3, *model,
                          layer_rng(seed))
    assert np.all(res.delta_norm[0] <= 1e-12 * res.output_norm)
    assert np.all(res.hidden_flip_fraction[0] == 0) and np.all(res.pred_changed[0] == 0)
    assert np.all(res.bound[0] == 0)


# ---------------------------------------------------------------- (d) determinism


@pytest.mark.parametrize("distribution, norm", [("gaussian", "frobenius"), ("rademacher", "spectral")])
def test_block_composition_and_reruns_do_not_change_a_number(tiny_spec, distribution, norm):
    spec = tiny_spec(grid={"L": [2, 3], "ratio": [0.1, 0.5], "seeds": 4},
                     noise={"distribution": distribution, "norm": norm, "draws": 5},
                     network={"bias_std": 0.2})
    full = measure_block(spec, 3, 5, (0, 1, 2, 3))
    again = measure_block(spec, 3, 5, (0, 1, 2, 3))
    for name in RESULT_FIELDS:
        np.testing.assert_array_equal(getattr(full, name), getattr(again, name))
    for part in [(2,), (3, 1), (0, 1)]:
        sub = measure_block(spec, 3, 5, part)
        np.testing.assert_array_equal(sub.delta_norm, full.delta_norm[:, :, list(part)])
        np.testing.assert_array_equal(sub.hidden_flip_fraction, full.hidden_flip_fraction[:, :, list(part)])
        np.testing.assert_array_equal(sub.bound, full.bound[:, :, list(part)])
        np.testing.assert_array_equal(sub.output_norm, full.output_norm[list(part)])
    assert full.delta_norm.shape == (2, 3, 4, 1, 5)
    assert np.all(np.isfinite(full.delta_norm))
    # the L = 2 networks have no layer 3
    short = measure_block(spec, 2, 5, (0, 1))
    assert np.all(np.isnan(short.delta_norm[:, 2])) and np.all(np.isfinite(short.delta_norm[:, :2]))
    # seeds and layers get their own streams
    d = full.delta_norm[0]
    assert not np.allclose(d[:, 0], d[:, 1]) and not np.allclose(d[0, :-1], d[0, 1:])


def test_values_do_not_depend_on_the_rest_of_the_grid(tiny_spec):
    base = dict(grid={"L": [3], "ratio": [0.1, 0.4], "seeds": 2}, noise={"draws": 6})
    full = measure_block(tiny_spec(**base), 3, 5, (0, 1))
    one_layer = measure_block(tiny_spec(**{**base, "grid": {**base["grid"], "layer": [2]}}), 3, 5, (0, 1))
    one_ratio = measure_block(tiny_spec(**{**base, "grid": {**base["grid"], "ratio": [0.4]}}), 3, 5, (0, 1))
    np.testing.assert_allclose(one_layer.delta_norm[:, 0], full.delta_norm[:, 1], rtol=1e-12)
    np.testing.assert_allclose(one_ratio.delta_norm[0], full.delta_norm[1], rtol=1e-12)
    # common random numbers: at the linear read-out the change is exactly linear in r
    np.testing.assert_allclose(full.delta_norm[1, 2], 4 * full.delta_norm[0, 2], rtol=1e-12)
    np.testing.assert_allclose(full.bound[1], 4 * full.bound[0], rtol=1e-12)


# ---------------------------------------------------------------- (e) theory


def test_first_order_theory_at_he_init():
    """He init, no biases, Frobenius-scaled Gaussian noise, small r, wide layers:
    E R^2 = r^2 for every L and layer, up to finite-width corrections of order
    2 (L - i) / m + 1 / k (about 5% in R at L = 8, i = 1 here)."""
    from pipeline.analysis.theory import log_variance

    r, m, k, seeds, draws = 0.01, 512, 64, 24, 16
    ratios = []
    for L in (1, 2, 4, 8):
        spec = Spec.from_dict({"random_seed": 2024, "network": {"input_dim": 64, "output_dim": k},
                               "grid": {"L": [L], "m": [m], "ratio": [r], "seeds": seeds},
                               "noise": {"draws": draws}})
        block = measure_block(spec, L, m, spec.grid.seeds)
        rel2 = (block.delta_norm[0, :, :, 0] / block.output_norm[None, :, :]) ** 2  # (layer, seed, draw)
        per_net = rel2.mean(axis=2)
        rms = np.sqrt(per_net.mean(axis=1))
        se = per_net.std(axis=1, ddof=1) / np.sqrt(seeds) / per_net.mean(axis=1) / 2  # of rms, relative
        for i in range(1, L + 1):
            ratio = rms[i - 1] / r
            ratios.append(ratio)
            assert abs(ratio - 1) < 0.12, (L, i, ratio)
            # with the log-normal finite-width correction the agreement is within Monte-Carlo error
            corrected = ratio / np.exp(log_variance(L - i, m, k))
            assert abs(corrected - 1) < 0.01 + 4 * se[i - 1], (L, i, ratio, corrected, se[i - 1])
    # over every (L, layer) the first-order prediction holds to a few percent
    assert abs(np.mean(ratios) - 1) < 0.06, ratios


# ---------------------------------------------------------------- the benchmark still runs


def test_benchmark_script_runs(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "benchmarks" / "bench_kernel.py"
    out = subprocess.run([sys.executable, str(script), "--L", "3", "--m", "16", "--d", "8", "--k", "4",
                          "--draws", "4", "--seeds", "2", "--naive-draws", "2", "--gemm-repeats", "1", "--repeat", "1",
                          "--json"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    r = json.loads(out)
    # layer 2 takes the 4 columns of origin 1 through W_2 (16 x 16); layer 3 the 8 of origins 1-2 (4 x 16)
    assert r["work"]["gemm_flops_per_network"] == 2 * 16 * 16 * 4 + 2 * 4 * 16 * 8
    assert r["kernel"]["seconds_per_network"] > 0 and r["naive"]["seconds_per_network"] > 0
    assert r["speedup"] == pytest.approx(r["naive"]["seconds_per_network"] / r["kernel"]["seconds_per_network"])
    assert r["gemm"]["gflops"] > 0 and r["machine"]["blas_threads_requested"] == 1
    # the reference is the better of the rates measured before and after the kernel
    assert r["gemm"]["gflops"] == max(r["gemm"]["gflops_before"], r["gemm"]["gflops_after"])
    assert len(r["machine"]["load_average"]) == 3 and len(r["load_average_end"]) == 3
    # the whole `nnsweep estimate` process on the same networks, draws and ratio
    p = r["process"]
    assert p["command"].startswith("nnsweep estimate --L 3 --m 16 --d 8 --k 4 --ratio 0.1 --seeds 2 --draws 4")
    assert p["seconds"] > p["python_pass_seconds"] > 0
    assert p["speedup"] == pytest.approx(2 * r["naive"]["seconds_per_network"] / p["seconds"])


@pytest.mark.parametrize("distribution, norm", [("gaussian", "frobenius"), ("gaussian", "spectral"),
                                                ("rademacher", "frobenius")])
@pytest.mark.parametrize("n", [1, 5, 12])
def test_results_do_not_depend_on_the_batch_of_draws(distribution, norm, n):
    """Batches of 2, 4 and 6 draws give exactly the numbers of one batch of all 16 (float64), pieces of two."""
    rng = np.random.default_rng(4)
    net = random_net(rng, 3, 10, 11, 4, biases=True)
    x = rng.standard_normal((n, 10))
    labels = rng.integers(0, 4, n)
    args = (net, x, np.array([0.01, 0.3]), (1, 2, 3), 16, distribution, norm, layer_rng(2), labels)
    whole = measure_network(*args, batch_draws=16, piece_draws=2)
    for batch in (2, 4, 6):
        part = measure_network(*args, batch_draws=batch, piece_draws=2)
        for name in RESULT_FIELDS:
            np.testing.assert_array_equal(getattr(part, name), getattr(whole, name), err_msg=f"{name}, {batch}")


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_results_do_not_depend_on_the_batch_at_full_size(precision):
    """Layers of 64 and 128 units, where BLAS rounds a column by the shape of its product (with the batch
    as one product, batches of 1, 3 and 7 draws differed in the last bits): whole default pieces, any
    number of them per batch, give the same bits."""
    rng = np.random.default_rng(9)
    ws = (rng.standard_normal((128, 32)) / 6, rng.standard_normal((64, 128)) / 11, rng.standard_normal((10, 64)) / 8)
    net = Network(ws, dtype=np.dtype(precision))
    x = rng.standard_normal((7, 32))
    piece = draws_per_piece(net.shapes, 7, 2, net.dtype)
    args = (net, x, np.array([0.01, 0.3]), (1, 2, 3), 3 * piece + 5, "gaussian", "frobenius", layer_rng(3))
    whole = measure_network(*args, batch_draws=10 * piece)
    for batch in (piece, 2 * piece):
        part = measure_network(*args, batch_draws=batch)
        for name in RESULT_FIELDS:
            np.testing.assert_array_equal(getattr(part, name), getattr(whole, name), err_msg=f"{name}, {batch}")


def test_a_block_in_many_batches_equals_one_batch(tiny_spec, monkeypatch):
    """The budget NNSWEEP_DRAW_BATCH_MEMORY sets the batch; the block's numbers stay the same."""
    monkeypatch.setattr(config, "PIECE_BYTES", 1)  # pieces of one draw, so that a batch can be one draw
    monkeypatch.setattr(config, "FIRST_ORDER_BYTES", 1)  # first-order changes a draw at a time too
    spec = tiny_spec()
    one = measure_block(spec, 2, 8, (0, 1))
    monkeypatch.setenv("NNSWEEP_DRAW_BATCH_MEMORY", "1")  # one draw per batch
    assert len(list(block_batches(spec, 2, 8, (0, 1)))) == 2 * spec.noise.draws
    many = measure_block(spec, 2, 8, (0, 1))
    for name in RESULT_FIELDS:
        np.testing.assert_array_equal(getattr(many, name), getattr(one, name))


def test_a_store_written_in_batches_equals_one_written_in_one(tmp_path, monkeypatch):
    """A sweep of 12 draws, one batch per draw against one batch per network: the same store, bit for bit.
    (The kernel's pieces, of one draw here, are set by the spec alone: see pipeline.sizes.draws_per_piece.)"""
    monkeypatch.setattr(config, "PIECE_BYTES", 1)
    monkeypatch.setattr(config, "FIRST_ORDER_BYTES", 1)  # first-order changes a draw at a time too
    raw = raw_spec(noise={"draws": 12}, network={"n_inputs": 3})
    one = read_arrays(build_store(tmp_path / "one.zarr", raw))
    monkeypatch.setenv("NNSWEEP_DRAW_BATCH_MEMORY", "1")
    spec = Spec.from_dict(raw)
    assert len(list(block_batches(spec, 2, 8, (0, 1)))) == 2 * 12
    assert_bit_identical(read_arrays(build_store(tmp_path / "many.zarr", raw)), one, "batches of one draw")


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_depth_first_and_layer_by_layer_give_the_same_bits(tiny_spec, monkeypatch, activation):
    """A network that holds its matrices takes each piece through every layer at once; one that draws them
    again at each fetch (NNSWEEP_KEEP_WEIGHTS=0) goes layer by layer. Same numbers, in several batches."""
    monkeypatch.setattr(config, "PIECE_BYTES", 1)
    monkeypatch.setattr(config, "FIRST_ORDER_BYTES", 1)  # first-order changes a draw at a time too
    monkeypatch.setenv("NNSWEEP_DRAW_BATCH_MEMORY", "1")
    spec = tiny_spec(grid={"L": [3], "m": [12], "ratio": [0.01, 0.4], "seeds": 2}, noise={"draws": 5},
                     network={"n_inputs": 3, "bias_std": 0.1, "activation": activation})
    held = measure_block(spec, 3, 12, (0, 1))
    shapes = layer_shapes(3, 12, spec.network.input_dim, spec.network.output_dim)
    assert sizes.depth_first(shapes, np.float64, True)
    # held, but weights above the depth-first limit: layer by layer too
    monkeypatch.setattr(config, "DEPTH_FIRST_WEIGHT_BYTES", 12 * 12 * 8)
    assert not sizes.depth_first(shapes, np.float64, True)
    taken = []  # the way the kernel went, pass by pass
    monkeypatch.setattr(measure, "goes_depth_first", lambda *a: taken.append(sizes.depth_first(*a)) or taken[-1])
    large = measure_block(spec, 3, 12, (0, 1))
    assert taken and not any(taken)
    monkeypatch.setattr(config, "DEPTH_FIRST_WEIGHT_BYTES", 8 * 2**20)
    monkeypatch.setenv("NNSWEEP_KEEP_WEIGHTS", "0")
    drawn = measure_block(spec, 3, 12, (0, 1))
    for name in RESULT_FIELDS:
        np.testing.assert_array_equal(getattr(drawn, name), getattr(held, name), err_msg=name)
        np.testing.assert_array_equal(getattr(large, name), getattr(held, name), err_msg=name)
    assert np.all(np.isfinite(held.delta_norm)) and held.hidden_flip_fraction.max() > 0


def test_first_order_changes_do_not_depend_on_the_batches(monkeypatch):
    """Chunks of 4 draws for the first-order changes, pieces of one draw: batches asked for as 3, 4 or 6 draws
    (run as whole chunks) and one batch give the same linear_change and linear_pred_changed to the last bit."""
    monkeypatch.setattr(config, "PIECE_BYTES", 1)
    rng = np.random.default_rng(11)
    net = Network((rng.standard_normal((48, 16)) / 4, rng.standard_normal((5, 48)) / 7))
    x = rng.standard_normal((6, 16))
    monkeypatch.setattr(config, "FIRST_ORDER_BYTES", 4 * 6 * 48 * 8)  # 4 draws of noise: a chunk
    args = (net, x, np.array([0.01, 0.2]), (1, 2), 13, "gaussian", "frobenius", layer_rng(5))
    whole = measure_network(*args)
    assert np.all(np.isfinite(whole.linear_change))
    for batch in (3, 4, 6):
        part = measure_network(*args, batch_draws=batch)
        for name in ("linear_change", "linear_pred_changed", "delta_norm"):
            np.testing.assert_array_equal(getattr(part, name), getattr(whole, name), err_msg=f"{name}, {batch}")


@pytest.mark.parametrize("n", [6, 64])  # 64 inputs: the copy through padded rows
def test_first_order_changes_of_pieces_that_do_not_divide_the_chunk(monkeypatch, n):
    """Pieces of 3 draws (a caller's choice: the default ones are powers of two) against chunks of 4: the draws
    that wait for their first-order changes overrun no buffer, and each draw's change is J_i eta h_{i-1} of its
    own eta, as pieces of one draw give it (to rounding: the chunks' products have other shapes)."""
    rng = np.random.default_rng(12)
    net = Network((rng.standard_normal((48, 16)) / 4, rng.standard_normal((5, 48)) / 7))
    x = rng.standard_normal((n, 16))
    monkeypatch.setattr(config, "FIRST_ORDER_BYTES", 4 * n * 48 * 8)  # 4 draws of noise: a chunk
    args = (net, x, np.array([0.01, 0.2]), (1, 2), 13, "gaussian", "frobenius", layer_rng(5))
    odd = measure_network(*args, piece_draws=3)
    single = measure_network(*args, piece_draws=1)
    assert np.all(np.isfinite(odd.linear_change))
    np.testing.assert_allclose(odd.linear_change, single.linear_change, rtol=1e-12)
    np.testing.assert_array_equal(odd.linear_pred_changed, single.linear_pred_changed)


@pytest.mark.parametrize("held", [True, False])
def test_a_piece_of_one_column_ignores_what_the_buffers_held(held):
    """A piece of one column is multiplied as two (a GEMV rounds otherwise); its second column is zeroed, so
    buffers that held infinities (freed memory comes back as it was left) raise no warning and change no
    number, depth first or layer by layer."""
    from pipeline.measure import run_pass

    rng = np.random.default_rng(3)
    net = Network((rng.standard_normal((9, 4)), rng.standard_normal((7, 9)), rng.standard_normal((3, 7))))
    net.holds_weights = held
    x = rng.standard_normal((4, 1))
    u = rng.standard_normal((9, 1)) * 0.1

    def visit(j, w, h):
        return u if j == 1 else None

    clean = run_pass(net, x, {1: [1]}, visit)[1][1]
    workspace = {name: np.full(64, np.inf) for name in ("in", "out")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dirty = run_pass(net, x, {1: [1]}, visit, workspace=workspace)[1][1]
    np.testing.assert_array_equal(dirty.delta, clean.delta)
    np.testing.assert_array_equal(dirty.flips, clean.flips)
    assert np.isfinite(dirty.delta).all()
