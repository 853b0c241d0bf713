"""What theory predicts for the relative output change R = ||v - v*|| / ||v||.

docs/design.md ("Theory") derives each formula. Every function is vectorised
over numpy arrays and has no dependency on the store.

>>> round(float(first_order(0.1)), 3)
0.1
>>> round(float(attenuation(0.1, 0)), 6)  # perturbing the read-out: exactly r
0.1
"""

from __future__ import annotations

import numpy as np


def bound_at_norm(ratio, weight_norm, L, x_norm):
    """r * M^L * ||x*||: the worst-case bound when every ||W_j||_2 <= M (no biases, spectral scaling).

    A closed form for networks of bounded norm. The per-network bound stored in a
    results store is :func:`pipeline.measure.worst_case_bound`, computed from the
    actual spectral norms; it equals this value when every ||W_j||_2 = M.
    """
    return np.asarray(ratio) * np.asarray(weight_norm, dtype=float) ** np.asarray(L) * np.asarray(x_norm)


def first_order(ratio):
    """Infinite width, He init, small r: sqrt(E R^2) = r for every L and layer."""
    return np.asarray(ratio, dtype=float)


def arccos_map(theta):
    """One random ReLU layer maps the angle between two inputs (Cho and Saul 2009)."""
    theta = np.asarray(theta, dtype=float)
    c = (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / np.pi
    # Near c = 1, arccos(c) loses small angles to rounding; 2 arcsin(sqrt((1 - c) / 2)) with 1 - c
    # computed without cancellation keeps them.
    one_minus_c = (2.0 * np.pi * np.sin(theta / 2) ** 2 + theta * np.cos(theta) - np.sin(theta)) / np.pi
    small = 2.0 * np.arcsin(np.sqrt(np.clip(one_minus_c, 0.0, 2.0) / 2.0))
    return np.where(c > 0.5, small, np.arccos(np.clip(c, -1.0, 1.0)))[()]


def attenuation(ratio, depth_after):
    """Finite r, infinite width: R after ``depth_after`` = L - i ReLU layers.

    The clean and perturbed pre-activations start at angle arctan(r) with norm
    ratio rho = sqrt(1 + r^2); each ReLU layer applies :func:`arccos_map` and
    keeps rho, so R = sqrt(1 + rho^2 - 2 rho cos theta_{L-i}), evaluated as
    sqrt((rho - 1)^2 + 4 rho sin^2(theta / 2)) so that tiny r keeps its digits.
    """
    r, n = np.broadcast_arrays(np.asarray(ratio, dtype=float), np.asarray(depth_after, dtype=int))
    theta = np.arctan(r)
    out = np.empty(r.shape)
    for idx in np.ndindex(r.shape):
        t = theta[idx]
        for _ in range(int(n[idx])):
            t = arccos_map(t)
        rho = np.sqrt(1.0 + r[idx] ** 2)
        rho_minus_1 = r[idx] ** 2 / (1.0 + rho)
        out[idx] = np.sqrt(rho_minus_1**2 + 4.0 * rho * np.sin(t / 2) ** 2)
    return out[()] if out.ndim == 0 else out


def attenuation_approx(ratio, depth_after):
    """The closed-form approximation r / (1 + (L - i) r / (3 pi))."""
    r = np.asarray(ratio, dtype=float)
    return r / (1.0 + np.asarray(depth_after) * r / (3.0 * np.pi))


def log_variance(depth_after, m, k):
    """Finite width: Var log R ~= 2 (L - i) / m + 1 / k (Hanin and Nica 2019)."""
    return 2.0 * np.asarray(depth_after, dtype=float) / np.asarray(m) + 1.0 / np.asarray(k)


def mean_over_median(depth_after, m, k):
    """For log-normal R the mean exceeds the median by exp(s^2 / 2)."""
    return np.exp(log_variance(depth_after, m, k) / 2.0)



# beta in the closed form r / (1 + beta (L - i) r) of the depth attenuation
ATTENUATION_BETA = 1.0 / (3.0 * np.pi)


def he_spectral_norm(n_out, n_in):
    """||W||_2 of a large n_out x n_in matrix with N(0, 2 / n_in) entries: sqrt(2 / n_in) (sqrt n_out + sqrt n_in)."""
    return np.sqrt(2.0 / np.asarray(n_in, dtype=float)) * (np.sqrt(n_out) + np.sqrt(n_in))


def bound_looseness(L, m, d, k, layer, norm="frobenius"):
    """How far the worst-case bound sits above E||v - v*|| at He init, small r.

    bound / (r ||v||) with ||v|| ~= sqrt(2 k / d) ||x*||, the spectral norms of
    :func:`he_spectral_norm`, and ||eta||_2 = r ||W_i||_2 (spectral scaling) or
    at most r ||W_i||_F = r sqrt(2 n_out) (Frobenius scaling). For d = m = k and
    spectral scaling it is 2^((3L - 1) / 2) (docs/design.md, "Theory").

    >>> round(float(bound_looseness(3, 64, 64, 64, 2, "spectral")), 6) == round(2 ** 4, 6)
    True
    """
    shapes = [(m, m)] * L
    shapes[0] = (m if L > 1 else k, d)
    if L > 1:
        shapes[-1] = (k, m)
    spectral = np.array([he_spectral_norm(o, i) for o, i in shapes])
    frob = np.array([np.sqrt(2.0 * o) for o, _ in shapes])
    idx = np.asarray(layer, dtype=int) - 1
    eta = spectral[idx] if norm == "spectral" else frob[idx]
    others = np.prod(spectral) / spectral[idx]
    return eta * others / np.sqrt(2.0 * k / d)
