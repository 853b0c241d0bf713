"""The measurement kernel: every (ratio, layer, draw) of every network in a block.

Plain numpy, no Dask, no zarr. Layers before the perturbed one are not rerun:
the clean pass is kept, the perturbation enters at layer i as z_i + eta @ h_{i-1},
and from there the perturbed columns travel through the remaining layers in
matrix products (GEMM), holding their difference from the clean pass. With n
inputs, one eta per draw perturbs all of them. The columns go in pieces of a
few draws (every ratio and input of them), each through W_j as one GEMM and
through the activation while in cache (:func:`run_pass`, which fetches each
weight matrix once per pass; with the linear answer a network takes three
passes: clean, backward, perturbed). Draws run in batches of whole pieces
(:func:`network_batches`), and the numbers do not depend on the batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from .allocator import reuse_freed_memory
from .network import (NOISE_STREAM, Forward, Network, build_network, make_inputs, make_labels, spectral_norm_estimate,
                      stream)
from .noise import LayerNoise, matrix_norm
from . import config
from .schema import TOGETHER
from .sizes import depth_first as goes_depth_first, kernel_batch, together_draws_per_pass
from .spec import Spec
from .together import TogetherLinear, TogetherNoise, together_bound, together_pass


@dataclasses.dataclass(frozen=True)
class NetworkResult:
    """Measurements on one network; axes (ratio, layer, input, draw) as in the store."""

    delta_norm: np.ndarray            # (ratio, layer, input, draw)
    linear_change: np.ndarray         # (ratio, layer, input, draw); ||J_i eta h_{i-1}||, NaN without the linear answer
    linear_pred_changed: np.ndarray   # (ratio, layer, input, draw); argmax(v + J_i eta h_{i-1}) != argmax(v), 0/1
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
PER_CELL = ("delta_norm", "linear_change", "linear_pred_changed", "hidden_flip_fraction", "pred_changed", "accuracy",
            "bound", "linear_rms", "worst_linear", "worst_realised")  # fields with (ratio, layer) in front


@dataclasses.dataclass(frozen=True)
class BlockResult:
    """Measurements on a block of seeds: each field of :class:`NetworkResult` with a seed
    axis after (ratio, layer), or first for per-network fields, as in the store."""

    delta_norm: np.ndarray            # (ratio, layer, seed, input, draw)
    linear_change: np.ndarray         # (ratio, layer, seed, input, draw)
    linear_pred_changed: np.ndarray   # (ratio, layer, seed, input, draw)
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
    flips: np.ndarray   # hidden units whose state (pre-activation > 0) differs from the clean pass
    argmax: np.ndarray  # the perturbed network's predicted class


class Clock:
    """Adds the seconds spent in each phase to ``into`` (a dict); does nothing without one."""

    def __init__(self, into: dict[str, float] | None = None):
        self.into = into

    @contextlib.contextmanager
    def __call__(self, phase: str):
        with self.moved(None, phase):
            yield

    @contextlib.contextmanager
    def moved(self, source: str | None, phase: str):
        """The seconds of the body go to ``phase``; inside ``source``'s timing, they are taken from it."""
        if self.into is None:
            yield
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.into[phase] = self.into.get(phase, 0.0) + seconds
            if source is not None:
                self.into[source] = self.into.get(source, 0.0) - seconds


Fill = Callable[[np.ndarray, int, int], None]
Visit = Callable[[int, np.ndarray, np.ndarray], "np.ndarray | Fill | None"]


def run_pass(net: Network, clean: np.ndarray | Forward, columns: dict[int, int | Sequence[int]], visit: Visit,
             clock: Clock = Clock(), workspace: dict | None = None) -> tuple[Forward, dict[int, Moved]]:
    """One pass through the network's layers: perturbed columns, and the clean pass unless given.

    Each layer's matrix is fetched once (drawn, for a drawn network) and
    dropped after use. At layer j, ``visit(j, W_j, h_{j-1})`` may return the
    perturbation of z_j for the columns that start there, (n_j, columns):
    runs of the n inputs, input fastest; or a function ``fill(out, start,
    stop)`` that writes columns [start, stop) of it into ``out``, called
    piece by piece (the columns are then never all in memory at once). The columns hold differences from
    the clean pass, not perturbed values: the change delta_j = z'_j - z_j
    goes through W_{j+1} (biases cancel) and through the activation as
    f(z + delta) - f(z), for ReLU max(delta + min(z, 0), -max(z, 0)) and for
    the others the identities of :mod:`pipeline.activations`, which never
    subtract two nearly equal numbers. So the rounding error of ||v' - v||
    is relative to the change itself, whatever the ratio: what makes float32
    accurate. Columns are laid out by origin, so at layer j the columns of
    origins i < j are a prefix.

    Each layer works through its columns piece by piece: the product with
    W_j, the activation's difference and the flip counts of a piece are done
    while it is in cache, and the clean values a layer needs are laid out
    once, tiled to a piece's width, so that every operation runs along the
    columns whatever n. A column's numbers depend on the shape of the
    product it is in and its place there (BLAS kernels round by shape), so
    a caller that wants a column's numbers not to depend on the others
    gives the pieces explicitly.

    Args:
        clean: the inputs as columns (d, n), or their clean pass when already known
            (then the pass starts at the first origin).
        columns: origin layer -> its number of columns, or the lengths of its pieces
            (each a multiple of n); by default pieces of about PIECE_BYTES.
        visit: called at every layer the pass goes through.
        workspace: a dict that keeps the column buffers from one pass to the next (a pass per batch):
            fresh memory costs a page fault per page at its first use, as much as the work on it.

    Returns:
        The clean pass, and origin layer -> :class:`Moved` with one entry per column.
    """
    origins = sorted(columns)
    given = isinstance(clean, Forward)
    n = (clean.output if given else clean).shape[1]
    first = origins[0] if given and origins else 1
    rows = max([s[0] for s in net.shapes[first - 1:]], default=0)
    default = max(1, config.PIECE_BYTES // (n * max(rows, 1) * np.dtype(net.dtype).itemsize)) * n
    pieces = {i: [int(p) for p in c] if isinstance(c, Sequence) else
              [min(default, c - s) for s in range(0, c, default)] for i, c in columns.items()}
    counts = {i: sum(p) for i, p in pieces.items()}
    starts = dict(zip(origins, (int(s) for s in np.cumsum([0] + [counts[i] for i in origins]))))
    total = sum(counts.values())
    widest = max([p for ps in pieces.values() for p in ps], default=0)
    # each piece is a block of its own, (units, columns) for every layer: its rows are short and close
    # together. A piece of one column gets two: a product with one column is a GEMV, whose rounding differs
    # from a GEMM's, and a batch of one draw must give the numbers of any other batch.
    # Depth first when the network holds its matrices and they fit a share of a last-level cache
    # (sizes.depth_first): each piece goes through all its layers in a pair of piece-sized buffers, in cache.
    # A larger network, and one that draws a matrix again at each fetch, goes layer by layer, every piece of a
    # layer before the next, in buffers of the whole batch (each piece a block of its own).
    depth_first = goes_depth_first(net.shapes, net.dtype, getattr(net, "holds_weights", True))
    spans = [(c0, c1, max(c1 - c0, 2)) for c0, c1 in _pieces(starts, pieces, max(origins, default=0))]
    if depth_first:
        offset = {c0: 0 for c0, _, _ in spans}
        size = rows * max([width for _, _, width in spans], default=0)
    else:
        offset = dict(zip((c0 for c0, _, _ in spans), np.cumsum([0] + [rows * width for _, _, width in spans])))
        size = rows * sum(width for _, _, width in spans)
    buf_in, buf_out = (_buffer(workspace, name, size, net.dtype) for name in ("in", "out"))
    scratch = np.empty((rows, widest), dtype=bool)
    delta, argmax = np.empty(total), np.empty(total, dtype=np.int64)  # ||v' - v|| and argmax v' per column
    flips = np.zeros(total, dtype=np.int64)
    alive = np.ones(total, dtype=bool)  # some unit of the perturbed layer is on
    pre, post = (list(clean.pre), list(clean.post)) if given else ([], [])
    h = None if given else np.asarray(clean, net.dtype)
    layers = {}  # j -> what the step of layer j needs (depth first: every layer's, until the pieces are done)

    def step(j: int, c0: int, c1: int, src: np.ndarray, dst: np.ndarray, new: bool) -> None:
        """Layer j on the columns [c0, c1): their product with W_j from ``src`` (or, at their origin, their
        perturbation), then the activation's difference and the flips, or at the output the change's
        norm and the prediction; into ``dst``."""
        w, b, z, act, cols, active, tiles = layers[j]
        (n_out, n_in), cc = w.shape, c1 - c0
        width, at = max(cc, 2), offset[c0]
        block = dst[at:at + n_out * width].reshape(n_out, width)
        if not new:
            np.matmul(w, src[at:at + n_in * width].reshape(n_in, width), out=block)
            if not alive[c0:c1].all():
                # every unit off: z' is exactly b_j (or 0), so delta = b_j - z_j; the GEMM's rounding
                # would leave z + delta a few ulps from b_j, and a tie at 0 would go either way
                dead = np.flatnonzero(~alive[c0:c1])
                block[:, dead] = (0 if b is None else b[:, None]) - z[:, (c0 + dead) % n]
        elif callable(cols):
            with clock.moved("kernel", "noise"):
                cols(block[:, :cc], c0 - active, c1 - active)
        else:
            block[:, :cc] = cols[:, c0 - active:c1 - active]
        if new and width > cc:  # a piece of one column: its second column zero, never what the buffer held
            block[:, cc:] = 0  # (freed memory reused may hold infinities, and the GEMM would warn of them)
        if act is None:  # the output's change: its norm and the perturbed prediction, while in cache
            moved = block[:, :cc].astype(np.float64, copy=False)  # (the block is not needed after this)
            delta[c0:c1] = np.linalg.norm(moved, axis=0)
            moved += tiles[:, :cc]
            argmax[c0:c1] = moved.argmax(axis=0)
            return
        t, d = block[:, :cc], scratch[:n_out, :cc]
        tiled, zneg, zcut, on = tiles
        if act.zero_below:
            # relu(z + delta) - relu(z); a unit is on afterwards iff delta + min(z, 0) > -max(z, 0)
            t += zneg[:, :cc]
            np.greater(t, zcut[:, :cc], out=d)
            np.any(d, axis=0, out=alive[c0:c1])
            np.not_equal(d, on[:, :cc], out=d)
            np.maximum(t, zcut[:, :cc], out=t)
        else:
            # f(z + delta) - f(z) by the activation's own cancellation-free formula; a unit's state
            # is the sign of its pre-activation, z + delta > 0 iff delta > -z (an exact comparison)
            alive[c0:c1] = True
            np.greater(t, zcut[:, :cc], out=d)
            np.not_equal(d, on[:, :cc], out=d)
            t[...] = act.difference(tiled[:, :cc], t)
        # bytes summed into 16 bits: several times faster than numpy's bool sum, exact below 65536 rows
        flips[c0:c1] += np.add.reduce(d.view(np.uint8), axis=0, dtype=np.uint16 if n_out < 2**16 else np.int64)

    active = 0  # columns in use: those of origins <= j
    for j in range(first, net.depth + 1):
        with clock("weights"):
            w, b = net.params(j)
        if not given:
            with clock("clean"):
                post.append(h)
                z = w @ h
                if b is not None:
                    z += b[:, None]
                pre.append(z)
                if j < net.depth:
                    h = net.activations[j - 1].forward(z)
        cols = visit(j, w, post[j - 1])
        with clock("kernel"):
            z, new = pre[j - 1], counts[j] if cols is not None else 0
            if not active + new:
                continue
            act = net.activations[j - 1] if j < net.depth else None
            if act is None:  # the clean output, tiled
                tiles = np.tile(z.astype(np.float64), (1, widest // n))
            else:  # the clean values of a piece, tiled: n inputs, input fastest
                tiled = np.tile(z, (1, widest // n))
                tiles = (tiled, np.minimum(tiled, 0) if act.zero_below else None,
                         -np.maximum(tiled, 0) if act.zero_below else -tiled, tiled > 0)
            layers[j] = (w, b, z, act, cols, active, tiles)
            if not depth_first:
                for c0, c1 in _pieces(starts, pieces, j):
                    step(j, c0, c1, buf_in, buf_out, c0 >= active)
                if j < net.depth:
                    buf_in, buf_out = buf_out, buf_in
                del layers[j]
            active += new
        del w, b
    if depth_first:
        with clock("kernel"):
            for i in origins:
                for c0, c1 in _pieces(starts, {i: pieces[i]}, i):
                    src, dst = buf_in, buf_out
                    for j in range(i, net.depth + 1):
                        step(j, c0, c1, src, dst, j == i)
                        src, dst = dst, src
        layers.clear()
    fwd = Forward(tuple(pre), tuple(post))
    if not active:
        return fwd, {}
    return fwd, {i: Moved(delta[s], flips[s], argmax[s])
                 for i in origins for s in [slice(starts[i], starts[i] + counts[i])]}


def _buffer(workspace: dict | None, name: str, size: int, dtype) -> np.ndarray:
    """``size`` elements of ``dtype``: the workspace's buffer ``name`` when it is large enough, else a new one
    (kept there). Its contents are whatever the last pass left."""
    have = None if workspace is None else workspace.get(name)
    if have is None or have.size < size or have.dtype != dtype:
        have = np.empty(size, dtype)
        if workspace is not None:
            workspace[name] = have
    return have[:size]


def _pieces(starts: dict[int, int], pieces: dict[int, list[int]], j: int) -> Iterator[tuple[int, int]]:
    """Column ranges [c0, c1) of the pieces of the origins <= j."""
    for i in sorted(pieces):
        if i > j:
            break
        ends = starts[i] + np.cumsum(pieces[i])
        yield from zip([starts[i], *ends[:-1]], ends)


def propagate(net: Network, fwd: Forward, perturbations: dict[int, np.ndarray],
              clock: Clock = Clock()) -> dict[int, Moved]:
    """Push given pre-activation perturbations through the rest of the network.

    Args:
        fwd: the clean pass over n inputs.
        perturbations: layer i -> array (n_i, c) added to z_i; c is a multiple of n, input slowest
            (run_pass's input-fastest layout is this function's business).

    Returns:
        layer i -> :class:`Moved` with one entry per column.
    """
    if not perturbations:
        return {}
    columns = {i: p.shape[1] for i, p in perturbations.items()}
    if fwd.output.ndim == 1:  # the pass of one input given as a vector
        fwd = Forward(*(tuple(a[:, None] for a in arrays) for arrays in (fwd.pre, fwd.post)))
    n = fwd.output.shape[1]

    def visit(j: int, w: np.ndarray, h: np.ndarray) -> np.ndarray | None:
        """run_pass's layout: input fastest."""
        p = perturbations.get(j)
        return None if p is None else p.reshape(p.shape[0], n, -1).transpose(0, 2, 1).reshape(p.shape[0], -1)

    def slowest(a: np.ndarray) -> np.ndarray:  # input fastest -> input slowest
        return a.reshape(-1, n).T.ravel()

    return {i: Moved(slowest(mv.delta), slowest(mv.flips), slowest(mv.argmax))
            for i, mv in run_pass(net, fwd, columns, visit, clock)[1].items()}


def worst_case_bound(norms: np.ndarray, fwd: Forward, x: np.ndarray, layer: int, size: float,
                     net: Network) -> np.ndarray:
    """The Lipschitz bound on ||v - v*|| for ratio 1 (it is linear in r), per input.

    ||eta||_2 * prod_{j != i} ||W_j||_2 * prod_j Lip(f_j) * ||x*||, where ||eta||_2 is
    r ||W_i||_2 for spectral scaling and at most r ||W_i||_F for Frobenius
    scaling, and Lip(f) = 1 for ReLU (the product runs over the activations
    the change passes through, and those before layer i). With biases, or an
    activation before layer i with f(0) != 0 (sigmoid), the part before layer i
    is ||h_{i-1}|| itself, which the product does not bound. The ||W_j||_2
    (``norms``) are Lanczos estimates
    (:func:`pipeline.network.spectral_norm_estimate`), a fraction of a percent
    low at most; the bound exceeds measured changes by orders of magnitude.

    Args:
        x: the inputs as columns, (d, n); ``fwd`` is the clean pass over them.
        size: ||W_i|| in the noise's norm (exact), at least ||eta||_2 for ratio 1.

    Returns:
        The bound of each input, shape (n,).
    """
    lip = np.array([a.lipschitz for a in net.activations])  # f_1 .. f_{L-1}
    if net.has_biases or not all(a.zero_at_zero for a in net.activations[:layer - 1]):
        before = np.linalg.norm(fwd.post[layer - 1].astype(np.float64), axis=0)
    else:
        before = np.prod(norms[:layer - 1]) * np.prod(lip[:layer - 1]) * np.linalg.norm(x, axis=0)
    return size * before * np.prod(norms[layer:]) * np.prod(lip[layer - 1:])


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


def jacobians(net: Network, fwd: Forward, layers, clock: Clock = Clock()) -> Iterator[tuple[int, np.ndarray]]:
    """(i, J_i) for the given layers, last first: J_i = dv/dz_i of every input, (n, k, n_i).

    One backward pass from the identity on the k outputs through W_j and the
    clean pass's slopes D_i = diag(f_i'(z_i)) (ReLU's 0/1 masks),
    J_i = J_{i+1} W_{i+1} D_i with J_L = I_k: every input's
    Jacobian in one GEMM per layer, O(n k m^2), fetching (for a drawn network,
    drawing again) one matrix at a time. A generator, so a caller that
    reduces each J_i at once holds one layer's worth.
    """
    n, k = fwd.output.shape[1], fwd.output.shape[0]
    J = np.broadcast_to(np.eye(k, dtype=net.dtype), (n, k, k)).copy()
    for i in range(net.depth, min(layers) - 1, -1):
        if i < net.depth:
            with clock("weights"):
                w = net.params(i + 1)[0]
            with clock("linear"):
                J = (J.reshape(n * k, -1) @ w).reshape(n, k, w.shape[1])
                # each input's slopes contiguous (a strided operand makes this product several times slower)
                J *= np.ascontiguousarray(net.activations[i - 1].derivative(fwd.pre[i - 1]).T)[:, None, :]
            del w
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
    J, h = J.astype(np.float64, copy=False), h.astype(np.float64, copy=False)  # a few columns: float64 is cheap
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


PAD = config.FIRST_ORDER_PAD  # elements added to rows a multiple of 512 bytes long before they are read by column


def first_order(J: np.ndarray, u: np.ndarray) -> np.ndarray:
    """J_i eta h_{i-1} of every (input, draw): the first-order change of the output, in float64.

    Args:
        J: the Jacobians dv/dz_i of the inputs, (n, k, n_i).
        u: the perturbations eta h_{i-1} of z_i, (n_i, draw, n) as :class:`pipeline.noise.LayerNoise` gives them.

    Returns:
        Shape (n, k, draw). O(k n_i) per (input, draw): one batched product of each input's J with its columns.
    """
    return first_order_by_input(J, np.ascontiguousarray(u.transpose(2, 1, 0)))


def first_order_by_input(J: np.ndarray, ut: np.ndarray) -> np.ndarray:
    """:func:`first_order` of perturbations laid out by input, ``ut`` (n, draw, n_i) with each input's
    (draw, n_i) block contiguous: the product J_n U_n of each input takes U_n as the transpose of that block,
    which BLAS reads as it is (a strided operand would keep numpy's matmul off BLAS)."""
    draws = ut.shape[1]
    if draws == 1:  # two columns: one would be a GEMV, whose rounding differs, and batches must not matter
        ut = np.concatenate([ut, np.zeros_like(ut)], axis=1)
    return np.matmul(J, ut.transpose(0, 2, 1)).astype(np.float64, copy=False)[:, :, :draws]


def crossing_threshold(v: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The smallest s > 0 at which argmax(v + s d) leaves the clean class (inf where it never does).

    v + s d predicts another class than c = argmax v iff some j has d_j > d_c and
    s > (v_c - v_j) / (d_j - d_c): one O(k) pass per direction serves every ratio.

    Args:
        v: clean outputs, (k, n); d: directions, (n, k, draw).

    Returns:
        Shape (n, draw); inf for k = 1.
    """
    n = v.shape[1]
    clean = v.argmax(axis=0)
    margin = (v[clean, np.arange(n)][None, :] - v).T  # (n, k), >= 0
    rise = d - d[np.arange(n), clean][:, None, :]  # (n, k, draw)
    with np.errstate(divide="ignore", invalid="ignore"):
        at = np.where(rise > 0, margin[:, :, None] / rise, np.inf)
    return at.min(axis=1)


def margins(v: np.ndarray) -> np.ndarray:
    """Top-1 minus runner-up output per column of v (k, n); NaN when k = 1."""
    if v.shape[0] < 2:
        return np.full(v.shape[1], np.nan)
    top = np.partition(v, v.shape[0] - 2, axis=0)[-2:]
    return top[1] - top[0]


def measure_network(net: Network, x: np.ndarray, ratios: np.ndarray, layers: tuple[int, ...],
                    draws: int, distribution: str, norm: str, rng_for_layer,
                    labels: np.ndarray | None = None, with_bound: bool = True,
                    with_linear: bool = True, timings: dict[str, float] | None = None,
                    batch_draws: int | None = None, piece_draws: int | None = None,
                    biases: bool = False) -> NetworkResult:
    """Measure one network at every (ratio, layer, input, draw), in the network's precision.

    The draws of all batches of :func:`network_batches`, each written into
    its place: the numbers do not depend on ``batch_draws`` (to the last
    bit, in either precision: a batch is whole pieces, see ``piece_draws``
    there).
    """
    joined = None
    for part in network_batches(net, x, ratios, layers, draws, distribution, norm, rng_for_layer, labels,
                                with_bound, with_linear, timings, batch_draws, piece_draws, biases):
        if joined is None:
            first, start = part, 0
            joined = {name: np.empty(getattr(part, name).shape[:-1] + (draws,)) for name in PER_DRAW}
        b = part.delta_norm.shape[-1]
        for name in PER_DRAW:
            joined[name][..., start:start + b] = getattr(part, name)
        start += b
    return dataclasses.replace(first, **joined)


PER_DRAW = ("delta_norm", "linear_change", "linear_pred_changed", "hidden_flip_fraction", "pred_changed",
            "accuracy")  # fields with draw last


def network_batches(net: Network, x: np.ndarray, ratios: np.ndarray, layers: tuple[int, ...],
                    draws: int, distribution: str, norm: str, rng_for_layer,
                    labels: np.ndarray | None = None, with_bound: bool = True,
                    with_linear: bool = True, timings: dict[str, float] | None = None,
                    batch_draws: int | None = None, piece_draws: int | None = None,
                    biases: bool = False, with_first_order: bool = True) -> Iterator[NetworkResult]:
    """Measure one network batch of draws after batch: a :class:`NetworkResult` per batch, whose
    per-draw fields hold that batch's draws (the others are the same in every batch).

    Every draw is one perturbed matrix applied to all inputs, so the
    accuracy of draw d is that of one real perturbed network. Layers beyond
    the network's depth are NaN. ``rng_for_layer(i)`` gives the noise stream
    of layer i (:class:`pipeline.noise.LayerNoise` draws from it batch after
    batch, the same draws whatever the batches); the same draws serve every ratio.
    A batch holds ``batch_draws`` draws, by default as many as fit the budget
    of :func:`pipeline.sizes.draws_per_batch`: the working memory is that of a
    batch, whatever the number of draws. The kernel multiplies the columns of
    ``piece_draws`` draws together (by default
    :func:`pipeline.sizes.draws_per_piece`) and takes the first-order changes
    a chunk of draws at a time (:func:`pipeline.sizes.first_order_draws`), and
    a batch is whole pieces and chunks (``batch_draws`` is rounded down to
    them, to one at least; :func:`pipeline.sizes.kernel_batch`): BLAS rounds
    a column by the shape of the product it is in, so pieces and chunks that
    do not depend on the batch make the numbers not depend on it.

    Without the linear answer, the first batch's pass through the layers
    computes the clean pass, the bound's spectral norms, the noise and the
    perturbed columns, fetching each matrix once. The linear answer needs a
    backward pass, which needs the clean pass: then the clean pass (with the
    norms) comes first, the backward pass next, and the perturbed columns
    last, where the worst direction of each layer rides along with the first
    batch as one more draw. A drawn network that does not keep its weights
    draws them again for each pass (each batch is one pass).
    ``with_bound=False`` skips the bound (NaN), ``with_linear=False`` the
    linear answer and worst direction, and ``with_first_order=False`` every
    draw's first-order change (NaN; only the control variate reads them, and
    they cost a product per input and chunk of draws); ``timings`` (a dict) receives the
    seconds spent per phase: weights, clean, noise, kernel, bound, linear.

    Layer :data:`pipeline.schema.TOGETHER` (0) in ``layers`` asks for the cells
    with noise in every layer at once (:mod:`pipeline.together`), drawn from
    ``rng_for_layer(0)``; ``biases`` perturbs the biases there too. They need
    the clean pass first, as the linear answer does.

    Args:
        x: one input (d,) or n inputs (n, d).
        labels: class index per input, or None.
    """
    reuse_freed_memory()  # the batch arrays reused, not faulted in afresh at every piece (pipeline/allocator.py)
    clock = Clock(timings)
    ratios = np.asarray(ratios, dtype=np.float64)
    X = np.atleast_2d(x).T  # (d, n): inputs as columns
    R, n = len(ratios), X.shape[1]
    present = [i for i in layers if 1 <= i <= net.depth]
    together = TOGETHER in layers and net.depth >= 1
    with_linear = with_linear and bool(present or together)
    smooth = any(not a.piecewise_linear for a in net.activations)
    # the batch: whole pieces (the products) and whole first-order chunks, both powers of two
    with_first_order = with_first_order and with_linear
    default, piece, chunk = kernel_batch(net.shapes, n, R, len(present), net.dtype, smooth,
                                         goes_depth_first(net.shapes, net.dtype, net.holds_weights),
                                         draws, with_first_order)
    piece = piece_draws or piece
    unit = max(piece, chunk)
    batch_draws = max(1, (default if batch_draws is None else batch_draws) // unit) * unit
    # the together cells' passes: a power of two that divides the piece (a power of two too)
    per_pass = min(piece, together_draws_per_pass(net.shapes, n, R, net.dtype,
                                                  distribution == "rademacher" or norm == "spectral"))
    sizes, norms, linear, sources, bias_sizes = {}, np.full(net.depth, np.nan), {}, {}, {}
    # J_i of each layer; this batch's first-order changes at ratio 1, (draw, input), and first-order prediction
    # changes, (ratio, draw, input), chunk by chunk; the clean output
    jac, firsts, crossings, clean_output = {}, {}, {}, None
    # The noise of the draws still waiting for their first-order changes, laid out by input (input, draw, n_i)
    # as each piece's noise arrives (it is in cache then), one layer's at a time (a layer's last piece of a
    # batch takes them all): ``waiting`` of them in ``buffer`` (set once J_i is known). At most a chunk, or a
    # piece when larger; a chunk less one draw and a piece when the pieces do not divide the chunk (only pieces
    # a caller gives: the default ones are powers of two, as the chunks).
    most = piece if piece >= chunk else chunk if chunk % piece == 0 else chunk + piece - 1
    held_draws, waiting, buffer, padded = min(most, batch_draws, draws), 0, None, None

    def wait(j: int, u: np.ndarray, last: bool) -> None:
        """Lay out the noise ``u`` (draw, n_j, input) of layer j for its first-order changes, and take them once
        a chunk of draws is there, or at the layer's ``last`` piece of the batch."""
        nonlocal waiting
        n_j = u.shape[1]
        ut = buffer[:n * held_draws * n_j].reshape(n, -1, n_j)
        if padded is None:
            ut[:, waiting:waiting + len(u)] = u.transpose(2, 0, 1)
        else:  # by way of rows a few elements longer than n (where ``padded`` is made), one draw at a time
            longer = padded[:n_j * (n + PAD)].reshape(n_j, n + PAD)
            for d in range(len(u)):
                longer[:, :n] = u[d]
                ut[:, waiting + d] = longer[:, :n].T
        waiting += len(u)
        if waiting >= chunk or last:
            first_orders(j, ut)

    def first_orders(j: int, ut: np.ndarray) -> None:
        """The first-order changes of the draws waiting at layer j: one product per input for all of them."""
        nonlocal waiting
        with clock("linear"):
            change = first_order_by_input(jac[j], ut[:, :waiting])  # (n, k, draw)
            waiting = 0
            firsts[j].append(np.linalg.norm(change, axis=1).T)  # (draw, input)
            # the first-order prediction changes at r > the threshold, (ratio, draw, input)
            crossings[j].append(ratios[:, None, None] > crossing_threshold(clean_output, change).T)

    def measure_norms(j: int, w: np.ndarray) -> None:
        """What the bound and the noise need of W_j, while it is at hand."""
        if with_bound:
            with clock("bound"):
                norms[j - 1] = spectral_norm_estimate(w)
        if j in present or together:
            with clock("noise"):  # a Lanczos run for spectral scaling
                sizes[j] = matrix_norm(w, norm)
        if together:  # b_j fetched again only when its noise is asked for (a drawn network draws it again)
            b = net.params(j)[1] if biases and net.has_biases else None
            bias_sizes[j] = 0.0 if b is None else float(np.linalg.norm(b.astype(np.float64)))

    def perturbation(b: int, worst: bool):
        def visit(j: int, w: np.ndarray, h: np.ndarray) -> Fill | None:
            """Layer j's columns, (n_j, (draw [+ worst]) * ratio * input): runs of the inputs, as run_pass wants."""
            if j not in present:
                return None
            with clock("noise"):
                if j not in sources:
                    sources[j] = LayerNoise(rng_for_layer(j), w.shape, h, distribution, norm, sizes[j], net.dtype)

            def fill(out: np.ndarray, start: int, stop: int) -> None:
                """r u for the columns [start, stop), whole draws: (n_j, draw, ratio, input). The pieces come in
                order, and each draws its own noise (the same draws whatever the batches): it is still in cache.
                With the linear answer, the first-order changes of the same u follow, a chunk of draws at a time."""
                if start == b * R * n:  # the worst direction, after the batch's draws
                    u = linear[j].direction[None]
                else:
                    u = sources[j].draw_major((stop - start) // (R * n))  # (draw, n_j, input) at ratio 1
                    if j in jac:  # its first-order changes once a chunk of draws is there
                        with clock.moved("noise", "linear"):
                            wait(j, u, stop == b * R * n)
                # in float64 (the ratios are), rounded once to the working precision
                np.multiply(u.transpose(1, 0, 2)[:, :, None, :], ratios[:, None], out=out.reshape(u.shape[1], -1, R, n))
            return fill
        return visit

    fwd = X
    if with_linear or together:
        fwd, _ = run_pass(net, X, {}, lambda j, w, h: measure_norms(j, w), clock)
        if with_linear:
            linear, jac = _linear_answers(net, fwd, present, together, sizes, bias_sizes if biases else None, norm,
                                          clock)
            jac = jac if with_first_order else {}
            clean_output = fwd.output.astype(np.float64)
            if jac:
                widest = max(net.shapes[i - 1][0] for i in jac)
                buffer = np.empty(n * held_draws * widest, net.dtype)
                if n * np.dtype(net.dtype).itemsize % 512 == 0:
                    # Reading a draw's noise (n_j, n) a column at a time, as the transposed copy does, hits a
                    # handful of cache sets when its rows are a large power of two of bytes apart (several times
                    # slower per element); copied first into rows a few elements longer, its columns spread.
                    padded = np.empty(widest * (n + PAD), net.dtype)
    noise_all = TogetherNoise(rng_for_layer(TOGETHER), net.shapes, distribution, norm, sizes,
                              bias_sizes if biases else None, net.dtype) if together else None
    fixed, workspace = None, {}
    for start in range(0, draws, batch_draws):
        b = min(batch_draws, draws - start)
        worst = with_linear and start == 0
        # the batch's draws in whole pieces, then the worst direction alone
        columns = {i: [R * n * min(piece, b - s) for s in range(0, b, piece)] + [R * n] * worst for i in present}
        for i in jac:
            firsts[i], crossings[i] = [], []
        moved = {}
        if not isinstance(fwd, Forward):  # the first batch without the linear answer: clean pass and norms ride along
            visit = perturbation(b, worst)
            fwd, moved = run_pass(net, fwd, columns, lambda j, w, h: measure_norms(j, w) or visit(j, w, h), clock,
                                  workspace)
        elif columns:
            fwd, moved = run_pass(net, fwd, columns, perturbation(b, worst), clock, workspace)
        if together:
            moved[TOGETHER] = _together_batch(net, fwd, noise_all, ratios, b,
                                              linear.get(TOGETHER) if worst else None, per_pass, clock)
        if fixed is None:
            fixed = _per_network(net, fwd, X, ratios, layers, moved, linear, norms, sizes, labels, with_bound,
                                 bias_sizes)
        yield _with_first_order(_per_batch(fixed, fwd, layers, moved, n, R, b, worst, labels, net), firsts,
                                crossings, layers, ratios)


def _with_first_order(result: NetworkResult, firsts: dict[int, list], crossings: dict[int, list],
                      layers, ratios) -> NetworkResult:
    """A batch's result with its ``linear_change`` (r times the ratio-1 first-order change of the same eta:
    the first-order term is linear in eta) and ``linear_pred_changed``; NaN where they were not computed
    (the together cells among them). ``firsts`` and ``crossings`` hold the batch's pieces in order,
    (draw, input) and (ratio, draw, input)."""
    change, crossed = np.full(result.delta_norm.shape, np.nan), np.full(result.delta_norm.shape, np.nan)
    for col, i in enumerate(layers):
        if firsts.get(i):
            change[:, col] = ratios[:, None, None] * np.concatenate(firsts[i]).T[None]
            crossed[:, col] = np.concatenate(crossings[i], axis=1).transpose(0, 2, 1)  # booleans as 0/1
    return dataclasses.replace(result, linear_change=change, linear_pred_changed=crossed)


def _together_batch(net: Network, fwd: Forward, noise, ratios: np.ndarray, b: int, answer, per_pass: int,
                    clock: Clock) -> Moved:
    """The together cells' columns of one batch of ``b`` draws, in passes of ``per_pass`` draws (the
    worst direction in a pass of its own), laid out (draw [+ worst], ratio, input) as the batch's.
    ``per_pass`` divides every batch but the last, so a draw's numbers do not depend on the batches."""
    n, R = fwd.output.shape[1], len(ratios)
    parts = [together_pass(net, fwd, noise, ratios, min(per_pass, b - s), None, clock) for s in range(0, b, per_pass)]
    if answer is not None:
        parts.append(together_pass(net, fwd, noise, ratios, 0, answer, clock))
    # together_pass orders its columns (input, ratio, draw)
    return Moved(*(np.concatenate([p[f].reshape(n, R, -1).transpose(2, 1, 0) for p in parts]).ravel()
                   for f in range(3)))


def _linear_answers(net: Network, fwd: Forward, present: list[int], together: bool, sizes: dict,
                    bias_sizes: dict | None, norm: str, clock: Clock) -> tuple[dict, dict]:
    """The linear answer of every present layer and, for the together cells, of every layer at once
    (under key TOGETHER): one backward pass, and a second one for the together cells' directions.
    Also returns J_i of every present layer (the first-order change of each draw needs it)."""
    needed = set(present) | (set(range(1, net.depth + 1)) if together else set())
    linear, jac, acc = {}, {}, TogetherLinear(fwd, sizes, bias_sizes, norm) if together else None
    for i, J in jacobians(net, fwd, needed, clock):
        if i in present:
            linear[i] = linear_answer(J, fwd.post[i - 1], sizes[i], norm)
            jac[i] = J
        if acc is not None:
            with clock("linear"):
                acc.add(i, J)
    if acc is not None:
        with clock("linear"):
            linear[TOGETHER] = acc.finish(lambda: jacobians(net, fwd, needed, clock))
    return linear, jac


def _per_network(net, fwd, X, ratios, layers, moved, linear, norms, sizes, labels, with_bound,
                 bias_sizes=None) -> NetworkResult:
    """The fields that do not depend on the draws (the per-draw ones empty)."""
    n, R = X.shape[1], len(ratios)
    bound, linear_rms, worst_linear, worst_realised = (np.full((R, len(layers), n), np.nan) for _ in range(4))
    for col, i in enumerate(layers):
        if i not in moved:
            continue
        if linear:
            worst_realised[:, col] = moved[i].delta.reshape(-1, R, n)[-1]
            linear_rms[:, col] = ratios[:, None] * linear[i].rms[None, :]
            worst_linear[:, col] = ratios[:, None] * linear[i].worst[None, :]
        if with_bound and i == TOGETHER:
            bound[:, col] = _together_bound(net, fwd, ratios, norms, sizes, bias_sizes)
        elif with_bound:
            bound[:, col] = ratios[:, None] * worst_case_bound(norms, fwd, X, i, sizes[i], net)[None, :]
    clean_pred = fwd.output.argmax(axis=0)
    clean_accuracy = float((clean_pred == labels).mean()) if labels is not None else np.nan
    v = fwd.output.astype(np.float64)
    empty = np.empty((R, len(layers), n, 0))
    per_draw = {name: empty for name in PER_DRAW if name != "accuracy"}
    return NetworkResult(**per_draw, accuracy=np.empty((R, len(layers), 0)), bound=bound, linear_rms=linear_rms,
                         worst_linear=worst_linear, worst_realised=worst_realised,
                         output_norm=np.linalg.norm(v, axis=0), margin=margins(v), clean_accuracy=clean_accuracy)


def _together_bound(net: Network, fwd: Forward, ratios: np.ndarray, norms: np.ndarray, sizes: dict,
                    bias_sizes: dict) -> np.ndarray:
    """:func:`pipeline.together.together_bound` of this network, (ratio, input)."""
    L = net.depth
    h_norms = np.stack([np.linalg.norm(fwd.post[j].astype(np.float64), axis=0) for j in range(L)])
    closed = not net.has_biases and all(a.zero_at_zero for a in net.activations)
    return together_bound(ratios, norms, np.array([sizes[j] for j in range(1, L + 1)]),
                          np.array([bias_sizes.get(j, 0.0) for j in range(1, L + 1)]), h_norms,
                          np.array([a.lipschitz for a in net.activations]), closed)


def _per_batch(fixed: NetworkResult, fwd: Forward, layers, moved, n: int, R: int, b: int, worst: bool,
               labels, net: Network) -> NetworkResult:
    """One batch's per-draw fields, beside the network's fixed ones."""
    clean_pred = fwd.output.argmax(axis=0)
    hidden = sum(s[0] for s in net.shapes[:-1])
    shape = (R, len(layers), n, b)
    delta, flips, changed = (np.full(shape, np.nan) for _ in range(3))
    accuracy = np.full((R, len(layers), b), np.nan)
    for col, i in enumerate(layers):
        if i not in moved:
            continue
        mv = moved[i]

        def cells(a: np.ndarray) -> np.ndarray:  # columns (draw [+ worst], ratio, input) -> (ratio, input, draw)
            return a.reshape(b + worst, R, n)[:b].transpose(1, 2, 0)

        delta[:, col] = cells(mv.delta)
        flips[:, col] = cells(mv.flips / hidden if hidden else 0.0 * mv.flips)
        pred = cells(mv.argmax)
        changed[:, col] = pred != clean_pred[:, None]
        if labels is not None:
            accuracy[:, col] = (pred == labels[:, None]).mean(axis=1)
    return dataclasses.replace(fixed, delta_norm=delta, hidden_flip_fraction=flips, pred_changed=changed,
                               accuracy=accuracy)


def measure_block(spec: Spec, L: int, m: int, seeds: tuple[int, ...],
                  timings: dict[str, float] | None = None) -> BlockResult:
    """Measure the networks (L, m, seed) for ``seeds``: every ratio, layer and draw.

    Each network's numbers depend only on the spec and (L, m, seed): the
    weights and every noise stream are seeded from random_seed and those
    coordinates, never from the block. BLAS runs single-threaded here,
    because a multi-threaded GEMM splits its sums differently and would make
    the last bits depend on the machine's thread count.
    """
    arrays = None
    for s, start, part in block_batches(spec, L, m, seeds, timings):
        if arrays is None:  # the block's arrays, each batch written into its place
            shapes = {name: np.shape(getattr(part, name)) for name in RESULT_FIELDS}
            shapes.update({name: shapes[name][:-1] + (spec.noise.draws,) for name in PER_DRAW})
            arrays = {name: np.empty(shape[:2] + (len(seeds),) + shape[2:] if name in PER_CELL
                                     else (len(seeds),) + shape) for name, shape in shapes.items()}
        b = part.delta_norm.shape[-1]
        for name in RESULT_FIELDS:
            at = (slice(None), slice(None), s) if name in PER_CELL else (s,)
            if name in PER_DRAW:
                arrays[name][at + (..., slice(start, start + b))] = getattr(part, name)
            elif start == 0:
                arrays[name][at] = getattr(part, name)
    return BlockResult(**arrays)


def block_batches(spec: Spec, L: int, m: int, seeds: tuple[int, ...], timings: dict[str, float] | None = None,
                  with_first_order: bool = True) -> Iterator[tuple[int, int, NetworkResult]]:
    """The networks (L, m, seed) for ``seeds``, batch of draws after batch (:func:`network_batches`):
    (the seed's place in ``seeds``, the batch's first draw, the batch), with BLAS single-threaded
    (see :func:`measure_block`). A consumer that pools each batch holds one batch at a time."""
    with threadpool_limits(limits=1, user_api="blas"):
        x, labels = make_inputs(spec), make_labels(spec)
        g, nz = spec.grid, spec.noise
        for s, seed in enumerate(seeds):
            net = build_network(spec, L, m, seed)
            start = 0
            for part in network_batches(net, x, np.array(g.ratio), g.layer, nz.draws, nz.distribution, nz.norm,
                                        lambda i, seed=seed: stream(spec, NOISE_STREAM, L, m, seed, i), labels,
                                        timings=timings, biases=nz.biases, with_first_order=with_first_order):
                yield s, start, part
                start += part.delta_norm.shape[-1]
