"""Weight noise: sample eta @ h for many draws of eta, scaled to the size of W.

Only eta @ H reaches the rest of the network (H = [h_1 .. h_n], the clean
inputs of the perturbed layer for every input), so that is all we sample; one
eta serves every input of a draw. Three samplers, all exact in distribution:

- Gaussian (or sphere) noise scaled by the Frobenius norm, n < n_in: with G
  standard normal and H = Q R, G Q is standard normal and independent of the
  rest of ||G||_F^2, a chi-square with n_out (n_in - q) degrees of freedom.
  O(n_out n) per draw; eta is never formed.
- Gaussian (or sphere) noise scaled by the spectral norm, n < n_in: G has the
  law of U B V^T with U, V Haar-orthogonal and independent of B, a bidiagonal
  matrix of independent chi variables (Dumitriu and Edelman, "Matrix models
  for beta ensembles", 2002, from Householder bidiagonalisation). So
  ||G||_2 = sigma_1(B), a tridiagonal eigenvalue (LAPACK bisection, exact to
  rounding), and G H = U B F R with F = V^T Q a uniform orthonormal frame;
  U applied to M = B F R is a uniform frame times the R factor of M.
  O(min(n_out, n_in)) per draw plus the eigenvalue; eta is never formed.
- Every other case (Rademacher, or n >= n_in) materialises eta, a batch of
  draws at a time (at most BATCH_BYTES of float64 matrices), multiplies the
  whole batch with H in one product and computes the batch's norms together.
  Rademacher signs are the bits of 64-bit words, a fixed number of words per
  draw, so the draws do not depend on the batch size. With few inputs the
  product uses byte tables (the sum of h over every sign pattern of 8 rows)
  instead of forming the signs as floats.

After scaling, sphere noise is Gaussian noise (the scaling fixes the norm,
and the direction is uniform in both), so both share every sampler.

The returned columns are for ratio 1 (||eta|| = ||W||); multiplying by r gives
every ratio from the same draws (common random numbers).
"""

from __future__ import annotations

import numpy as np

from .linalg import SPECTRAL_TOL, frobenius_norm, top_singular_value

BATCH_BYTES = 64 * 2**20
DENSE_SPECTRAL_BELOW = 128  # min(shape) below which a spectral norm is a full SVD
TABLE_INPUTS = 8  # with at most this many inputs, Rademacher eta @ H uses byte tables


def matrix_norm(w: np.ndarray, norm: str) -> float:
    """The Frobenius norm of a matrix (accumulated in float64) or its spectral norm (to a relative
    SPECTRAL_TOL or better)."""
    if norm == "frobenius":
        return frobenius_norm(w)
    return float(spectral_norms(np.asarray(w)[None])[0])


def pre_activation_noise(rng: np.random.Generator, w: np.ndarray, h: np.ndarray, draws: int,
                         distribution: str, norm: str, size: float | None = None,
                         dtype: type = np.float64) -> np.ndarray:
    """eta @ H for ``draws`` independent eta with ||eta||_norm = ||w||_norm, one eta for all inputs.

    Args:
        rng: the stream of this (network, layer).
        w: the weight matrix W_i being perturbed, shape (n_out, n_in); only
            its shape is used when ``size`` is given.
        h: its clean inputs H = [h_1 .. h_n], shape (n_in, n) (or (n_in,) for one input).
        draws: number of independent noise matrices.
        distribution: gaussian, rademacher or sphere.
        norm: frobenius or spectral.
        size: ||w|| in ``norm`` when the caller has it (a spectral norm is a Lanczos run).
        dtype: of the result. A materialised eta and eta @ H are formed in it
            (float32 halves the work); norms and scale factors are float64.

    Returns:
        Array of shape (n_out, draws, n); [:, d, j] is eta_d @ h_j. The same as
        ``LayerNoise(...).draw`` called for these draws in batches of any sizes.
    """
    size = matrix_norm(w, norm) if size is None else size
    return LayerNoise(rng, w.shape, h, distribution, norm, size, dtype).draw(draws)


class LayerNoise:
    """The draws of eta @ H of one (network, layer), taken batch after batch.

    Every kind of random number a sampler uses comes from a stream of its own
    (spawned from ``rng``) and is drawn draw-major, so the draws do not depend
    on how they are split into batches: ``draw(a)`` then ``draw(b)`` gives what
    ``draw(a + b)`` gives. Whatever depends on H alone (its R factor, the sign
    tables) is computed once.
    """

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int], h: np.ndarray, distribution: str,
                 norm: str, size: float, dtype=np.float64):
        h = h[:, None] if h.ndim == 1 else h
        self.shape, self.distribution, self.norm, self.size = tuple(shape), distribution, norm, size
        self.dtype = np.dtype(dtype)
        self.materialised = distribution == "rademacher" or h.shape[1] >= shape[1]
        if self.materialised:
            self.rng, self.h = rng, h
            self.table = _sign_table(h, self.dtype) if distribution == "rademacher" and norm == "frobenius" \
                and h.shape[1] <= TABLE_INPUTS else None
        else:  # these samplers are cheap: float64 throughout, then cast
            self.r = _r_factor(h.astype(np.float64, copy=False))
            self.streams = rng.spawn(2 if norm == "frobenius" else 4)

    def draw_major(self, draws: int) -> np.ndarray:
        """:meth:`draw` as (draws, n_out, n): each draw's eta @ H contiguous, as the samplers make it."""
        return self.draw(draws).transpose(1, 0, 2)

    def draw(self, draws: int) -> np.ndarray:
        """The next ``draws`` draws, shape (n_out, draws, n) at ratio 1 (a view of a draw-major array)."""
        if self.materialised:
            return _materialised_noise(self.rng, self.shape, self.h, draws, self.distribution, self.norm,
                                       self.size, self.dtype, self.table)
        if self.norm == "frobenius":
            out = _uniform_direction_noise(self.streams, self.size, self.shape, self.r, draws)
        else:
            out = _spectral_gaussian_noise(self.streams, self.size, self.shape, self.r, draws)
        return out.astype(self.dtype, copy=False)


# ---------------------------------------------------------------- never materialised


def _uniform_direction_noise(streams, size: float, shape: tuple[int, int], r: np.ndarray,
                             draws: int) -> np.ndarray:
    """eta @ H for eta = size * G / ||G||_F, G standard normal, without G (n < n_in).

    With H = Q R (thin QR, Q orthonormal n_in x q), G Q = Z is standard normal
    (n_out x q) and G H = Z R, while ||G||_F^2 = ||Z||_F^2 plus an independent
    chi-square with n_out (n_in - q) degrees of freedom. For one input this is
    Q = h / ||h||, R = ||h||. ``streams``: Z's and the chi-squares'.
    """
    (n_out, n_in), (q, n) = shape, r.shape
    z = streams[0].standard_normal((draws, n_out, q))
    dof = n_out * (n_in - q)
    rest = streams[1].chisquare(dof, size=draws) if dof > 0 else np.zeros(draws)
    scale = size / np.sqrt(np.einsum("dij,dij->d", z, z) + rest)
    gh = z.reshape(draws * n_out, q) @ r if n > 1 else z * r[0, 0]
    return (gh.reshape(draws, n_out, n) * scale[:, None, None]).transpose(1, 0, 2)


def _spectral_gaussian_noise(streams, size: float, shape: tuple[int, int], r: np.ndarray,
                             draws: int) -> np.ndarray:
    """eta @ H for eta = size * G / ||G||_2, G standard normal, without G (n < n_in).

    G = U B V^T in law (module docstring): B is n_out x n_in upper bidiagonal,
    B[k, k] ~ chi(n_out - k), B[k, k + 1] ~ chi(n_in - 1 - k), all independent.
    With H = Q R, V^T Q = F is a uniform orthonormal frame, so G H = U M with
    M = B F R; and U M = F2 R_M for M = Q_M R_M and F2 a uniform frame.
    ``streams``: B's diagonal, its superdiagonal, F's and F2's.
    """
    n_out, n_in = shape
    k = min(n_out, n_in)
    diag = np.sqrt(streams[0].chisquare(n_out - np.arange(k), size=(draws, k)))
    sup = np.zeros((draws, k))
    n_sup = min(n_out, n_in - 1)
    if n_sup:
        sup[:, :n_sup] = np.sqrt(streams[1].chisquare(n_in - 1 - np.arange(n_sup), size=(draws, n_sup)))
    top = _bidiagonal_top_singular_values(diag, sup)
    frame = _uniform_frames(streams[2], draws, n_in, r.shape[0])  # (draws, n_in, q)
    below = np.zeros((draws, 1, r.shape[0]))  # row n_in of F: zero, met only by sup = 0
    bf = diag[:, :, None] * frame[:, :k] + sup[:, :, None] * np.concatenate([frame, below], axis=1)[:, 1:k + 1]
    rm = np.linalg.qr(bf @ r, mode="r")  # (draws, c, n)
    gh = _uniform_frames(streams[3], draws, n_out, rm.shape[1]) @ rm  # (draws, n_out, n)
    return (gh * (size / top)[:, None, None]).transpose(1, 0, 2)


def _r_factor(h: np.ndarray) -> np.ndarray:
    """R of the thin QR of H (n_in x n, n < n_in); ||h|| as a 1 x 1 matrix for one input."""
    return np.array([[np.linalg.norm(h)]]) if h.shape[1] == 1 else np.linalg.qr(h, mode="r")


def _uniform_frames(rng: np.random.Generator, draws: int, n: int, q: int) -> np.ndarray:
    """``draws`` independent uniformly distributed orthonormal n x q frames, shape (draws, n, q).

    The Q factor of a standard normal matrix, its columns' signs set so that
    diag(R) > 0 (without that, Householder QR would bias the frame).
    """
    z = rng.standard_normal((draws, n, q))
    if q == 1:
        return z / np.linalg.norm(z, axis=1, keepdims=True)
    qz, rz = np.linalg.qr(z)
    return qz * np.where(np.diagonal(rz, axis1=1, axis2=2) < 0, -1.0, 1.0)[:, None, :]


def _bidiagonal_top_singular_values(diag: np.ndarray, sup: np.ndarray) -> np.ndarray:
    """sigma_1 of each upper bidiagonal matrix (rows of ``diag``, ``sup``: B[k, k], B[k, k + 1]).

    The largest eigenvalue of the tridiagonal B B^T by LAPACK bisection (dstebz),
    to a relative 1e-8 (the singular value to 5e-9): far inside SPECTRAL_TOL, and a third fewer
    bisection steps than to the last bit.
    """
    from scipy.linalg.lapack import dstebz

    k = diag.shape[1]
    t_diag = diag**2 + sup**2
    t_off = sup[:, :-1] * diag[:, 1:]
    if k == 1:
        return np.sqrt(t_diag[:, 0])
    radius = np.abs(np.pad(t_off, ((0, 0), (0, 1)))) + np.abs(np.pad(t_off, ((0, 0), (1, 0))))
    tolerance = 1e-8 * np.max(t_diag + radius, axis=1)  # of the Gershgorin bound on the top eigenvalue
    out = np.empty(len(diag))
    for d in range(len(diag)):
        m, w, *_, info = dstebz(t_diag[d], t_off[d], 2, 0.0, 1.0, k, k, tolerance[d], "E")
        if info or m != 1:
            raise np.linalg.LinAlgError(f"dstebz failed (info {info})")
        out[d] = np.sqrt(max(w[0], 0.0))
    return out


# ---------------------------------------------------------------- materialised


def _materialised_noise(rng: np.random.Generator, shape: tuple[int, int], h: np.ndarray, draws: int,
                        distribution: str, norm: str, size: float, dtype: np.dtype,
                        table: np.ndarray | None = None) -> np.ndarray:
    """eta @ H with eta formed, a batch of draws at a time; the draws do not depend on the batch size.
    ``table``: the sign tables of H (:func:`_sign_table`) for Rademacher-Frobenius noise of few inputs.
    Shape (n_out, draws, n), a view of a draw-major array."""
    n_out, n_in = shape
    out = np.empty((draws, n_out, h.shape[1]), dtype)
    batch = batch_size(shape)
    for start in range(0, draws, batch):
        b = min(batch, draws - start)
        if distribution == "rademacher":
            bits = _sign_bytes(rng, b, shape)
            if table is not None:  # ||eta||_F = sqrt(n_out n_in) for every sign pattern
                prod, raw_norm = _table_product(table, bits), np.full(b, np.sqrt(n_out * n_in))
                np.multiply(prod, (size / raw_norm).astype(dtype)[:, None, None], out=out[start:start + b])
                continue
            e = _signs(bits, n_in, dtype)
            raw_norm = np.full(b, np.sqrt(n_out * n_in)) if norm == "frobenius" else spectral_norms(e)
        else:  # sphere: G / ||G||_F, and the scaling to size removes ||G||_F again
            e = rng.standard_normal((b, n_out, n_in))
            raw_norm = np.sqrt(np.einsum("bij,bij->b", e, e)) if norm == "frobenius" else spectral_norms(e)
        # eta itself, scaled in float64 and rounded once to the working precision (n / n_in times fewer
        # numbers than eta H), straight into the product
        e *= (size / raw_norm)[:, None, None]
        np.matmul(e.astype(dtype, copy=False), h.astype(dtype, copy=False), out=out[start:start + b])
    return out.transpose(1, 0, 2)


def batch_size(shape: tuple[int, int]) -> int:
    """Draws per batch: as many float64 matrices of ``shape`` as fit in BATCH_BYTES, at least one."""
    return max(1, BATCH_BYTES // (8 * shape[0] * shape[1]))


def _sign_bytes(rng: np.random.Generator, b: int, shape: tuple[int, int]) -> np.ndarray:
    """Random bits for b sign matrices, shape (b, ceil(n_in / 8), n_out) uint8.

    Bit j of byte [c, i] is the sign of eta[i, 8c + j] (1 is +1). Every draw
    takes the same whole number of 64-bit words from ``rng``, so drawing b at
    once or one at a time gives the same matrices.
    """
    n_out, n_in = shape
    row = -(-n_in // 8)
    words = -(-n_out * row // 8)
    raw = rng.integers(0, np.iinfo(np.uint64).max, size=(b, words), dtype=np.uint64, endpoint=True)
    return raw.view(np.uint8)[:, :n_out * row].reshape(b, row, n_out)


def _signs(bits: np.ndarray, n_in: int, dtype: np.dtype) -> np.ndarray:
    """The +-1 matrices of sign bytes, shape (b, n_out, n_in)."""
    # C order whatever b: numpy lays out a single matrix differently, and matmul rounds by layout
    e = np.unpackbits(bits.transpose(0, 2, 1), axis=2, count=n_in, bitorder="little").astype(dtype, order="C")
    e *= 2
    e -= 1
    return e


def _sign_table(h: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """table[c, v] = sum_j s_j h[8c + j] with s_j = +-1 the bits of byte v: shape (ceil(n_in / 8), 256, n)."""
    n_in, n = h.shape
    row = -(-n_in // 8)
    padded = np.zeros((row * 8, n))
    padded[:n_in] = h
    patterns = ((np.arange(256)[:, None] >> np.arange(8)) & 1) * 2.0 - 1.0  # (256, 8)
    return np.einsum("vj,cjn->cvn", patterns, padded.reshape(row, 8, n)).astype(dtype)


def _table_product(table: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """eta @ H from sign bytes: per row, the sum over its bytes of the table entries they select.

    One gather per byte column with uint8 indices into a 256-entry table: an
    eighth of the additions of the product, and no sign matrix in memory.
    """
    b, row, n_out = bits.shape
    out = np.zeros((b, n_out, table.shape[2]), table.dtype)
    for c in range(row):
        if table.shape[2] == 1:
            out[:, :, 0] += np.take(table[c, :, 0], bits[:, c])
        else:
            out += np.take(table[c], bits[:, c], axis=0)
    return out


# ---------------------------------------------------------------- spectral norms


def spectral_norms(e: np.ndarray) -> np.ndarray:
    """||e_b||_2 for a stack of matrices (b, n_out, n_in), float64, to a relative SPECTRAL_TOL or better."""
    if min(e.shape[1:]) < DENSE_SPECTRAL_BELOW:
        return np.linalg.norm(e.astype(np.float64, copy=False), 2, axis=(1, 2))
    return np.array([top_singular_value(m) for m in e])


# ---------------------------------------------------------------- every layer at once


def weight_noise(rng: np.random.Generator, shape: tuple[int, int], draws: int, distribution: str, norm: str,
                 size: float, dtype=np.float64) -> np.ndarray:
    """``draws`` independent eta formed whole, shape (draws, n_out, n_in), with ||eta||_norm = ``size``.

    For the cells with noise in every layer at once, where eta_j multiplies the perturbed input of layer j
    (a different vector in every column), so eta @ H alone is not enough. The same laws as the samplers
    above: a uniformly random direction (gaussian, sphere) or random signs, scaled. Drawn draw-major from
    ``rng``, so consecutive calls give what one call for all the draws gives.
    """
    n_out, n_in = shape
    if distribution == "rademacher":
        e = _signs(_sign_bytes(rng, draws, shape), n_in, np.dtype(np.float64))
    else:
        e = rng.standard_normal((draws, n_out, n_in))
    raw = np.sqrt(np.einsum("bij,bij->b", e, e)) if norm == "frobenius" else spectral_norms(e)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(raw > 0, size / raw, 0.0)
    e *= scale[:, None, None]
    return e.astype(dtype, copy=False)


def bias_noise(rng: np.random.Generator, n_out: int, draws: int, distribution: str, size: float,
               dtype=np.float64) -> np.ndarray:
    """``draws`` independent eta_b of 2-norm ``size`` (a vector's Frobenius and spectral norms agree),
    shape (draws, n_out): a uniformly random direction (gaussian, sphere) or random signs / sqrt(n_out)."""
    if distribution == "rademacher":
        e = rng.integers(0, 2, size=(draws, n_out)) * 2.0 - 1.0
    else:
        e = rng.standard_normal((draws, n_out))
    raw = np.linalg.norm(e, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        e *= np.where(raw > 0, size / raw, 0.0)[:, None]
    return e.astype(dtype, copy=False)


def uniform_direction_products(streams, shape: tuple[int, int], x: np.ndarray, size: float) -> np.ndarray:
    """eta_d @ X_d for independent eta_d = size G_d / ||G_d||_F (G_d standard normal), one per draw, without
    forming eta_d: X (draws, n_in, c) with c < n_in, each X_d independent of G_d.

    The sampler of :func:`_uniform_direction_noise` per draw: with X_d = Q_d R_d (thin QR), G_d Q_d = Z_d is
    standard normal (n_out x c) and independent of the rest of ||G_d||_F^2, a chi-square with
    n_out (n_in - c) degrees of freedom, whatever X_d is, so G_d X_d = Z_d R_d. O(n_out c^2 + n_in c^2) per
    draw instead of O(n_out n_in c). ``streams``: Z's and the chi-squares', drawn draw-major.

    Returns:
        (draws, n_out, c), float64.
    """
    draws, n_in, c = x.shape
    n_out = shape[0]
    r = np.linalg.qr(x.astype(np.float64), mode="r")
    z = streams[0].standard_normal((draws, n_out, c))
    rest = streams[1].chisquare(n_out * (n_in - c), size=draws)
    return (z @ r) * (size / np.sqrt(np.einsum("dij,dij->d", z, z) + rest))[:, None, None]
