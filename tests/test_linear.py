"""Each network's own linear answer: J_i, the exact small-r RMS, the worst direction, the bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.measure import jacobians, measure_network
from pipeline.network import Network

from test_measure import naive_forward, random_net


def rng_for(seed):
    return lambda i: np.random.default_rng([seed, i])


@pytest.mark.parametrize("biases", [False, True])
def test_jacobians_against_finite_differences(biases):
    rng = np.random.default_rng(1 + biases)
    L, d, m, k, n = 4, 5, 7, 3, 3
    net = random_net(rng, L, d, m, k, biases)
    X = rng.standard_normal((d, n))
    fwd = net.forward(X)
    J = dict(jacobians(net, fwd, range(1, L + 1)))
    eps = 1e-6
    for i in range(1, L + 1):
        for j in range(n):
            for a in range(net.weights[i - 1].shape[0]):
                # v as a function of z_i: run layers i+1..L from z_i + eps e_a (central difference)
                def v_of(z):
                    h = np.maximum(z, 0) if i < L else z
                    for jj in range(i + 1, L + 1):
                        z = net.weights[jj - 1] @ h + (net.biases[jj - 1] if biases else 0)
                        h = np.maximum(z, 0) if jj < L else z
                    return h
                z = fwd.pre[i - 1][:, j].copy()
                e = np.zeros_like(z)
                e[a] = eps
                fd = (v_of(z + e) - v_of(z - e)) / (2 * eps)
                np.testing.assert_allclose(J[i][j][:, a], fd, rtol=1e-6, atol=1e-8)
    assert np.array_equal(J[L], np.broadcast_to(np.eye(k), (n, k, k)))


@pytest.mark.parametrize("distribution", ["gaussian", "sphere", "rademacher"])
def test_linear_rms_against_monte_carlo_at_small_r(distribution):
    rng = np.random.default_rng(3)
    net = random_net(rng, 3, 6, 10, 4, biases=True)
    X = rng.standard_normal((2, 6))
    r, draws = 1e-4, 20000 if distribution != "rademacher" else 4000
    res = measure_network(net, X, np.array([r]), (1, 2, 3), draws, distribution, "frobenius", rng_for(4))
    sq = res.delta_norm[0] ** 2  # (layer, input, draw)
    mc = sq.mean(axis=2)
    se = sq.std(axis=2, ddof=1) / np.sqrt(draws)
    want = res.linear_rms[0] ** 2
    assert np.all(np.abs(mc - want) <= 4 * se), (mc, want, se)
    assert np.all(want > 0)


def test_spectral_scaling_has_no_closed_form_rms():
    rng = np.random.default_rng(5)
    net = random_net(rng, 2, 4, 5, 3)
    res = measure_network(net, rng.standard_normal(4), np.array([0.1]), (1, 2), 3, "gaussian", "spectral",
                          rng_for(1))
    assert np.isnan(res.linear_rms).all() and np.isfinite(res.worst_linear).all()


@pytest.mark.parametrize("norm", ["frobenius", "spectral"])
def test_worst_direction(norm):
    """In the linear regime no sampled change exceeds worst_realised by more than the second-order
    term; worst_realised / worst_linear -> 1 as r -> 0; the worst is far above the typical change."""
    rng = np.random.default_rng(6)
    net = random_net(rng, 4, 5, 12, 3, biases=True)
    X = rng.standard_normal((3, 5))
    ratios = np.array([1e-4, 1e-3, 0.5])
    res = measure_network(net, X, ratios, (1, 2, 3, 4), 500, "gaussian", norm, rng_for(7))
    gap = np.abs(res.worst_realised / res.worst_linear - 1)  # (ratio, layer, input)
    # small r: linear up to rounding; large r: ReLUs switch and the realised change departs from it
    assert np.all(gap[0] < 1e-8) and np.all(gap[1] < 1e-6) and gap[2].max() > 1e-3
    for c, r in enumerate(ratios[:2]):  # the linear regime
        assert np.all(res.delta_norm[c] <= res.worst_realised[c][..., None] * (1 + 10 * r))
    # the worst direction is far above the typical change, and random ones of the same size stay below it
    assert np.all(res.worst_linear[1] > 1.5 * res.delta_norm[1].mean(axis=-1))
    assert np.all(res.delta_norm[1].max(axis=-1) <= res.worst_linear[1] * (1 + 1e-3))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), L=st.integers(1, 4), biases=st.booleans(),
       ratio=st.floats(1e-3, 5.0), norm=st.sampled_from(["frobenius", "spectral"]))
def test_bound_is_never_below_a_measured_change(seed, L, biases, ratio, norm):
    rng = np.random.default_rng(seed)
    net = random_net(rng, L, 4, 6, 3, biases)
    X = rng.standard_normal((2, 4))
    res = measure_network(net, X, np.array([ratio]), tuple(range(1, L + 1)), 5, "gaussian", norm, rng_for(seed))
    bound = res.bound * (1 + 1e-9) + 1e-12
    assert np.all(res.delta_norm <= bound[..., None])
    assert np.all(res.worst_realised <= bound)
    assert np.all(res.worst_linear <= bound)


def test_one_layer_network_is_linear_and_exact():
    """L = 1: v = W x, J = I; the worst direction moves v by exactly r ||W|| ||x||."""
    w = np.random.default_rng(8).standard_normal((3, 4))
    x = np.array([1.0, -2.0, 0.5, 3.0])
    res = measure_network(Network((w,)), x, np.array([0.3]), (1,), 2000, "gaussian", "frobenius", rng_for(9))
    want = 0.3 * np.linalg.norm(w) * np.linalg.norm(x)
    assert res.worst_linear[0, 0, 0] == pytest.approx(want, rel=1e-12)
    assert res.worst_realised[0, 0, 0] == pytest.approx(want, rel=1e-12)
    assert res.linear_rms[0, 0, 0] == pytest.approx(want * np.sqrt(3) / np.sqrt(12), rel=1e-12)
    out = naive_forward((w,), None, x)[-1]
    assert res.output_norm[0] == pytest.approx(np.linalg.norm(out))


@pytest.mark.parametrize("distribution, norm", [("gaussian", "frobenius"), ("rademacher", "frobenius"),
                                                ("gaussian", "spectral")])
@pytest.mark.parametrize("n", [4, 64])  # 64 inputs: rows of 512 bytes, copied through padded rows (measure.PAD)
def test_linear_change_is_the_change_where_no_unit_switches(distribution, norm, n):
    """A ReLU network is linear while no unit switches: there ||v - v*|| (the nonlinear kernel) is the
    first-order ||J_i eta h|| of the same eta, draw by draw; where units switch, the two part."""
    rng = np.random.default_rng(7)
    net = random_net(rng, 3, 6, 12, 3, biases=True)
    x = rng.standard_normal((n, 6))
    res = measure_network(net, x, np.array([1e-5, 0.5]), (1, 2, 3), 50, distribution, norm, rng_for(3))
    still = res.hidden_flip_fraction[0] == 0
    assert still.mean() > 0.9 and np.all(res.hidden_flip_fraction[1, :2].mean(axis=(1, 2)) > 0)
    np.testing.assert_allclose(res.linear_change[0][still], res.delta_norm[0][still], rtol=1e-9)
    # the same draws at every ratio: the first-order term is linear in r
    np.testing.assert_allclose(res.linear_change[1], res.linear_change[0] * 0.5 / 1e-5, rtol=1e-12)
    moved = res.hidden_flip_fraction[1] > 0
    assert np.all(np.abs(res.linear_change[1][moved] / res.delta_norm[1][moved] - 1) > 1e-6)


def test_linear_change_mean_square_is_the_linear_rms():
    """E||J_i eta h||^2 = linear_rms^2 (the closed form), checked over 4000 draws within 4 standard errors."""
    rng = np.random.default_rng(8)
    net = random_net(rng, 3, 6, 12, 3)
    res = measure_network(net, rng.standard_normal((2, 6)), np.array([0.1]), (1, 2), 4000, "gaussian",
                          "frobenius", rng_for(5))
    sq = res.linear_change[0] ** 2  # (layer, input, draw)
    se = sq.std(axis=-1, ddof=1) / np.sqrt(sq.shape[-1])
    assert np.all(np.abs(sq.mean(axis=-1) - res.linear_rms[0] ** 2) < 4 * se)


def test_without_the_linear_answer_the_draws_are_the_same_and_no_first_order_change():
    """with_linear=False skips J_i: the same changes, draw by draw, and linear_change NaN."""
    rng = np.random.default_rng(9)
    net = random_net(rng, 3, 6, 12, 3, biases=True)
    x = rng.standard_normal((5, 6))
    args = (net, x, np.array([0.01, 0.3]), (1, 2, 3), 9, "gaussian", "frobenius", rng_for(2))
    on, off = measure_network(*args), measure_network(*args, with_linear=False)
    np.testing.assert_array_equal(off.delta_norm, on.delta_norm)
    assert np.isnan(off.linear_change).all() and np.isfinite(on.linear_change).all()


def test_first_order_prediction_change_is_the_prediction_change_where_the_network_is_linear():
    """Noise in the read-out moves v exactly linearly, and elsewhere the network is linear while no unit
    switches: there the first-order prediction change is the measured one, draw by draw; where
    predictions change through switching units, the two part."""
    rng = np.random.default_rng(12)
    net = random_net(rng, 3, 6, 12, 4, biases=True)
    x = rng.standard_normal((20, 6))
    res = measure_network(net, x, np.array([0.05, 0.5, 2.0]), (1, 2, 3), 40, "gaussian", "frobenius", rng_for(6))
    lin, pred = res.linear_pred_changed, res.pred_changed
    np.testing.assert_array_equal(lin[:, 2], pred[:, 2])
    assert pred[:, 2].mean() > 0.05  # predictions do change
    still = res.hidden_flip_fraction[:, :2] == 0
    np.testing.assert_array_equal(lin[:, :2][still], pred[:, :2][still])
    assert pred[:, :2][still].sum() > 0 and np.any(lin[:, :2][~still] != pred[:, :2][~still])
