"""Noise in every layer at once: the cells whose ``layer`` coordinate is 0 ("together").

Every W_j gets its own independent eta_j with ||eta_j|| = r ||W_j|| (the all-layer
setting of Neyshabur, Bhojanapalli and Srebro 2018), and with ``noise.biases``
every b_j its own eta_b,j with ||eta_b,j||_2 = r ||b_j||_2. There is no clean
prefix to reuse: the perturbed pass starts at layer 1, and each column (one
input, one ratio, one draw) carries every layer's noise. The columns hold
differences from the clean pass, as in :func:`pipeline.measure.run_pass`:

    delta_j = W_j dh_{j-1} + eta_j (h_{j-1} + dh_{j-1}) [+ eta_b,j],   dh_j = f(z_j + delta_j) - f(z_j)

so eta_j multiplies the perturbed input of layer j, a different vector in every
column: eta_j is formed whole (a pass of draws at a time), or, for Gaussian and
sphere noise scaled by the Frobenius norm, eta_j times a draw's columns is
sampled exactly through their thin QR (:class:`TogetherNoise`). The
activation's difference is the cancellation-free one of
:mod:`pipeline.activations`, so float32 stays accurate.

Plain numpy; :mod:`pipeline.measure` calls it beside the single-layer kernel.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np

from .noise import bias_noise, uniform_direction_products, weight_noise

ASCENT_STEPS = 200  # the worst joint direction's ascent converges in a few tens of steps
RANDOM_STARTS = 4


def _no_clock(phase: str):
    return contextlib.nullcontext()


class TogetherNoise:
    """The noise of the together cells of one network, drawn batch after batch.

    ``rng`` (the stream of layer coordinate 0) spawns one child per layer j,
    and each child three streams: eta_j's (its entries, or Z below), the
    chi-squares of eta_j's exact sampler, and eta_b,j's. Each is drawn
    draw-major, so the draws do not depend on how they are split into batches.

    Gaussian or sphere noise scaled by the Frobenius norm, when a draw's c columns are
    fewer than n_{j-1}, is sampled without forming eta_j
    (:func:`pipeline.noise.uniform_direction_products`: a thin QR of the draw's perturbed
    inputs, c x c per draw); every other case forms eta_j (:func:`pipeline.noise.weight_noise`).
    """

    def __init__(self, rng: np.random.Generator, shapes, distribution: str, norm: str, sizes: dict[int, float],
                 bias_sizes: dict[int, float] | None, dtype):
        self.shapes, self.distribution, self.norm, self.sizes = shapes, distribution, norm, sizes
        self.bias_sizes, self.dtype = bias_sizes, np.dtype(dtype)
        self.streams = [child.spawn(3) for child in rng.spawn(len(shapes))]

    def products(self, j: int, x: np.ndarray) -> np.ndarray:
        """eta_j X_d at ratio 1 for the next draws, X (draws, n_{j-1}, c) their columns: (draws, n_j, c)."""
        draws, n_in, c = x.shape
        if self.distribution != "rademacher" and self.norm == "frobenius" and c < n_in:
            out = uniform_direction_products(self.streams[j - 1][:2], self.shapes[j - 1], x, self.sizes[j])
            return out.astype(self.dtype, copy=False)
        eta = weight_noise(self.streams[j - 1][0], self.shapes[j - 1], draws, self.distribution, self.norm,
                           self.sizes[j], self.dtype)
        return np.matmul(eta, x)

    def biases(self, j: int, draws: int) -> np.ndarray | None:
        """eta_b,j of the next ``draws`` draws at ratio 1, (draws, n_j); None when biases are not perturbed."""
        if self.bias_sizes is None:
            return None
        return bias_noise(self.streams[j - 1][2], self.shapes[j - 1][0], draws, self.distribution,
                          self.bias_sizes[j], self.dtype)


@dataclasses.dataclass(frozen=True)
class TogetherAnswer:
    """The first-order answer of the together cells at ratio 1, per input.

    ``rms``: the exact root mean square of sum_j J_j eta_j h_{j-1} (+ J_j eta_b,j) over independent
    random eta_j (NaN for spectral scaling). ``worst``: the largest first-order change over
    ||eta_j|| <= ||W_j|| for every j at once (and ||eta_b,j|| <= ||b_j||), found by ascent
    (:func:`joint_worst`). ``units[j]`` (n_j, n): the unit direction u_j of layer j's worst eta_j =
    ||W_j|| u_j h_{j-1}^T / ||h_{j-1}|| (and eta_b,j = ||b_j|| u_j).
    """

    rms: np.ndarray     # (n,)
    worst: np.ndarray   # (n,)
    units: dict         # j -> (n_j, n)


class TogetherLinear:
    """Collects what the together cells' linear answer needs from a backward pass, one J_j at a time."""

    def __init__(self, fwd, sizes: dict[int, float], bias_sizes: dict[int, float] | None, norm: str):
        self.fwd, self.sizes, self.bias_sizes, self.norm = fwd, sizes, bias_sizes, norm
        n = fwd.output.shape[1]
        self.mean_square = np.zeros(n)
        self.grams: dict[int, np.ndarray] = {}

    def weight(self, j: int) -> np.ndarray:
        """a_j per input: the first-order gain of layer j's noise of ratio 1 in its worst direction, over
        ||J_j u||: ||W_j|| ||h_{j-1}|| (+ ||b_j|| with perturbed biases)."""
        h_norm = np.linalg.norm(self.fwd.post[j - 1].astype(np.float64), axis=0)
        return self.sizes[j] * h_norm + (self.bias_sizes[j] if self.bias_sizes else 0.0)

    def add(self, j: int, J: np.ndarray) -> None:
        """Layer j's Jacobians J_j (n, k, n_j)."""
        J = J.astype(np.float64)
        n_j, n_in = J.shape[2], self.fwd.post[j - 1].shape[0]
        fro2 = np.einsum("nki,nki->n", J, J)
        h2 = np.sum(self.fwd.post[j - 1].astype(np.float64) ** 2, axis=0)
        # E[eta_ab eta_cd] = s^2 / (n_j n_in) [a=c][b=d]; for eta_b, E[eta_b eta_b^T] = s_b^2 / n_j I
        self.mean_square += self.sizes[j] ** 2 * fro2 * h2 / (n_j * n_in)
        if self.bias_sizes:
            self.mean_square += self.bias_sizes[j] ** 2 * fro2 / n_j
        self.grams[j] = self.weight(j)[:, None, None] ** 2 * (J @ J.transpose(0, 2, 1))

    def finish(self, jacobians) -> TogetherAnswer:
        """The answer, once every layer was added; ``jacobians()`` runs the backward pass again (the
        directions need each J_j and the joint worst direction w, known only after every J_j)."""
        layers = sorted(self.grams)
        worst, w = joint_worst(np.stack([self.grams[j] for j in layers]))
        units = {}
        for j, J in jacobians():
            u = np.einsum("nki,nk->ni", J.astype(np.float64), w)
            size = np.linalg.norm(u, axis=1, keepdims=True)
            with np.errstate(invalid="ignore", divide="ignore"):
                units[j] = np.where(size > 0, u / size, 0.0).T
        rms = np.sqrt(self.mean_square) if self.norm == "frobenius" else np.full(len(worst), np.nan)
        return TogetherAnswer(rms, worst, units)


def joint_worst(grams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """max over unit w in R^k of f(w) = sum_t sqrt(w^T M_t w), per input, and the w reaching it.

    With M_t = a_t^2 J_t J_t^T this is the largest ||sum_t J_t x_t|| over ||x_t|| <= a_t
    (the support function of a sum of ellipsoids). f is convex, so the step
    w <- grad f(w) / ||grad f(w)|| never lowers it (it maximises f's tangent plane on the
    sphere); it stops at a local maximum. Started from the top eigenvector of sum_t M_t
    (the answer under one joint constraint), of each M_t and from RANDOM_STARTS fixed random
    vectors, the best end point is kept:
    exact for k = 1 and for one layer, a lower bound on the maximum otherwise, and
    never below the joint-constraint answer.

    Args:
        grams: (T, n, k, k) positive semidefinite.

    Returns:
        f at the maximum (n,), and w (n, k) with its largest entry positive.

    >>> m = np.array([[[[4.0, 0.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 1.0]]]])  # two orthogonal terms
    >>> value, w = joint_worst(m)
    >>> print(round(float(value[0]), 6), np.round(w[0] ** 2, 6))  # max of 2|w1| + |w2|: sqrt(5)
    2.236068 [0.8 0.2]
    """
    T, n, k, _ = grams.shape
    starts = [np.linalg.eigh(grams.sum(axis=0))[1][:, :, -1]] + [np.linalg.eigh(g)[1][:, :, -1] for g in grams]
    # and a few fixed random ones: a start where some term is 0 (an eigenvector of one rank-deficient term) sits
    # on f's kink there, where the step does not move even when it is no maximum
    starts += list(np.random.default_rng(0).standard_normal((RANDOM_STARTS, n, k)))
    w = np.stack(starts)  # (start, n, k): every start of every input at once
    w = w + 1e-3 * np.where(np.abs(w).sum(axis=2, keepdims=True) > 0, 0.0, 1.0)  # a zero start: any vector
    w /= np.linalg.norm(w, axis=2, keepdims=True)
    value = np.full(w.shape[:2], -np.inf)
    for _ in range(ASCENT_STEPS):
        q = np.einsum("tnab,snb->tsna", grams, w)
        norms = np.sqrt(np.maximum(np.einsum("tsna,sna->tsn", q, w), 0.0))
        last, value = value, norms.sum(axis=0)
        if np.all(value - last <= 1e-14 * value):  # the ascent never lowers f: it has stopped everywhere
            break
        with np.errstate(invalid="ignore", divide="ignore"):
            grad = np.where(norms[..., None] > 0, q / norms[..., None], 0.0).sum(axis=0)
        size = np.linalg.norm(grad, axis=2, keepdims=True)
        w = np.where(size > 0, grad / np.where(size > 0, size, 1.0), w)
    else:  # ASCENT_STEPS reached: f at the last step
        value = np.sqrt(np.maximum(np.einsum("tnab,snb,sna->tsn", grams, w, w), 0.0)).sum(axis=0)
    pick = value.argmax(axis=0)
    best, best_w = value[pick, np.arange(n)], w[pick, np.arange(n)]
    best_w *= np.where(np.take_along_axis(best_w, np.abs(best_w).argmax(axis=1)[:, None], axis=1) < 0, -1.0, 1.0)
    return best, best_w


def together_bound(ratios: np.ndarray, spectral: np.ndarray, sizes: np.ndarray, bias_sizes: np.ndarray,
                   h_norms: np.ndarray, lips: np.ndarray, closed_form: bool) -> np.ndarray:
    """The Lipschitz bound on ||v - v*|| of the together cells, per ratio and input, (R, n).

    e_j bounds ||h'_j - h_j||: e_0 = 0 and
    e_j = Lip(f_j) ((||W_j||_2 + r c_j) e_{j-1} + r c_j a_j + r beta_j), with
    ||eta_j||_2 <= r c_j (c_j = ||W_j||_F for Frobenius scaling, ||W_j||_2 for spectral),
    beta_j = ||b_j|| with perturbed biases (else 0), Lip(f_L) = 1, and a_j a bound on
    ||h_{j-1}||. Without biases and with f(0) = 0 everywhere (``closed_form``),
    a_j = prod_{l<j} Lip(f_l) ||W_l||_2 ||x||, which sums to Neyshabur et al.'s
    (prod_j Lip(f_j) (||W_j||_2 + r c_j) - prod_j Lip(f_j) ||W_j||_2) ||x||; otherwise a_j is the
    clean ||h_{j-1}|| of the input itself. Not linear in r.

    Args:
        spectral, sizes, bias_sizes: ||W_j||_2, c_j and beta_j, (L,).
        h_norms: ||h_{j-1}|| of the clean pass, (L, n); row 0 is ||x||.
        lips: Lip(f_j) of the hidden activations, (L - 1,).
    """
    L = len(sizes)
    lip = np.append(lips, 1.0)
    r = np.asarray(ratios, np.float64)[:, None]
    e = np.zeros((len(r), h_norms.shape[1]))
    a = h_norms[0][None, :]
    for j in range(L):
        before = a if closed_form else h_norms[j][None, :]
        e = lip[j] * ((spectral[j] + r * sizes[j]) * e + r * sizes[j] * before + r * bias_sizes[j])
        a = a * lip[j] * spectral[j]
    return e


def together_pass(net, fwd, noise: TogetherNoise, ratios: np.ndarray, draws: int,
                  answer: TogetherAnswer | None = None, clock=_no_clock) -> tuple[np.ndarray, ...]:
    """The perturbed pass of the together cells for ``draws`` draws (and the worst direction).

    Args:
        fwd: the clean pass over the n inputs.
        noise: the network's together noise; this batch's draws are the next ones of its streams.
        answer: with the linear answer, one more column per (input, ratio) after the draws: the worst
            joint direction of that input (each input its own eta_j, as in the single-layer cells).

    Returns:
        ||v' - v||, the count of hidden units whose state differs from the clean pass, and the
        perturbed prediction, per column, columns ordered (input, ratio, draw [+ worst]).
    """
    n, R = fwd.output.shape[1], len(ratios)
    e = draws + (answer is not None)
    input_of = np.repeat(np.arange(n), R * e)
    scale = np.tile(np.repeat(np.asarray(ratios, np.float64), e), n).astype(net.dtype)
    flips = np.zeros(n * R * e, dtype=np.int64)
    d = None  # dh_{j-1}: the columns' difference from the clean pass; None while it is 0 (the input)
    for j in range(1, net.depth + 1):
        with clock("weights"):
            w, _ = net.params(j)
        with clock("kernel"):
            h, z = fwd.post[j - 1], fwd.pre[j - 1]
            hp = h[:, input_of] if d is None else h[:, input_of] + d  # the perturbed input of layer j
            x = hp.reshape(h.shape[0], n * R, e)
            out = np.empty((w.shape[0], n * R, e), net.dtype)
        with clock("noise"):  # one eta per draw for all of its columns
            prod = noise.products(j, np.ascontiguousarray(x[:, :, :draws].transpose(2, 0, 1)))
            eta_b = noise.biases(j, draws)
        with clock("kernel"):
            out[:, :, :draws] = prod.transpose(1, 2, 0)
            if eta_b is not None:
                out[:, :, :draws] += eta_b.T[:, None, :]
            if answer is not None:
                out[:, :, draws] = _worst_columns(answer, j, h, x[:, :, draws], R, noise)
            out = out.reshape(w.shape[0], -1)
            out *= scale
            if d is not None:
                out += w @ d
            del w, prod
            if j == net.depth:
                break
            zc = z[:, input_of]
            flips += np.count_nonzero((out > -zc) != (zc > 0), axis=0)
            d = net.activations[j - 1].difference(zc, out)
    with clock("kernel"):
        moved = out.astype(np.float64)
        v = fwd.output.astype(np.float64)
        return np.linalg.norm(moved, axis=0), flips, (v[:, input_of] + moved).argmax(axis=0)


def _worst_columns(answer: TogetherAnswer, j: int, h: np.ndarray, x: np.ndarray, R: int,
                   noise: TogetherNoise) -> np.ndarray:
    """eta_j (h + dh) (+ eta_b,j) at ratio 1 for the worst joint direction, columns (input, ratio):
    eta_j = ||W_j|| u_j h^T / ||h|| makes it ||W_j|| u_j (h . (h + dh)) / ||h||."""
    h64 = h.astype(np.float64)
    h_norm = np.linalg.norm(h64, axis=0)
    owner = np.repeat(np.arange(h.shape[1]), R)
    with np.errstate(invalid="ignore", divide="ignore"):
        along = np.where(h_norm[owner] > 0, np.einsum("ac,ac->c", h64[:, owner], x) / h_norm[owner], 0.0)
    gain = noise.sizes[j] * along + (noise.bias_sizes[j] if noise.bias_sizes else 0.0)
    return answer.units[j][:, owner] * gain
