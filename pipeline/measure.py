"""The measurement kernel: every (ratio, layer, draw) of every network in a block.

Plain numpy, no Dask, no zarr. Layers before the perturbed one are not rerun:
the clean pass is kept, the perturbation enters at layer i as z_i + eta @ h_{i-1},
and from there the perturbed columns travel through the remaining layers as
one matrix product. With n inputs, one eta per draw perturbs all of them. Columns perturbed at different layers share every later
weight matrix, so at layer j the columns of all origins i < j go through W_j
in a single GEMM.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
from threadpoolctl import threadpool_limits

from .network import NOISE_STREAM, Forward, Network, build_network, make_inputs, make_labels, stream
from .noise import matrix_norm, pre_activation_noise
from .spec import Spec


@dataclasses.dataclass(frozen=True)
class NetworkResult:
    """Measurements on one network; axes (ratio, layer, input, draw) as in the store."""

    delta_norm: np.ndarray            # (ratio, layer, input, draw)
    hidden_flip_fraction: np.ndarray  # (ratio, layer, input, draw)
    pred_changed: np.ndarray          # (ratio, layer, input, draw), 0/1
    accuracy: np.ndarray              # (ratio, layer, draw); NaN without labels
    bound: np.ndarray                 # (ratio, layer, input)
    linear_rms: np.ndarray            # (ratio, layer, input); NaN for spectral scaling
    worst_linear: np.ndarray          # (ratio, layer, input)
    worst_realised: np.ndarray        # (ratio, layer, input)
    output_norm: np.ndarray           # (input,)
    margin: np.ndarray                # (input,); NaN for k = 1
    clean_accuracy: float             # NaN without labels


RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(NetworkResult))
PER_CELL = ("delta_norm", "hidden_flip_fraction", "pred_changed", "accuracy", "bound", "linear_rms",
            "worst_linear", "worst_realised")  # fields with (ratio, layer) in front


@dataclasses.dataclass(frozen=True)
class BlockResult:
    """Measurements on a block of seeds: each field of :class:`NetworkResult` with a seed
    axis after (ratio, layer), or first for per-network fields, as in the store."""

    delta_norm: np.ndarray            # (ratio, layer, seed, input, draw)
    hidden_flip_fraction: np.ndarray  # (ratio, layer, seed, input, draw)
    pred_changed: np.ndarray          # (ratio, layer, seed, input, draw)
    accuracy: np.ndarray              # (ratio, layer, seed, draw)
    bound: np.ndarray                 # (ratio, layer, seed, input)
    linear_rms: np.ndarray            # (ratio, layer, seed, input)
    worst_linear: np.ndarray          # (ratio, layer, seed, input)
    worst_realised: np.ndarray        # (ratio, layer, seed, input)
    output_norm: np.ndarray           # (seed, input)
    margin: np.ndarray                # (seed, input)
    clean_accuracy: np.ndarray        # (seed,)

    @classmethod
    def stack(cls, results: list[NetworkResult]) -> BlockResult:
        return cls(**{name: np.stack([np.asarray(getattr(r, name)) for r in results],
                                     axis=2 if name in PER_CELL else 0)
                      for name in RESULT_FIELDS})


@dataclasses.dataclass(frozen=True)
class Moved:
    """What the perturbed columns of one origin layer did, per column."""

    delta: np.ndarray   # ||v' - v||
    flips: np.ndarray   # hidden units whose ReLU state differs from the clean pass
    argmax: np.ndarray  # the perturbed network's predicted class


def propagate(net: Network, fwd: Forward, perturbations: dict[int, np.ndarray]) -> dict[int, Moved]:
    """Push pre-activation perturbations through the rest of the network.

    The clean pass holds n inputs (``fwd.pre[j]`` has n columns); the c
    perturbed columns of an origin are n equal runs, one per input, so column
    b of the run of input j is compared with clean input j (a run of columns
    against one clean column keeps numpy's inner loops long). Columns are laid out by origin layer, so at layer j
    the columns perturbed at layers i < j form a prefix that goes through W_j
    as one GEMM; the columns of origin j are then appended after it. Two
    preallocated buffers alternate as input and output.

    Args:
        net: the network.
        fwd: its clean forward pass over n inputs.
        perturbations: layer i -> array (n_i, c) added to z_i; c is a multiple of n, input slowest.

    Returns:
        layer i -> :class:`Moved` with one entry per column.
    """
    origins = sorted(perturbations)
    if not origins:
        return {}
    n = fwd.pre[0].shape[1] if fwd.pre[0].ndim == 2 else 1
    sizes = [perturbations[i].shape[1] for i in origins]
    starts = np.cumsum([0] + sizes)
    total = starts[-1]
    rows = max(w.shape[0] for w in net.weights)
    buf_in, buf_out = np.empty((rows, total)), np.empty((rows, total))
    flips = np.zeros(total, dtype=np.int64)
    differs = np.empty((rows, total), dtype=bool)
    active = 0  # columns in use, a prefix: the columns of origins <= j

    def runs(a: np.ndarray):
        """Each origin's columns in ``a`` (rows, active) as (rows, n, c / n) views, one run per input."""
        return [a[:, starts[k]:starts[k + 1]].reshape(a.shape[0], n, -1)
                for k in range(len(origins)) if starts[k + 1] <= a.shape[1]]

    for j in range(origins[0], net.depth + 1):
        z = fwd.pre[j - 1].reshape(-1, n)[:, :, None]  # (rows, n, 1): one clean column per input run
        out = buf_out[:z.shape[0]]
        if active:
            np.matmul(net.weights[j - 1], buf_in[:net.weights[j - 1].shape[1], :active], out=out[:, :active])
            if net.biases is not None:
                out[:, :active] += net.biases[j - 1][:, None]
        if j in perturbations:
            c = perturbations[j].shape[1]
            np.add(z, perturbations[j].reshape(z.shape[0], n, -1),
                   out=out[:, active:active + c].reshape(z.shape[0], n, -1))
            active += c
        if j < net.depth:
            d = differs[:z.shape[0], :active]
            np.greater(out[:, :active], 0.0, out=d)
            for run in runs(d):
                np.not_equal(run, z > 0, out=run)
            flips[:active] += d.sum(axis=0)
            np.maximum(out[:, :active], 0.0, out=out[:, :active])
            buf_in, buf_out = buf_out, buf_in
    moved = out[:, :active]
    argmax = moved.argmax(axis=0)
    for run in runs(moved):
        run -= z
    delta = np.linalg.norm(moved, axis=0)
    cols = [slice(starts[k], starts[k + 1]) for k in range(len(origins))]
    return {i: Moved(delta[c], flips[c], argmax[c]) for i, c in zip(origins, cols)}


def worst_case_bound(net: Network, fwd: Forward, x: np.ndarray, layer: int, size: float) -> np.ndarray:
    """The Lipschitz bound on ||v - v*|| for ratio 1 (it is linear in r), per input.

    ||eta||_2 * prod_{j != i} ||W_j||_2 * ||x*||, where ||eta||_2 is r ||W_i||_2
    for spectral scaling and at most r ||W_i||_F for Frobenius scaling. With
    biases, prod_{j < i} ||W_j||_2 ||x*|| is replaced by ||h_{i-1}||, which the
    product does not bound. The ||W_j||_2 are Lanczos estimates
    (:func:`pipeline.network.spectral_norm_estimate`), a fraction of a percent
    low at most; the bound exceeds measured changes by orders of magnitude.

    Args:
        x: the inputs as columns, (d, n); ``fwd`` is the clean pass over them.
        size: ||W_i|| in the noise's norm (exact), at least ||eta||_2 for ratio 1.

    Returns:
        The bound of each input, shape (n,).
    """
    s = net.spectral_norms
    before = np.prod(s[:layer - 1]) * np.linalg.norm(x, axis=0) if net.biases is None \
        else np.linalg.norm(fwd.post[layer - 1], axis=0)
    return size * before * np.prod(s[layer:])


@dataclasses.dataclass(frozen=True)
class LinearAnswer:
    """The first-order answer of one network at one layer i, per input (ratio 1, ||eta|| = ||W_i||).

    ``rms`` is the exact root mean square of ||J_i eta h_{i-1}|| over random
    eta (NaN where no closed form applies), ``worst`` the largest
    ||J_i eta h_{i-1}|| over eta of the same size, reached by the rank-one
    eta = size * u h_{i-1}^T / ||h_{i-1}|| whose pre-activation change
    ``direction`` (n_i, n) is size * ||h_{i-1}|| * u, u the top right
    singular vector of J_i.
    """

    rms: np.ndarray        # (n,)
    worst: np.ndarray      # (n,)
    direction: np.ndarray  # (n_i, n)


def jacobians(net: Network, fwd: Forward, layers) -> Iterator[tuple[int, np.ndarray]]:
    """(i, J_i) for the given layers, last first: J_i = dv/dz_i of every input, (n, k, n_i).

    One backward pass from the identity on the k outputs through W_j and the
    clean ReLU masks, J_i = J_{i+1} W_{i+1} D_i with J_L = I_k: every input's
    Jacobian in one GEMM per layer, O(n k m^2). A generator, so a caller that
    reduces each J_i at once holds one layer's worth.
    """
    n = fwd.output.shape[1]
    k = fwd.output.shape[0]
    J = np.broadcast_to(np.eye(k), (n, k, k)).copy()
    for i in range(net.depth, min(layers) - 1, -1):
        if i < net.depth:
            w = net.weights[i]  # W_{i+1}
            J = (J.reshape(n * k, -1) @ w).reshape(n, k, w.shape[1])
            J *= (fwd.pre[i - 1] > 0).T[:, None, :]
        if i in layers:
            yield i, J


def linear_answer(J: np.ndarray, h: np.ndarray, size: float, norm: str) -> LinearAnswer:
    """First-order change of layer i's perturbation for each input: J (n, k, n_i), h = h_{i-1} (n_in, n),
    size = ||W_i|| in the noise's ``norm``.

    For noise whose entries satisfy E[eta_ab eta_cd] = s^2 / (n_i n_{i-1}) [a=c][b=d]
    (any Frobenius-scaled uniform direction, and Rademacher scaled by the
    Frobenius norm, whose ||E||_F is the constant sqrt(n_i n_{i-1})),
    E||J eta h||^2 = s^2 ||J||_F^2 ||h||^2 / (n_i n_{i-1}). Spectral scaling
    divides by a random ||E||_2 that is not independent of E: no closed form,
    NaN. The worst case over ||eta|| <= s (Frobenius or spectral: the optimum is
    rank one, where both agree) is s ||J||_2 ||h||.
    """
    n_i, n_in = J.shape[2], h.shape[0]
    h_norm = np.linalg.norm(h, axis=0)
    fro = np.sqrt(np.einsum("nki,nki->n", J, J))
    rms = size * h_norm * fro / np.sqrt(n_i * n_in) if norm == "frobenius" else np.full(len(h_norm), np.nan)
    # top singular pair from the small k x k Gram matrix of each input
    vals, vecs = np.linalg.eigh(J @ J.transpose(0, 2, 1))
    sigma = np.sqrt(np.maximum(vals[:, -1], 0.0))
    u = np.einsum("nki,nk->ni", J, vecs[:, :, -1])  # J^T (left vector) = sigma * right vector
    with np.errstate(invalid="ignore", divide="ignore"):
        u = np.where(sigma[:, None] > 0, u / sigma[:, None], 0.0)
    # a fixed sign: the largest entry of each direction is positive
    u *= np.where(np.take_along_axis(u, np.abs(u).argmax(axis=1)[:, None], axis=1) < 0, -1.0, 1.0)
    return LinearAnswer(rms, size * sigma * h_norm, (u * (size * h_norm)[:, None]).T)


def margins(v: np.ndarray) -> np.ndarray:
    """Top-1 minus runner-up output per column of v (k, n); NaN when k = 1."""
    if v.shape[0] < 2:
        return np.full(v.shape[1], np.nan)
    top = np.partition(v, v.shape[0] - 2, axis=0)[-2:]
    return top[1] - top[0]


def measure_network(net: Network, x: np.ndarray, ratios: np.ndarray, layers: tuple[int, ...],
                    draws: int, distribution: str, norm: str, rng_for_layer,
                    labels: np.ndarray | None = None, with_bound: bool = True,
                    with_linear: bool = True) -> NetworkResult:
    """Measure one network at every (ratio, layer, input, draw).

    Every draw is one perturbed matrix applied to all inputs, so the
    accuracy of draw d is that of one real perturbed network. Layers beyond
    the network's depth are NaN. ``rng_for_layer(i)`` gives the noise stream
    of layer i; the same draws serve every ratio. The bound needs the spectral
    norm of every matrix; ``with_bound=False`` skips it (NaN), and
    ``with_linear=False`` the backward pass and the worst direction, which lets
    the benchmarks time the parts apart.

    Args:
        x: one input (d,) or n inputs (n, d).
        labels: class index per input, or None.
    """
    ratios = np.asarray(ratios, dtype=np.float64)
    X = np.atleast_2d(x).T  # (d, n): inputs as columns
    R, D, n = len(ratios), draws, X.shape[1]
    fwd = net.forward(X)
    clean_pred = fwd.output.argmax(axis=0)
    present = [i for i in layers if i <= net.depth]
    # ||W_i|| in the noise's norm, once per layer (an ARPACK run for spectral scaling)
    sizes = {i: matrix_norm(net.weights[i - 1], norm) for i in present}
    linear = {i: linear_answer(J, fwd.post[i - 1], sizes[i], norm)
              for i, J in (jacobians(net, fwd, present) if present and with_linear else ())}
    extra = 1 if linear else 0  # the worst direction's column
    perturbations = {}
    for i in present:
        u = pre_activation_noise(rng_for_layer(i), net.weights[i - 1], fwd.post[i - 1], D,
                                 distribution, norm, sizes[i])  # (n_i, draw, input)
        if linear:  # the worst direction rides along as one more draw, the last
            u = np.concatenate([u, linear[i].direction[:, None, :]], axis=1)
        # columns (input, ratio, draw): one run per input, as propagate wants
        perturbations[i] = (u.transpose(0, 2, 1)[:, :, None, :] * ratios[None, None, :, None]).reshape(
            -1, n * R * (D + extra))
    moved = propagate(net, fwd, perturbations)
    hidden = sum(w.shape[0] for w in net.weights[:-1])
    shape = (R, len(layers), n, D)
    delta, flips, changed = (np.full(shape, np.nan) for _ in range(3))
    accuracy = np.full((R, len(layers), D), np.nan)
    bound, linear_rms, worst_linear, worst_realised = (np.full((R, len(layers), n), np.nan) for _ in range(4))
    for col, i in enumerate(layers):
        if i not in moved:
            continue
        mv = moved[i]

        def cells(a: np.ndarray) -> np.ndarray:  # columns (input, ratio, draw [+ worst]) -> (ratio, input, draw)
            return a.reshape(n, R, D + extra).transpose(1, 0, 2)[:, :, :D]

        delta[:, col] = cells(mv.delta)
        if linear:
            worst_realised[:, col] = mv.delta.reshape(n, R, D + 1)[:, :, D].T
            linear_rms[:, col] = ratios[:, None] * linear[i].rms[None, :]
            worst_linear[:, col] = ratios[:, None] * linear[i].worst[None, :]
        flips[:, col] = cells(mv.flips / hidden if hidden else 0.0 * mv.flips)
        pred = cells(mv.argmax)
        changed[:, col] = pred != clean_pred[:, None]
        if labels is not None:
            accuracy[:, col] = (pred == labels[:, None]).mean(axis=1)
        if with_bound:
            bound[:, col] = ratios[:, None] * worst_case_bound(net, fwd, X, i, sizes[i])[None, :]
    clean_accuracy = float((clean_pred == labels).mean()) if labels is not None else np.nan
    return NetworkResult(delta, flips, changed, accuracy, bound, linear_rms, worst_linear, worst_realised,
                         np.linalg.norm(fwd.output, axis=0), margins(fwd.output), clean_accuracy)


def measure_block(spec: Spec, L: int, m: int, seeds: tuple[int, ...]) -> BlockResult:
    """Measure the networks (L, m, seed) for ``seeds``: every ratio, layer and draw.

    Each network's numbers depend only on the spec and (L, m, seed): the
    weights and every noise stream are seeded from random_seed and those
    coordinates, never from the block. BLAS runs single-threaded here,
    because a multi-threaded GEMM splits its sums differently and would make
    the last bits depend on the machine's thread count.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return _measure_block(spec, L, m, seeds)


def _measure_block(spec: Spec, L: int, m: int, seeds: tuple[int, ...]) -> BlockResult:
    x, labels = make_inputs(spec), make_labels(spec)
    g, nz = spec.grid, spec.noise
    results = []
    for seed in seeds:
        net = build_network(spec, L, m, seed)
        results.append(measure_network(
            net, x, np.array(g.ratio), g.layer, nz.draws, nz.distribution, nz.norm,
            lambda i, seed=seed: stream(spec, NOISE_STREAM, L, m, seed, i), labels))
    return BlockResult.stack(results)
