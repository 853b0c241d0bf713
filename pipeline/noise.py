"""Weight noise: sample eta @ h for many draws of eta, scaled to the size of W.

Only eta @ h_{i-1} reaches the rest of the network, so that is all we sample.
For Gaussian (or sphere) noise scaled by the Frobenius norm it is sampled
exactly in O(n_out) per draw: with G standard normal, g = G h / ||h|| is a
standard normal vector, independent of ||G||_F^2 - ||g||^2, which is
chi-square with n_out * (n_in - 1) degrees of freedom. Other models
materialise eta.

The returned columns are for ratio 1 (||eta|| = ||W||); multiplying by r gives
every ratio from the same draws (common random numbers).
"""

from __future__ import annotations

import numpy as np

from .network import spectral_norm


def matrix_norm(w: np.ndarray, norm: str) -> float:
    """The Frobenius or spectral norm of a matrix."""
    return float(np.linalg.norm(w)) if norm == "frobenius" else spectral_norm(w)


def sample_matrix(rng: np.random.Generator, shape: tuple[int, int], distribution: str) -> np.ndarray:
    """One raw noise matrix before scaling (sphere: uniform direction in R^(n_out x n_in))."""
    if distribution == "rademacher":
        return rng.integers(0, 2, size=shape).astype(np.float64) * 2.0 - 1.0
    g = rng.standard_normal(shape)
    return g / np.linalg.norm(g) if distribution == "sphere" else g


def scaled_noise(rng: np.random.Generator, w: np.ndarray, distribution: str, norm: str) -> np.ndarray:
    """One materialised eta with ||eta||_norm = ||w||_norm (ratio 1)."""
    e = sample_matrix(rng, w.shape, distribution)
    return e * (matrix_norm(w, norm) / matrix_norm(e, norm))


def is_fast(distribution: str, norm: str) -> bool:
    """Whether eta @ h is sampled in O(n_out) without materialising eta.

    After scaling to a fixed Frobenius norm, Gaussian and sphere noise are the
    same distribution (a uniform direction), so both take the exact fast path.
    """
    return norm == "frobenius" and distribution in ("gaussian", "sphere")


def pre_activation_noise(rng: np.random.Generator, w: np.ndarray, h: np.ndarray, draws: int,
                         distribution: str, norm: str) -> np.ndarray:
    """eta @ h for ``draws`` independent eta with ||eta||_norm = ||w||_norm.

    Args:
        rng: the stream of this (network, layer); draws are taken in order.
        w: the weight matrix W_i being perturbed, shape (n_out, n_in).
        h: its clean input h_{i-1}, shape (n_in,).
        draws: number of independent noise matrices.
        distribution: gaussian, rademacher or sphere.
        norm: frobenius or spectral.

    Returns:
        Array of shape (n_out, draws); column d is eta_d @ h.
    """
    n_out, n_in = w.shape
    if is_fast(distribution, norm):
        g = rng.standard_normal((n_out, draws))
        dof = n_out * (n_in - 1)
        rest = rng.chisquare(dof, size=draws) if dof > 0 else np.zeros(draws)
        scale = np.linalg.norm(w) * np.linalg.norm(h) / np.sqrt(np.einsum("ij,ij->j", g, g) + rest)
        return g * scale
    out = np.empty((n_out, draws))
    w_norm = matrix_norm(w, norm)
    for d in range(draws):
        e = sample_matrix(rng, w.shape, distribution)
        out[:, d] = (e @ h) * (w_norm / matrix_norm(e, norm))
    return out
