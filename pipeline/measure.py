"""The measurement kernel: every (ratio, layer, draw) of every network in a block.

Plain numpy, no Dask, no zarr. Layers before the perturbed one are not rerun:
the clean pass is kept, the perturbation enters at layer i as z_i + eta @ h_{i-1},
and from there the perturbed columns travel through the remaining layers as
one matrix product. Columns perturbed at different layers share every later
weight matrix, so at layer j the columns of all origins i < j go through W_j
in a single GEMM.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from threadpoolctl import threadpool_limits

from .network import NOISE_STREAM, Forward, Network, build_network, make_input, stream
from .noise import matrix_norm, pre_activation_noise
from .spec import Spec


@dataclasses.dataclass(frozen=True)
class NetworkResult:
    """Measurements on one network; axes (ratio, layer, draw) as in the store."""

    delta_norm: np.ndarray     # (ratio, layer, draw)
    flip_fraction: np.ndarray  # (ratio, layer, draw)
    bound: np.ndarray          # (ratio, layer)
    output_norm: float


@dataclasses.dataclass(frozen=True)
class BlockResult:
    """Measurements on a block of seeds, in store order (ratio, layer, seed, draw)."""

    delta_norm: np.ndarray     # (ratio, layer, seed, draw)
    flip_fraction: np.ndarray  # (ratio, layer, seed, draw)
    bound: np.ndarray          # (ratio, layer, seed)
    output_norm: np.ndarray    # (seed,)


def propagate(net: Network, fwd: Forward, perturbations: dict[int, np.ndarray]
              ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Push pre-activation perturbations through the rest of the network.

    Columns are laid out by origin layer, so at layer j the columns perturbed
    at layers i < j form a prefix that goes through W_j as one GEMM; the
    columns of origin j are then appended after it. Two preallocated buffers
    alternate as input and output.

    Args:
        net: the network.
        fwd: its clean forward pass.
        perturbations: layer i -> array (n_i, c) of perturbations added to z_i.

    Returns:
        layer i -> (||v' - v|| per column, number of hidden units whose ReLU
        state differs from the clean pass, per column).
    """
    origins = sorted(perturbations)
    if not origins:
        return {}
    sizes = [perturbations[i].shape[1] for i in origins]
    total = sum(sizes)
    rows = max(w.shape[0] for w in net.weights)
    buf_in, buf_out = np.empty((rows, total)), np.empty((rows, total))
    flips = np.zeros(total, dtype=np.int64)
    differs = np.empty((rows, total), dtype=bool)
    active = 0  # columns in use, a prefix
    for j in range(origins[0], net.depth + 1):
        z = fwd.pre[j - 1]
        n = z.shape[0]
        out = buf_out[:n]
        if active:
            np.matmul(net.weights[j - 1], buf_in[:net.weights[j - 1].shape[1], :active], out=out[:, :active])
            if net.biases is not None:
                out[:, :active] += net.biases[j - 1][:, None]
        if j in perturbations:
            c = perturbations[j].shape[1]
            np.add(z[:, None], perturbations[j], out=out[:, active:active + c])
            active += c
        if j < net.depth:
            d = differs[:n, :active]
            np.greater(out[:, :active], 0.0, out=d)
            np.not_equal(d, (z > 0)[:, None], out=d)
            flips[:active] += d.sum(axis=0)
            np.maximum(out[:, :active], 0.0, out=out[:, :active])
            buf_in, buf_out = buf_out, buf_in
    out[:, :active] -= z[:, None]
    delta = np.linalg.norm(out[:, :active], axis=0)
    result, start = {}, 0
    for i, c in zip(origins, sizes):
        result[i] = (delta[start:start + c], flips[start:start + c])
        start += c
    return result


def worst_case_bound(net: Network, fwd: Forward, x: np.ndarray, layer: int, norm: str) -> float:
    """The Lipschitz bound on ||v - v*|| for ratio 1 (it is linear in r).

    ||eta||_2 * prod_{j != i} ||W_j||_2 * ||x*||, where ||eta||_2 is r ||W_i||_2
    for spectral scaling and at most r ||W_i||_F for Frobenius scaling. With
    biases, prod_{j < i} ||W_j||_2 ||x*|| is replaced by ||h_{i-1}||, which the
    product does not bound.
    """
    s = net.spectral_norms
    eta = s[layer - 1] if norm == "spectral" else matrix_norm(net.weights[layer - 1], "frobenius")
    before = np.prod(s[:layer - 1]) * np.linalg.norm(x) if net.biases is None \
        else np.linalg.norm(fwd.post[layer - 1])
    return float(eta * before * np.prod(s[layer:]))


def measure_network(net: Network, x: np.ndarray, ratios: np.ndarray, layers: tuple[int, ...],
                    draws: int, distribution: str, norm: str, rng_for_layer,
                    with_bound: bool = True) -> NetworkResult:
    """Measure one network at every (ratio, layer, draw).

    Layers beyond the network's depth are NaN. ``rng_for_layer(i)`` gives the
    noise stream of layer i; the same draws serve every ratio. The bound needs
    the spectral norm of every matrix; ``with_bound=False`` skips it (NaN),
    which lets the benchmark time the perturbation kernel alone.
    """
    ratios = np.asarray(ratios, dtype=np.float64)
    R, D = len(ratios), draws
    fwd = net.forward(x)
    present = [i for i in layers if i <= net.depth]
    perturbations = {}
    for i in present:
        u = pre_activation_noise(rng_for_layer(i), net.weights[i - 1], fwd.post[i - 1], D,
                                 distribution, norm)
        perturbations[i] = (u[:, None, :] * ratios[None, :, None]).reshape(u.shape[0], R * D)
    moved = propagate(net, fwd, perturbations)
    hidden = sum(w.shape[0] for w in net.weights[:-1])
    delta = np.full((R, len(layers), D), np.nan)
    flips = np.full((R, len(layers), D), np.nan)
    bound = np.full((R, len(layers)), np.nan)
    for col, i in enumerate(layers):
        if i in moved:
            d, f = moved[i]
            delta[:, col] = d.reshape(R, D)
            flips[:, col] = f.reshape(R, D) / hidden if hidden else 0.0
            if with_bound:
                bound[:, col] = ratios * worst_case_bound(net, fwd, x, i, norm)
    return NetworkResult(delta, flips, bound, float(np.linalg.norm(fwd.output)))


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
    x = make_input(spec)
    g, nz = spec.grid, spec.noise
    results = []
    for seed in seeds:
        net = build_network(spec, L, m, seed)
        results.append(measure_network(
            net, x, np.array(g.ratio), g.layer, nz.draws, nz.distribution, nz.norm,
            lambda i, seed=seed: stream(spec, NOISE_STREAM, L, m, seed, i)))
    return BlockResult(
        delta_norm=np.stack([r.delta_norm for r in results], axis=2),
        flip_fraction=np.stack([r.flip_fraction for r in results], axis=2),
        bound=np.stack([r.bound for r in results], axis=2),
        output_norm=np.array([r.output_norm for r in results]),
    )
