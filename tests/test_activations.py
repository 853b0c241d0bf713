"""Every activation of the table against 50-digit references: forward, difference and derivative.

The difference f(z + d) - f(z) must keep its accuracy relative to |d| (the
scale of the change) from d = 1e-10 to 1, in float64 and in float32: what the
kernel's guarantee of rounding relative to the change rests on.
"""

from __future__ import annotations

import mpmath as mp
import numpy as np
import pytest

from pipeline.activations import activation, canonical
from pipeline.errors import SpecError

mp.mp.dps = 50
NAMES = ["relu", "leaky_relu(0.2)", "tanh", "sigmoid", "gelu", "gelu_tanh", "silu"]


def reference(name: str):
    c, a = mp.sqrt(2 / mp.pi), mp.mpf("0.044715")
    return {
        "relu": lambda z: max(z, 0),
        "leaky_relu(0.2)": lambda z: z if z > 0 else mp.mpf("0.2") * z,
        "tanh": mp.tanh,
        "sigmoid": lambda z: 1 / (1 + mp.exp(-z)),
        "gelu": lambda z: z * mp.ncdf(z),
        "gelu_tanh": lambda z: z / (1 + mp.exp(-2 * c * (z + a * z ** 3))),  # (1 + tanh u) / 2 without cancellation
        "silu": lambda z: z / (1 + mp.exp(-z)),
    }[name]


def points(dtype, seed=0):
    """Pre-activations from -30 to 30 (saturated tails included) and changes from 1e-10 to 1 of both signs."""
    rng = np.random.default_rng(seed)
    z = np.concatenate([rng.standard_normal(60) * 2, rng.uniform(-30, 30, 20), [0.0, -0.7517916, 1.4142]])
    r = 10.0 ** rng.uniform(-10, 0, z.size)
    d = r * rng.choice([-1.0, 1.0], z.size) * np.abs(rng.standard_normal(z.size) + 0.5)
    return z.astype(dtype), d.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", NAMES)
def test_difference_is_accurate_relative_to_the_change(name, dtype):
    act, f = activation(name), reference(name)
    z, d = points(dtype)
    got = act.difference(z, d)
    assert got.dtype == dtype
    want = np.array([float(f(mp.mpf(float(a)) + mp.mpf(float(b))) - f(mp.mpf(float(a)))) for a, b in zip(z, d)])
    eps = np.finfo(dtype).eps
    # rounding relative to the change: a few ulps of |d| (the slope of every activation is at most 1.13)
    err = np.abs(got - want) / (np.abs(d).astype(np.float64) + np.abs(want))
    assert err.max() < 8 * eps, (name, z[err.argmax()], d[err.argmax()], err.max())


@pytest.mark.parametrize("name", NAMES)
def test_forward_and_derivative(name):
    act, f = activation(name), reference(name)
    z, _ = points(np.float64, seed=1)
    z = z[np.abs(z) > 1e-6]  # away from ReLU's kink
    want = np.array([float(f(mp.mpf(x))) for x in z])
    np.testing.assert_allclose(act.forward(z), want, rtol=1e-13, atol=1e-300)
    slope = np.array([float(mp.diff(f, mp.mpf(x))) for x in z])
    np.testing.assert_allclose(act.derivative(z), slope, rtol=1e-12, atol=1e-14)


def test_the_subtraction_it_replaces_would_fail():
    """The check above can fail: plain f(z + d) - f(z) in float32 misses it by orders of magnitude."""
    z, d = points(np.float32)
    act, f = activation("tanh"), reference("tanh")
    naive = np.tanh(z + d) - np.tanh(z)
    want = np.array([float(f(mp.mpf(float(a)) + mp.mpf(float(b))) - f(mp.mpf(float(a)))) for a, b in zip(z, d)])
    assert (np.abs(naive - want) / (np.abs(d) + np.abs(want))).max() > 1e3 * np.finfo(np.float32).eps
    del act


def test_names():
    assert canonical(" LeakY_ReLU(0.01) ") == "leaky_relu(0.01)"
    assert canonical("leaky_relu(1e-1)") == "leaky_relu(0.1)"
    for bad in ["softplus", "leaky_relu(1.5)", "leaky_relu(x)", "elu", 3]:
        with pytest.raises(SpecError, match="network.activation: .* is not allowed; expected relu"):
            activation(bad)


@pytest.mark.parametrize("name", NAMES)
def test_lipschitz_constant_and_value_at_zero(name):
    """What the worst-case bound uses: max |f'| (never below the true one) and whether f(0) = 0."""
    act = activation(name)
    z = np.linspace(-30, 30, 600_001)
    slope = np.abs(act.derivative(z)).max()
    assert slope <= act.lipschitz < slope * 1.001
    assert act.zero_at_zero == (act.forward(np.zeros(1))[0] == 0)
