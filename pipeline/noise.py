"""Weight noise: sample eta @ h for many draws of eta, scaled to the size of W.

Only eta @ H reaches the rest of the network (H = [h_1 .. h_n], the clean
inputs of the perturbed layer for every input), so that is all we sample; one
eta serves every input of a draw. For Gaussian (or sphere) noise scaled by the
Frobenius norm it is sampled exactly in O(n_out n) per draw while n < n_in:
with G standard normal and H = Q R, G Q is standard normal and independent of
the rest of ||G||_F^2, a chi-square with n_out (n_in - q) degrees of freedom.
For one input that is g = G h / ||h||. Other models materialise eta.

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
                         distribution: str, norm: str, size: float | None = None) -> np.ndarray:
    """eta @ H for ``draws`` independent eta with ||eta||_norm = ||w||_norm, one eta for all inputs.

    Args:
        rng: the stream of this (network, layer); draws are taken in order.
        w: the weight matrix W_i being perturbed, shape (n_out, n_in).
        h: its clean inputs H = [h_1 .. h_n], shape (n_in, n) (or (n_in,) for one input).
        draws: number of independent noise matrices.
        distribution: gaussian, rademacher or sphere.
        norm: frobenius or spectral.
        size: ||w|| in ``norm`` when the caller has it (a spectral norm is an ARPACK run).

    Returns:
        Array of shape (n_out, draws, n); [:, d, j] is eta_d @ h_j.
    """
    h = h[:, None] if h.ndim == 1 else h
    n_out, n = w.shape[0], h.shape[1]
    w_norm = matrix_norm(w, norm) if size is None else size
    if is_fast(distribution, norm):
        return _uniform_direction_noise(rng, w_norm, n_out, h, draws)
    out = np.empty((n_out, draws, n))
    for d in range(draws):
        e = sample_matrix(rng, w.shape, distribution)
        out[:, d] = (e @ h) * (w_norm / matrix_norm(e, norm))
    return out


def _uniform_direction_noise(rng: np.random.Generator, size: float, n_out: int, h: np.ndarray,
                             draws: int) -> np.ndarray:
    """eta @ H for eta = size * G / ||G||_F, G standard normal, without materialising G when n < n_in.

    With H = Q R (thin QR, Q orthonormal n_in x q), G Q = Z is standard normal
    (n_out x q) and G H = Z R, while ||G||_F^2 = ||Z||_F^2 plus an independent
    chi-square with n_out (n_in - q) degrees of freedom. For one input this is
    Q = h / ||h||, R = ||h||. Once n reaches n_in there is nothing to save, and
    G itself is drawn.
    """
    n_in, n = h.shape
    if n >= n_in:
        out = np.empty((n_out, draws, n))
        for d in range(draws):
            g = rng.standard_normal((n_out, n_in))
            out[:, d] = (g @ h) * (size / np.linalg.norm(g))
        return out
    if n == 1:
        r = np.array([[np.linalg.norm(h)]])
    else:
        r = np.linalg.qr(h, mode="r")
    q = r.shape[0]
    z = rng.standard_normal((n_out, draws, q))
    dof = n_out * (n_in - q)
    rest = rng.chisquare(dof, size=draws) if dof > 0 else np.zeros(draws)
    scale = size / np.sqrt(np.einsum("idq,idq->d", z, z) + rest)
    gh = z.reshape(n_out * draws, q) @ r if n > 1 else z * r[0, 0]
    return gh.reshape(n_out, draws, n) * scale[None, :, None]
