"""Sets of inputs: one eta per draw for every input, and the classifier metrics.

The reference materialises eta, applies W_i + eta to ALL inputs and reruns the
whole network, draw by draw; it shares no code with pipeline.measure or
pipeline.noise.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.files import parse_network
from pipeline.measure import measure_network, propagate
from pipeline.network import Network
from pipeline.noise import pre_activation_noise

from test_measure import MODELS, naive_eta, naive_forward, random_net


def naive_outputs(weights, biases, X, i=None, eta=None):
    """Outputs (k, n) and hidden pre-activations of every input (columns of X), W_i replaced by W_i + eta."""
    ws = [w + eta if j == i else w for j, w in enumerate(weights, 1)]
    pre = [naive_forward(ws, biases, x) for x in X.T]
    return np.stack([p[-1] for p in pre], axis=1), pre


def naive_draws(net, X, labels, layer, ratio, distribution, norm, draws, rng):
    """Per draw and input: ||v - v*||, prediction changed; per draw: accuracy. One eta per draw."""
    clean, _ = naive_outputs(net.weights, net.biases, X)
    delta, changed, accuracy = [], [], []
    for _ in range(draws):
        eta = naive_eta(rng, net.weights[layer - 1], ratio, distribution, norm)
        out, _ = naive_outputs(net.weights, net.biases, X, layer, eta)
        delta.append(np.sqrt(((out - clean) ** 2).sum(axis=0)))
        changed.append(out.argmax(axis=0) != clean.argmax(axis=0))
        accuracy.append(np.mean(out.argmax(axis=0) == labels))
    return np.array(delta), np.array(changed, dtype=float), np.array(accuracy)


def z_score(a: np.ndarray, b: np.ndarray) -> float:
    """Difference of two independent sample means in standard errors (0 when both are constant)."""
    se = np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    return 0.0 if se == 0 and a.mean() == b.mean() else abs(a.mean() - b.mean()) / se


# ---------------------------------------------------------------- the same eta: equal to rounding


@pytest.mark.parametrize("biases", [False, True])
def test_propagate_many_inputs_equals_naive_rerun_for_the_same_eta(biases):
    rng = np.random.default_rng(21 + biases)
    L, d, m, k, n = 3, 5, 8, 4, 6
    net = random_net(rng, L, d, m, k, biases)
    X = rng.standard_normal((d, n))
    fwd = net.forward(X)
    etas = {i: [rng.standard_normal(net.weights[i - 1].shape) * 0.7 for _ in range(5)] for i in (1, 2, 3)}
    # the columns of an origin are one run of draws per input: column j * draws + t is draw t on input j
    perts = {i: np.stack([e @ fwd.post[i - 1] for e in etas[i]], axis=2).reshape(net.weights[i - 1].shape[0], -1)
             for i in etas}
    moved = propagate(net, fwd, perts)
    clean, clean_pre = naive_outputs(net.weights, net.biases, X)
    changed_any = 0
    for i, es in etas.items():
        for t, e in enumerate(es):
            out, pre = naive_outputs(net.weights, net.biases, X, i, e)
            cols = slice(t, None, len(es))
            np.testing.assert_allclose(moved[i].delta[cols], np.sqrt(((out - clean) ** 2).sum(axis=0)), rtol=1e-9)
            flips = [sum(int(np.sum((a > 0) != (b > 0))) for a, b in zip(cp[:-1], p[:-1]))
                     for cp, p in zip(clean_pre, pre)]
            np.testing.assert_array_equal(moved[i].flips[cols], flips)
            np.testing.assert_array_equal(moved[i].argmax[cols], out.argmax(axis=0))
            changed_any += int(np.sum(out.argmax(axis=0) != clean.argmax(axis=0)))
    assert changed_any > 0  # the argmax comparison was not vacuous


# ---------------------------------------------------------------- the sampler


@pytest.mark.parametrize("n", [1, 3, 7, 9])
def test_uniform_direction_sampler_has_the_covariance_of_one_shared_eta(n):
    """For eta uniform on the sphere of radius s in R^(n_out x n_in), E[(eta h_j) . (eta h_l)] =
    s^2 h_j . h_l / n_in: the Gram matrix of the inputs, across inputs of one draw. n = 7 = n_in
    and n = 9 > n_in take the materialised path, n < n_in the QR path."""
    rng = np.random.default_rng(n)
    n_out, n_in, draws = 4, 7, 40000
    w = rng.standard_normal((n_out, n_in))
    H = rng.standard_normal((n_in, n)) * rng.uniform(0.5, 2.0, size=n)
    u = pre_activation_noise(np.random.default_rng(100 + n), w, H, draws, "gaussian", "frobenius")
    assert u.shape == (n_out, draws, n)
    gram = np.einsum("odj,odl->djl", u, u)  # per draw
    want = np.sum(w**2) * H.T @ H / n_in
    se = gram.std(axis=0, ddof=1) / np.sqrt(draws)
    assert np.all(np.abs(gram.mean(axis=0) - want) <= 4 * se + 1e-12)
    if n == 1:  # the one-input path is the O(n_out) sampler: same numbers as the QR path would give
        v = pre_activation_noise(np.random.default_rng(5), w, H[:, 0], 3, "gaussian", "frobenius")
        assert v.shape == (n_out, 3, 1)


@pytest.mark.parametrize("distribution, norm", MODELS)
def test_many_inputs_match_naive_in_distribution(distribution, norm):
    """Per input: E||v - v*||, share of predictions changed; per draw: accuracy of the perturbed network."""
    rng = np.random.default_rng(5)
    L, d, m, k, n = 3, 6, 8, 3, 4  # n < d, m: the QR path at layers 1..3
    net = random_net(rng, L, d, m, k, biases=True)
    X = rng.standard_normal((n, d))
    labels = rng.integers(0, k, size=n)
    fast = distribution != "rademacher" and norm == "frobenius"
    draws, n_naive, ratio = (6000, 1500, 0.6) if fast else (1500, 800, 0.6)
    res = measure_network(net, X, np.array([ratio]), (1, 2, 3), draws, distribution, norm,
                          lambda i: np.random.default_rng([9, i]), labels)
    naive_rng = np.random.default_rng(77)
    for col, i in enumerate((1, 2, 3)):
        delta, changed, accuracy = naive_draws(net, X.T, labels, i, ratio, distribution, norm, n_naive, naive_rng)
        for j in range(n):
            assert z_score(res.delta_norm[0, col, j], delta[:, j]) < 3, (i, j)
            assert z_score(res.pred_changed[0, col, j], changed[:, j]) < 3, (i, j)
        assert z_score(res.accuracy[0, col], accuracy) < 3, i
        # one eta per draw: the spread of per-draw accuracy is that of one network per draw
        assert res.accuracy[0, col].std() == pytest.approx(accuracy.std(), rel=0.25, abs=0.02)
    assert res.pred_changed.max() > 0


@pytest.mark.parametrize("distribution, norm", [("gaussian", "frobenius"), ("gaussian", "spectral"),
                                                ("rademacher", "frobenius")])
@pytest.mark.parametrize("n", [3, 14])
def test_kernel_with_several_inputs_and_ratios_equals_a_naive_rerun_of_the_same_noise(distribution, norm, n):
    """measure_network with n inputs and three ratios at once, cell by cell, against materialising eta and
    rerunning the whole network on every input. The noise is the kernel's own: its stream's eta @ H at
    ratio 1 (H the layer's clean inputs), and eta' = (eta @ H) H^+ has eta' H = eta H (H H^+ H = H), so
    W_i + r eta' moves every input as the kernel's draw does. n = 3 samples eta @ H without eta; n = 14
    (more inputs than units) forms eta. A mix-up of ratios, inputs, draws or layers in the columns fails."""
    rng = np.random.default_rng(60 + n)
    L, d, m, k, draws = 3, 10, 11, 4, 5
    net = random_net(rng, L, d, m, k, biases=True)
    X = rng.standard_normal((d, n))
    labels = rng.integers(0, k, n)
    ratios = np.array([0.001, 0.1, 0.7])
    stream = lambda i: np.random.default_rng([8, i])  # noqa: E731
    res = measure_network(net, X.T, ratios, (1, 2, 3), draws, distribution, norm, stream, labels)
    clean, clean_pre = naive_outputs(net.weights, net.biases, X)
    hidden = (L - 1) * m
    changed = 0
    for i in (1, 2, 3):
        H = X if i == 1 else np.stack([np.maximum(p[i - 2], 0.0) for p in clean_pre], axis=1)
        P = pre_activation_noise(stream(i), net.weights[i - 1], H, draws, distribution, norm)  # (n_i, draw, n)
        for t in range(draws):
            eta = P[:, t, :] @ np.linalg.pinv(H)
            for a, r in enumerate(ratios):
                out, pre = naive_outputs(net.weights, net.biases, X, i, r * eta)
                flips = [sum(int(np.sum((u > 0) != (w > 0))) for u, w in zip(cp[:-1], p[:-1]))
                         for cp, p in zip(clean_pre, pre)]
                np.testing.assert_allclose(res.delta_norm[a, i - 1, :, t], np.sqrt(((out - clean) ** 2).sum(axis=0)),
                                           rtol=1e-8, err_msg=f"layer {i}, ratio {r}, draw {t}")
                np.testing.assert_allclose(res.hidden_flip_fraction[a, i - 1, :, t], np.array(flips) / hidden,
                                           rtol=0, atol=1e-15)
                moved = out.argmax(axis=0) != clean.argmax(axis=0)
                np.testing.assert_array_equal(res.pred_changed[a, i - 1, :, t], moved)
                assert res.accuracy[a, i - 1, t] == pytest.approx(np.mean(out.argmax(axis=0) == labels), abs=1e-12)
                changed += int(moved.sum())
    assert changed > 0  # the prediction comparison was not vacuous


def test_metrics_of_one_network(tmp_path):
    """clean accuracy and margin against a direct computation; accuracy with r = 0 is the clean one."""
    rng = np.random.default_rng(8)
    net = random_net(rng, 3, 5, 6, 4, biases=True)
    X = rng.standard_normal((9, 5))
    labels = rng.integers(0, 4, size=9)
    res = measure_network(net, X, np.array([0.0, 0.5]), (1, 2, 3, 4), 7, "gaussian", "frobenius",
                          lambda i: np.random.default_rng(i), labels)
    clean, _ = naive_outputs(net.weights, net.biases, X.T)
    top = np.sort(clean, axis=0)
    np.testing.assert_allclose(res.margin, top[-1] - top[-2], rtol=1e-12)
    np.testing.assert_allclose(res.output_norm, np.linalg.norm(clean, axis=0), rtol=1e-12)
    assert res.clean_accuracy == pytest.approx(np.mean(clean.argmax(axis=0) == labels))
    assert np.all(res.accuracy[0, :3] == res.clean_accuracy) and np.all(res.pred_changed[0, :3] == 0)
    assert np.all(np.isnan(res.accuracy[:, 3])) and np.all(np.isnan(res.pred_changed[:, 3]))
    # k = 1: no runner-up, and the prediction cannot change
    one = measure_network(Network((np.ones((1, 2)),)), np.ones((3, 2)), np.array([0.5]), (1,), 4,
                          "gaussian", "frobenius", lambda i: np.random.default_rng(i))
    assert np.all(np.isnan(one.margin)) and np.all(one.pred_changed == 0) and np.isnan(one.clean_accuracy)


# ---------------------------------------------------------------- a trained network on real data


def test_trained_digits_network_matches_naive_monte_carlo(digits_zoo):
    """On a network trained on digits and its test images: per layer, E||v - v*||, E R and the
    prediction-change rate agree with an independent naive Monte Carlo (|z| < 3), and so does
    the accuracy of each perturbed network (one eta for all inputs)."""
    path = digits_zoo["models"] / "digits_L3_m16_seed0.safetensors"
    arrays = parse_network(path.read_bytes(), str(path))
    net = Network(arrays.weights, arrays.biases)
    X, y = digits_zoo["x"][:40], digits_zoo["y"][:40]
    ratio, draws, n_naive = 0.5, 3000, 600
    res = measure_network(net, X, np.array([ratio]), (1, 2, 3), draws, "gaussian", "frobenius",
                          lambda i: np.random.default_rng([31, i]), y)
    clean, _ = naive_outputs(net.weights, net.biases, X.T)
    rng = np.random.default_rng(32)
    for col, i in enumerate((1, 2, 3)):
        delta, changed, accuracy = naive_draws(net, X.T, y, i, ratio, "gaussian", "frobenius", n_naive, rng)
        rel = delta / np.linalg.norm(clean, axis=0)
        kernel_rel = res.delta_norm[0, col] / res.output_norm[:, None]
        assert z_score(res.delta_norm[0, col].mean(axis=0), delta.mean(axis=1)) < 3, i
        assert z_score(kernel_rel.mean(axis=0), rel.mean(axis=1)) < 3, i
        assert z_score(res.pred_changed[0, col].mean(axis=0), changed.mean(axis=1)) < 3, i
        assert z_score(res.accuracy[0, col], accuracy) < 3, i
        assert changed.mean() > 0.005  # predictions do change at this ratio: the test can fail
