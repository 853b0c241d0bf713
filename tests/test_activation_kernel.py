"""The kernel with every activation and hidden layers of different widths, against naive references.

The references here share no code with pipeline.activations: each activation
is written out directly, W_i + eta is formed and the whole network rerun.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erfc

from pipeline.measure import jacobians, measure_network, propagate
from pipeline.network import Network

NAIVE = {
    "relu": lambda z: np.where(z > 0, z, 0.0),
    "leaky_relu(0.2)": lambda z: np.where(z > 0, z, 0.2 * z),
    "tanh": np.tanh,
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "gelu": lambda z: z * 0.5 * erfc(-z / np.sqrt(2)),
    "gelu_tanh": lambda z: 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3))),
    "silu": lambda z: z / (1 + np.exp(-z)),
}
NAMES = list(NAIVE)
WIDTHS = [7, 13, 5, 9, 4]  # d, three hidden layers of different widths, k


def make_net(rng, names, biases=True, dtype=np.float64):
    ws = tuple(rng.standard_normal((WIDTHS[j + 1], WIDTHS[j])) * np.sqrt(2.0 / WIDTHS[j])
               for j in range(len(WIDTHS) - 1))
    bs = tuple(0.3 * rng.standard_normal(w.shape[0]) for w in ws) if biases else None
    return ws, bs, Network(ws, bs, dtype, activations=names)


def naive_pass(ws, bs, names, x):
    pre, h = [], x
    for j, w in enumerate(ws):
        z = w @ h + (bs[j] if bs is not None else 0)
        pre.append(z)
        h = NAIVE[names[j]](z) if j < len(ws) - 1 else z
    return pre


def mixed(name):
    """Every hidden layer with ``name``, and a network mixing it with ReLU and tanh."""
    return [name] * 3, [name, "relu", "tanh"]


@pytest.mark.parametrize("name", NAMES)
def test_propagate_equals_naive_rerun(name):
    for names in mixed(name):
        rng = np.random.default_rng(len(name))
        ws, bs, net = make_net(rng, names)
        x = rng.standard_normal(WIDTHS[0])
        fwd = net.forward(x)
        np.testing.assert_allclose(fwd.output, naive_pass(ws, bs, names, x)[-1], rtol=1e-12)
        clean = naive_pass(ws, bs, names, x)
        for i in range(1, 5):
            etas = [rng.standard_normal(ws[i - 1].shape) * rng.uniform(0.05, 1.0) for _ in range(6)]
            moved = propagate(net, fwd, {i: np.stack([e @ fwd.post[i - 1] for e in etas], axis=1)})[i]
            for c, e in enumerate(etas):
                noisy = naive_pass([w + e if j == i else w for j, w in enumerate(ws, 1)], bs, names, x)
                np.testing.assert_allclose(moved.delta[c], np.linalg.norm(noisy[-1] - clean[-1]), rtol=1e-9)
                flips = sum(int(np.sum((a > 0) != (b > 0))) for a, b in zip(clean[:-1], noisy[:-1]))
                assert moved.flips[c] == flips


@pytest.mark.parametrize("name", NAMES)
def test_jacobians_against_finite_differences(name):
    names = [name, "tanh", name]
    rng = np.random.default_rng(7)
    ws, bs, net = make_net(rng, names)
    X = rng.standard_normal((WIDTHS[0], 2))
    fwd = net.forward(X)
    J = dict(jacobians(net, fwd, range(1, 5)))
    eps = 1e-6
    for i in range(1, 5):
        assert J[i].shape == (2, WIDTHS[-1], WIDTHS[i])
        for col in range(2):
            for a in range(WIDTHS[i]):
                def v_of(z):
                    h = NAIVE[names[i - 1]](z) if i < 4 else z
                    for jj in range(i + 1, 5):
                        z = ws[jj - 1] @ h + bs[jj - 1]
                        h = NAIVE[names[jj - 1]](z) if jj < 4 else z
                    return h
                z, e = fwd.pre[i - 1][:, col].copy(), np.zeros(WIDTHS[i])
                e[a] = eps
                np.testing.assert_allclose(J[i][col][:, a], (v_of(z + e) - v_of(z - e)) / (2 * eps),
                                           rtol=1e-5, atol=1e-8)


RATIOS = np.array([1e-10, 1e-6, 1e-3, 0.1, 1.0])


@pytest.mark.parametrize("name", NAMES)
def test_float32_rounding_error_is_relative_to_the_change(name):
    """The same network and noise in float32 and float64, from r = 1e-10 to 1: as for ReLU."""
    rng = np.random.default_rng(11)
    widths = [40, 200, 120, 160, 10]
    ws = [rng.standard_normal((widths[j + 1], widths[j])) * np.sqrt(2 / widths[j]) for j in range(4)]
    bs = [0.1 * rng.standard_normal(w.shape[0]) for w in ws]
    x = rng.standard_normal((3, 40))

    def run(dtype):
        return measure_network(Network(ws, bs, dtype, activations=name), x, RATIOS, (1, 2, 3, 4), 6,
                               "gaussian", "frobenius", lambda i: np.random.default_rng([5, i]))

    r64, r32 = run(np.float64), run(np.float32)
    rel = np.abs(r32.delta_norm - r64.delta_norm) / r64.delta_norm
    worst = rel.max(axis=(1, 2, 3))
    assert np.all(worst < 1e-3), dict(zip(RATIOS, worst))
    assert worst[0] < 10 * worst[3] + 1e-5  # no growth as r shrinks
    np.testing.assert_allclose(r32.linear_rms, r64.linear_rms, rtol=1e-3)


@pytest.mark.parametrize("name", ["tanh", "gelu", "leaky_relu(0.2)"])
def test_linear_answer_against_monte_carlo_at_small_r(name):
    """At r = 1e-5 the measured RMS of ||v - v*|| is the exact first-order RMS (D_j = diag f'(z_j))."""
    rng = np.random.default_rng(5)
    _, _, net = make_net(rng, [name] * 3)
    x = rng.standard_normal((2, WIDTHS[0]))
    res = measure_network(net, x, np.array([1e-5]), (1, 2, 3, 4), 4000, "gaussian", "frobenius",
                          lambda i: np.random.default_rng([9, i]))
    rms = np.sqrt(np.mean(res.delta_norm ** 2, axis=-1))  # (ratio, layer, input)
    # the RMS over 4000 draws of a chi-like variable: a few percent
    np.testing.assert_allclose(rms, res.linear_rms, rtol=0.06)


@pytest.mark.parametrize("name", NAMES)
def test_bound_is_never_below_a_measured_change(name):
    rng = np.random.default_rng(3)
    for biases in (False, True):
        _, _, net = make_net(rng, [name, "relu", name], biases=biases)
        x = rng.standard_normal((3, WIDTHS[0]))
        res = measure_network(net, x, np.array([0.05, 0.5, 2.0]), (1, 2, 3, 4), 64, "gaussian", "frobenius",
                              lambda i: np.random.default_rng([1, i]))
        assert np.all(res.delta_norm <= res.bound[..., None] * (1 + 1e-9))
        assert np.all(res.worst_realised <= res.bound * (1 + 1e-9))
