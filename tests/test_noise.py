"""The noise samplers: batching, the byte-table product, spectral norms, dtype, and the
bidiagonal (eta-free) sampler for spectral scaling against materialised Gaussian matrices."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp

from pipeline import noise
from pipeline.noise import matrix_norm, pre_activation_noise, spectral_norms

MATERIALISED = [("rademacher", "frobenius"), ("rademacher", "spectral"), ("gaussian", "frobenius"),
                ("gaussian", "spectral"), ("sphere", "spectral")]


def sample(distribution, norm, shape, h, draws=7, seed=3, dtype=np.float64):
    w = np.ones(shape)  # only its shape matters when size is given
    return pre_activation_noise(np.random.default_rng(seed), w, h, draws, distribution, norm, 2.5, dtype=dtype)


@pytest.mark.parametrize("distribution, norm", MATERIALISED)
@pytest.mark.parametrize("n", [1, 3, 12])
def test_draws_do_not_depend_on_the_batch_size(monkeypatch, distribution, norm, n):
    """One draw per batch and all draws in one batch give the same eta @ H (same stream).
    n = 12 >= n_in materialises Gaussian noise too; rademacher with n <= 8 uses byte tables."""
    shape = (9, 11 if n < 12 else 10)
    h = np.random.default_rng(1).standard_normal((shape[1], n))
    together = sample(distribution, norm, shape, h)
    assert noise.batch_size(shape) >= 7
    monkeypatch.setattr(noise, "BATCH_BYTES", 1)
    assert noise.batch_size(shape) == 1
    one_by_one = sample(distribution, norm, shape, h)
    np.testing.assert_allclose(one_by_one, together, rtol=1e-13, atol=1e-13)
    monkeypatch.setattr(noise, "BATCH_BYTES", 3 * 8 * shape[0] * shape[1])  # batches of 3, 3, 1
    np.testing.assert_allclose(sample(distribution, norm, shape, h), together, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("n_in", [16, 13])
def test_byte_tables_equal_the_sign_matrix_product(monkeypatch, n_in):
    """The table product is eta @ H for the very eta the sign bits describe (n_in not a multiple of 8 too)."""
    h = np.random.default_rng(2).standard_normal((n_in, 2))
    tables = sample("rademacher", "frobenius", (5, n_in), h, draws=40)
    monkeypatch.setattr(noise, "TABLE_INPUTS", 0)
    np.testing.assert_allclose(sample("rademacher", "frobenius", (5, n_in), h, draws=40), tables,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_materialised_eta_has_the_asked_spectral_norm(distribution, dtype):
    """With H = I the sampler returns eta itself: ||eta||_2 = size to 1e-6 (Lanczos path, min dim >= 128)."""
    n_out, n_in = 150, 140
    eta = sample(distribution, "spectral", (n_out, n_in), np.eye(n_in), draws=4, dtype=dtype)
    assert eta.dtype == dtype and eta.shape == (n_out, 4, n_in)
    sigma = np.linalg.norm(eta.transpose(1, 0, 2).astype(np.float64), 2, axis=(1, 2))
    np.testing.assert_allclose(sigma, 2.5, rtol=1e-6 if dtype == np.float64 else 2e-6)
    if distribution == "rademacher":  # every entry of a draw has the same magnitude
        mags = np.abs(eta.astype(np.float64)).transpose(1, 0, 2).reshape(4, -1)
        np.testing.assert_allclose(mags, mags[:, :1] * np.ones_like(mags), rtol=1e-6)


@pytest.mark.parametrize("shape", [(200, 130), (130, 260), (40, 50)])
def test_spectral_norms_match_the_svd(shape):
    rng = np.random.default_rng(4)
    stack = np.stack([rng.standard_normal(shape) * rng.uniform(0.1, 10.0), np.sign(rng.standard_normal(shape)),
                      np.outer(rng.standard_normal(shape[0]), rng.standard_normal(shape[1]))])  # rank one
    want = np.linalg.svd(stack, compute_uv=False)[:, 0]
    np.testing.assert_allclose(spectral_norms(stack), want, rtol=1e-6)
    np.testing.assert_allclose(spectral_norms(stack.astype(np.float32)), want, rtol=1e-6)
    assert matrix_norm(stack[0], "spectral") == pytest.approx(want[0], rel=1e-6)
    assert spectral_norms(np.zeros((1,) + shape))[0] == 0.0


@pytest.mark.parametrize("distribution, norm", MATERIALISED + [("gaussian", "frobenius"), ("sphere", "frobenius")])
@pytest.mark.parametrize("n", [1, 4])
def test_float32_is_the_float64_answer_rounded(distribution, norm, n):
    """Same stream, same draws: float32 differs from float64 by rounding only."""
    h = np.random.default_rng(5).standard_normal((20, n))
    a = sample(distribution, norm, (12, 20), h, draws=9)
    b = sample(distribution, norm, (12, 20), h, draws=9, dtype=np.float32)
    assert a.dtype == np.float64 and b.dtype == np.float32 and a.shape == b.shape == (12, 9, n)
    np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-5 * np.abs(a).max())


@pytest.mark.parametrize("shape, n", [((6, 9), 1), ((6, 9), 3), ((9, 5), 2), ((4, 4), 3)])
def test_spectral_gaussian_sampler_matches_materialised_matrices(shape, n):
    """The bidiagonal sampler (no eta) against eta = size G / ||G||_2 formed and multiplied, in law:
    each output coordinate, the norm of each input's column, and their cross products."""
    draws = 20000
    rng = np.random.default_rng(6)
    h = rng.standard_normal((shape[1], n)) * rng.uniform(0.5, 2.0, size=n)
    fast = noise._spectral_gaussian_noise(np.random.default_rng(7).spawn(4), 2.5, shape, noise._r_factor(h), draws)
    ref = noise._materialised_noise(np.random.default_rng(8), shape, h, draws, "gaussian", "spectral", 2.5,
                                    np.dtype(np.float64))
    assert fast.shape == ref.shape == (shape[0], draws, n)
    stats = [lambda u: u[0, :, 0], lambda u: u[-1, :, n - 1], lambda u: np.linalg.norm(u[:, :, 0], axis=0),
             lambda u: np.linalg.norm(u[:, :, -1], axis=0), lambda u: np.einsum("od,od->d", u[:, :, 0], u[:, :, -1]),
             lambda u: np.abs(u).max(axis=(0, 2))]
    for f in stats:
        assert ks_2samp(f(fast), f(ref)).pvalue > 1e-3
    # the output can never exceed ||eta||_2 ||h|| = size ||h||, and it comes close
    ratio = np.linalg.norm(fast[:, :, 0], axis=0) / np.linalg.norm(h[:, 0])
    assert ratio.max() <= 2.5 * (1 + 1e-9) and ratio.max() > 0.8 * 2.5


def test_bidiagonal_top_singular_value_has_the_law_of_a_gaussian_matrix():
    rng = np.random.default_rng(9)
    for p, q in ((7, 4), (4, 7), (5, 5)):
        k = min(p, q)
        diag = np.sqrt(rng.chisquare(p - np.arange(k), size=(4000, k)))
        sup = np.zeros((4000, k))
        m = min(p, q - 1)
        sup[:, :m] = np.sqrt(rng.chisquare(q - 1 - np.arange(m), size=(4000, m)))
        top = noise._bidiagonal_top_singular_values(diag, sup)
        bidiagonal = np.zeros((4000, p, q))
        idx = np.arange(k)
        bidiagonal[:, idx, idx] = diag
        bidiagonal[:, idx[:m], idx[:m] + 1] = sup[:, :m]
        np.testing.assert_allclose(top, np.linalg.norm(bidiagonal, 2, axis=(1, 2)), rtol=1e-8)
        gaussian = np.linalg.norm(rng.standard_normal((4000, p, q)), 2, axis=(1, 2))
        assert ks_2samp(top, gaussian).pvalue > 1e-3, (p, q)


@pytest.mark.parametrize("n", [1, 3, 12])
@pytest.mark.parametrize("distribution, norm", [(d, n) for d in ("gaussian", "rademacher", "sphere")
                                                for n in ("frobenius", "spectral")])
def test_draws_do_not_depend_on_the_batches(distribution, norm, n):
    """LayerNoise.draw in batches of 1, 4 and 7 gives exactly the draws of one call (every sampler)."""
    shape = (6, 9)
    h = np.random.default_rng(1).standard_normal((9, n))
    whole = noise.LayerNoise(np.random.default_rng(2), shape, h, distribution, norm, 2.5).draw(21)
    for batch in (1, 4, 7):
        src = noise.LayerNoise(np.random.default_rng(2), shape, h, distribution, norm, 2.5)
        parts = np.concatenate([src.draw(min(batch, 21 - s)) for s in range(0, 21, batch)], axis=1)
        np.testing.assert_array_equal(parts, whole)
