"""pipeline.analysis.theory against known values and independent derivations."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.analysis import theory
from pipeline.measure import measure_block
from pipeline.spec import Spec


def test_first_order_is_r():
    r = np.array([0.01, 0.1, 0.5])
    np.testing.assert_array_equal(theory.first_order(r), r)


def test_arccos_map_known_values():
    assert theory.arccos_map(0.0) == pytest.approx(0.0, abs=1e-7)
    assert theory.arccos_map(np.pi / 2) == pytest.approx(np.arccos(1 / np.pi), rel=1e-14)
    assert theory.arccos_map(np.pi) == pytest.approx(np.pi / 2, rel=1e-14)
    theta = np.linspace(0.01, np.pi, 50)
    out = theory.arccos_map(theta)
    assert out.shape == theta.shape
    assert np.all(out < theta) and np.all(np.diff(out) > 0)  # contracts angles, keeps their order


def test_arccos_map_matches_a_wide_random_relu_layer():
    """Two unit inputs at angle theta through one very wide Gaussian ReLU layer."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((400_000, 2))
    for theta in (0.3, 1.0, 2.0):
        a, b = np.array([1.0, 0.0]), np.array([np.cos(theta), np.sin(theta)])
        ha, hb = np.maximum(w @ a, 0), np.maximum(w @ b, 0)
        angle = np.arccos(ha @ hb / np.linalg.norm(ha) / np.linalg.norm(hb))
        assert theory.arccos_map(theta) == pytest.approx(angle, rel=0.01)


def test_small_angle_expansion():
    # theta_{l+1} = theta - theta^2 / (3 pi) + O(theta^3): the origin of the 3 pi in attenuation_approx
    theta = 1e-3
    assert theory.arccos_map(theta) == pytest.approx(theta - theta**2 / (3 * np.pi), rel=1e-6)


def test_attenuation_depth_zero_is_r():
    r = np.array([1e-3, 0.01, 0.1, 0.3, 1.0])
    np.testing.assert_allclose(theory.attenuation(r, 0), r, rtol=1e-9)
    assert theory.attenuation(0.1, 0) == pytest.approx(0.1, rel=1e-12)
    assert np.ndim(theory.attenuation(0.1, 3)) == 0


@pytest.mark.parametrize("r", [1e-6, 1e-8])
def test_attenuation_is_accurate_for_tiny_r(r):
    """For tiny r the prediction is r / (1 + (L - i) r / (3 pi)) to O(r^2); the formula
    sqrt(1 + rho^2 - 2 rho cos theta) must not lose it to cancellation."""
    depth = np.array([0, 1, 5, 20])
    np.testing.assert_allclose(theory.attenuation(r, depth), theory.attenuation_approx(r, depth), rtol=1e-6)


def test_attenuation_one_layer_by_hand():
    r = 0.2
    rho = np.sqrt(1 + r**2)
    theta0 = np.arctan(r)
    c = (np.sin(theta0) + (np.pi - theta0) * np.cos(theta0)) / np.pi
    assert theory.attenuation(r, 1) == pytest.approx(np.sqrt(1 + rho**2 - 2 * rho * c), rel=1e-10)


def test_attenuation_decreases_with_depth_and_broadcasts():
    depth = np.arange(0, 30)
    a = theory.attenuation(0.1, depth)
    assert a.shape == depth.shape and np.all(np.diff(a) < 0) and a[-1] > 0
    grid = theory.attenuation(np.array([0.1, 0.2]), np.array([[0], [3]]))
    assert grid.shape == (2, 2)
    assert grid[1, 0] == pytest.approx(theory.attenuation(0.1, 3))
    assert grid[1, 1] == pytest.approx(theory.attenuation(0.2, 3))


@pytest.mark.parametrize("r, tol", [(1e-3, 1e-5), (0.01, 1e-3), (0.03, 3e-3)])
def test_attenuation_close_to_approx_for_small_r(r, tol):
    depth = np.arange(0, 60)
    np.testing.assert_allclose(theory.attenuation(r, depth), theory.attenuation_approx(r, depth), rtol=tol)
    assert theory.attenuation_approx(r, 0) == pytest.approx(r)
    assert theory.attenuation_approx(r, 10) == pytest.approx(r / (1 + 10 * r / (3 * np.pi)))


def test_log_variance_and_mean_over_median():
    assert theory.log_variance(3, 512, 10) == pytest.approx(6 / 512 + 1 / 10)
    assert theory.log_variance(0, 64, 64) == pytest.approx(1 / 64)
    depth, m = np.array([0, 2, 7]), np.array([[64], [1024]])
    got = theory.log_variance(depth, m, 16)
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, 2.0 * depth / m + 1 / 16)
    np.testing.assert_allclose(theory.mean_over_median(depth, m, 16), np.exp(got / 2))
    # a log-normal variable's mean over median is exp(s^2 / 2)
    s2 = theory.log_variance(5, 32, 8)
    sample = np.exp(np.random.default_rng(1).normal(0.0, np.sqrt(s2), 400_000))
    assert sample.mean() / np.median(sample) == pytest.approx(theory.mean_over_median(5, 32, 8), rel=0.01)


def test_bound_at_norm_formula():
    assert theory.bound_at_norm(0.1, 2.0, 3, 5.0) == pytest.approx(0.1 * 8 * 5)
    got = theory.bound_at_norm(np.array([0.1, 0.2]), 1.5, np.array([[1], [4]]), 2.0)
    np.testing.assert_allclose(got, np.array([[0.1, 0.2]]) * 1.5 ** np.array([[1], [4]]) * 2.0)


def test_bound_at_norm_is_the_stored_bound_at_spectral_norm_M():
    """Every weight matrix at spectral norm M, spectral noise scaling, no biases: the
    kernel's per-network bound is exactly r M^L ||x*|| and no draw exceeds it."""
    M, r, L = 1.7, 0.2, 3
    spec = Spec.from_dict({"random_seed": 1, "network": {"input_dim": 6, "output_dim": 3, "weight_norm_bound": M},
                           "grid": {"L": [L], "m": [8], "ratio": [r], "seeds": 2},
                           "noise": {"norm": "spectral", "draws": 8}})
    from pipeline.network import make_inputs

    x_norm = np.linalg.norm(make_inputs(spec)[0])
    block = measure_block(spec, L, 8, (0, 1))
    want = theory.bound_at_norm(r, M, L, x_norm)
    np.testing.assert_allclose(block.bound, want, rtol=1e-9)
    assert np.all(block.delta_norm <= want * (1 + 1e-12))
