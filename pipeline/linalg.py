"""Matrix norms, and the one Lanczos iteration that both spectral-norm estimates run.

A leaf: numpy only (scipy inside :func:`spectral_norm`, imported there to keep start-up fast).
The bound of a random network needs ||W_j||_2 cheaply (:func:`spectral_norm_estimate`, a fixed
number of steps); spectral-norm noise needs it to a stated tolerance (:func:`top_singular_value`,
run until converged). Both are :func:`gram_lanczos` with a different rule for when to stop.

>>> import numpy as np
>>> frobenius_norm(np.array([[3.0, 0.0], [0.0, 4.0]]))
5.0
>>> float(np.linalg.eigvalsh(tridiagonal(np.array([2.0, 2.0]), np.array([1.0])))[-1])
3.0
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

LANCZOS_STEPS = 20  # the bound's estimate: steps of a fixed count
SPECTRAL_TOL = 1e-6  # relative error allowed in a spectral norm (the eigenvalue of the Gram matrix)
MAX_LANCZOS_STEPS = 300  # a converged spectral norm takes tens of steps; beyond this, a full SVD


def frobenius_norm(w: np.ndarray) -> float:
    """||W||_F: each row's sum of squares in the matrix's precision (relative error below 1e-5
    for float32 rows of up to 10^5 entries), the rows added in float64."""
    return float(np.sqrt(np.einsum("ij,ij->i", w, w).sum(dtype=np.float64)))


def spectral_norm(w: np.ndarray) -> float:
    """Largest singular value; Lanczos (ARPACK) for large matrices, a full SVD otherwise.

    ARPACK starts from a fixed random vector (reproducible, and never
    orthogonal to the top singular vector in practice). Its tolerance bounds
    the residual; the singular value itself, a Ritz value, is accurate to
    about the residual squared over the spectral gap, far below 1e-6.
    """
    if min(w.shape) < 128:
        return float(np.linalg.norm(w, 2))
    if not np.any(w):
        return 0.0
    from scipy.sparse.linalg import svds

    v0 = np.random.default_rng(0).standard_normal(min(w.shape))
    return float(svds(w, k=1, tol=1e-6, v0=v0, return_singular_vectors=False)[0])


def tridiagonal(diagonal: np.ndarray, off: np.ndarray) -> np.ndarray:
    """The dense symmetric tridiagonal matrix of a Lanczos run: a few dozen rows, so numpy's dense
    eigensolver is as fast as a tridiagonal one and spares importing scipy on the way to an answer."""
    return np.diag(diagonal) + np.diag(off, 1) + np.diag(off, -1)


def gram_lanczos(w: np.ndarray, steps: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Lanczos on the smaller Gram matrix A^T A of W (A = W or W^T, whichever is taller).

    Products with A and A^T in float32 (they are memory-bound, and their rounding is far below
    what either caller asks), the recurrence in float64 with full reorthogonalisation, a fixed
    start vector. After step j it yields views ``(alpha[:j + 1], beta[:j + 1])``: the tridiagonal
    of the first j + 1 steps is ``tridiagonal(alpha, beta[:-1])`` and ``beta[-1]`` is the norm of
    the next residual. The caller decides when to stop (it leaves the loop); the iteration ends by
    itself after ``steps`` steps (at most the dimension) or when the residual is exactly zero.

    Args:
        w: The matrix (any float dtype).
        steps: The most steps to run.

    Yields:
        The diagonal and off-diagonal so far, float64.
    """
    a = (w if w.shape[0] >= w.shape[1] else w.T).astype(np.float32, copy=False)
    n = a.shape[1]
    steps = min(steps, n)
    # the basis grows as needed: a converged run takes tens of steps, and n x n floats can be 100 MB
    basis, alpha, beta = np.zeros((min(steps, 64), n)), np.zeros(steps), np.zeros(steps)
    v = np.random.default_rng(0).standard_normal(n)
    v /= np.linalg.norm(v)
    for j in range(steps):
        if j == len(basis):
            basis = np.concatenate([basis, np.zeros((min(len(basis), steps - j), n))])
        basis[j] = v
        u = (a.T @ (a @ v.astype(np.float32))).astype(np.float64)
        alpha[j] = v @ u
        for _ in range(2):  # twice is enough (Kahan): the basis stays orthonormal to rounding
            u -= basis[:j + 1].T @ (basis[:j + 1] @ u)
        beta[j] = np.linalg.norm(u)
        yield alpha[:j + 1], beta[:j + 1]
        if beta[j] == 0.0:  # an exact invariant subspace: there is no next vector
            return
        v = u / beta[j]


def spectral_norm_estimate(w: np.ndarray, steps: int = LANCZOS_STEPS) -> float:
    """Largest singular value by a fixed number of Lanczos steps on the Gram matrix; exact when small.

    ``steps`` matrix-vector products with W and W^T (:func:`gram_lanczos`), then
    the top Ritz value: a lower estimate, never above ||W||_2 but for float32
    rounding (the estimate's own error is far larger). For He-init matrices the
    shortfall measured by tests/test_network.py is below 0.5% at m = 2048, at a
    fraction of the cost of the converged ARPACK run of :func:`spectral_norm`
    (benchmarks/bench_linear.py).
    """
    if min(w.shape) < 128:
        return float(np.linalg.norm(w, 2))
    for alpha, beta in gram_lanczos(w, steps):
        if beta[-1] <= 1e-10 * alpha.max():  # an invariant subspace: the Ritz values are exact
            break
    top = np.linalg.eigvalsh(tridiagonal(alpha, beta[:-1]))[-1]
    return float(np.sqrt(max(top, 0.0)))


def top_singular_value(w: np.ndarray, tol: float = SPECTRAL_TOL) -> float:
    """Largest singular value by Lanczos on the smaller Gram matrix (:func:`gram_lanczos`) until converged.

    Stops when the top Ritz pair's residual is below ``tol`` times its value:
    then an eigenvalue of the Gram matrix lies within ``tol`` (relative) of it,
    and the singular value within tol / 2 (the float32 products move the answer
    by about 1e-8 relative). Falls back to a full SVD if that takes more than
    MAX_LANCZOS_STEPS steps (or the dimension).
    """
    n = min(w.shape)
    for alpha, beta in gram_lanczos(w, MAX_LANCZOS_STEPS):
        j = len(alpha) - 1
        # a check costs a tridiagonal eigensolve; before ~20 steps one never passes at 1e-6
        if (j >= min(19, n - 1) and j % 5 == 4) or j == n - 1 or beta[j] <= 1e-12 * np.max(alpha):
            theta, s = np.linalg.eigh(tridiagonal(alpha, beta[:-1]))
            if beta[j] * abs(s[-1, -1]) <= tol * theta[-1]:
                return float(np.sqrt(theta[-1]))
    return float(np.linalg.norm(w.astype(np.float64), 2))
