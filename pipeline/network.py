"""Feed-forward networks: weights for one (L, m, seed) and a forward pass that keeps activations.

A network has L weight matrices W_j of shape n_j x n_{j-1}, n_0 = d and n_L = k:
a random network has every hidden width n_j = m, a network read from a file
the widths it has. Hidden layer j applies its activation f_j (ReLU unless the
spec says otherwise, see :mod:`pipeline.activations`); the read-out does not.

>>> import numpy as np
>>> net = Network((np.eye(2), 2 * np.eye(2)))
>>> net.forward(np.array([1.0, -1.0])).output
array([2., 0.])
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import TYPE_CHECKING

import numpy as np

from . import files
from .activations import RELU, Activation, activation
from .config import env_size
from .errors import SpecError
# the norms are linalg's; measure, the benchmarks and the tests name them here too
from .linalg import LANCZOS_STEPS, frobenius_norm, spectral_norm, spectral_norm_estimate  # noqa: F401

if TYPE_CHECKING:
    from .spec import Spec

# Tags that keep the random streams of different purposes apart.
INPUT_STREAM, WEIGHT_STREAM, NOISE_STREAM = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Forward:
    """A clean forward pass: ``pre[j-1]`` = z_j (before ReLU), ``post[j-1]`` = h_{j-1}."""

    pre: tuple[np.ndarray, ...]   # z_1 .. z_L; z_L is the output v
    post: tuple[np.ndarray, ...]  # h_0 = x .. h_{L-1}, the input of each layer

    @property
    def output(self) -> np.ndarray:
        return self.pre[-1]


# A drawn network whose weights take at most this many bytes keeps them between the kernel's passes
# (the clean pass, the backward pass, the perturbed columns); a larger one draws each matrix again
# from its stream when a pass reaches it, so it holds a matrix or two at a time. The
# environment variable NNSWEEP_KEEP_WEIGHTS (bytes, e.g. 64MB) changes it; it never changes a number.
KEEP_WEIGHTS_BYTES = 256 * 2**20


def keeps_weights(shapes, dtype) -> bool:
    """Whether a drawn network of these layer shapes keeps its matrices between passes."""
    limit = env_size("NNSWEEP_KEEP_WEIGHTS", KEEP_WEIGHTS_BYTES, zero=True)
    return sum(a * b for a, b in shapes) * np.dtype(dtype).itemsize <= limit

Layer = tuple[np.ndarray, "np.ndarray | None"]


def activation_list(activations, depth: int) -> tuple[Activation, ...]:
    """One :class:`~pipeline.activations.Activation` per hidden layer, from None (ReLU), one name, or a
    sequence of names (or rows) with one per hidden layer."""
    if activations is None:
        return (RELU,) * (depth - 1)
    if isinstance(activations, (str, Activation)):
        activations = [activations] * (depth - 1)
    out = tuple(a if isinstance(a, Activation) else activation(a) for a in activations)
    if len(out) != depth - 1:
        raise ValueError(f"{len(out)} activations for a network of {depth - 1} hidden layers")
    return out


class Network:
    """A feed-forward network whose layers are fetched one at a time.

    ``params(j)`` gives (W_j, b_j) in the network's ``dtype``; ``activations[j-1]``
    is the activation after hidden layer j. A network made
    from arrays holds them; one made by :meth:`drawn` draws W_j from its own
    random stream when asked, so a pass through it holds one matrix at a
    time, and asking again gives the same numbers. ``weights`` and ``biases``
    fetch every layer at once, for tests and references.

    >>> import numpy as np
    >>> net = Network((np.eye(2), 2 * np.eye(2)))
    >>> net.forward(np.array([1.0, -1.0])).output
    array([2., 0.])
    """

    def __init__(self, weights, biases=None, dtype=np.float64, activations=None):
        weights = tuple(np.asarray(w, dtype) for w in weights)
        biases = None if biases is None else tuple(np.asarray(b, dtype) for b in biases)
        self._setup(tuple(w.shape for w in weights), lambda j: (weights[j - 1], None if biases is None else biases[j - 1]),
                    biases is not None, dtype, activations)

    @classmethod
    def drawn(cls, shapes, draw, has_biases: bool, dtype, keep: bool, activations=None) -> Network:
        """A network whose layer j is ``draw(j)`` (deterministic), memoised when ``keep``."""
        net = cls.__new__(cls)
        net._setup(tuple(shapes), functools.cache(draw) if keep else draw, has_biases, dtype, activations)
        net.holds_weights = keep
        return net

    holds_weights = True  # fetching a layer again costs nothing (False: it draws the matrix again)

    def _setup(self, shapes, fetch, has_biases, dtype, activations):
        self.shapes, self._fetch, self.has_biases, self.dtype = shapes, fetch, has_biases, np.dtype(dtype)
        self.activations = activation_list(activations, len(shapes))

    @property
    def depth(self) -> int:
        return len(self.shapes)

    def params(self, j: int) -> Layer:
        """(W_j, b_j) of layer j (1-based); b_j is None without biases."""
        return self._fetch(j)

    def layer(self, j: int, h: np.ndarray) -> np.ndarray:
        """Pre-activation of layer j (1-based) for inputs ``h`` (a vector or columns)."""
        w, b = self.params(j)
        z = w @ h
        if b is not None:
            z += b if h.ndim == 1 else b[:, None]
        return z

    @property
    def weights(self) -> tuple[np.ndarray, ...]:
        return tuple(self.params(j)[0] for j in range(1, self.depth + 1))

    @property
    def biases(self) -> tuple[np.ndarray, ...] | None:
        return tuple(self.params(j)[1] for j in range(1, self.depth + 1)) if self.has_biases else None

    def forward(self, x: np.ndarray) -> Forward:
        """The clean pass over one input (d,) or columns (d, n), keeping every activation."""
        pre, post, h = [], [], np.asarray(x, self.dtype)
        for j in range(1, self.depth + 1):
            post.append(h)
            z = self.layer(j, h)
            pre.append(z)
            if j < self.depth:
                h = self.activations[j - 1].forward(z)
        return Forward(tuple(pre), tuple(post))


def layer_shapes(L: int, m: int, d: int, k: int) -> list[tuple[int, int]]:
    """(n_out, n_in) of W_1..W_L."""
    widths = [d] + [m] * (L - 1) + [k]
    return [(widths[j + 1], widths[j]) for j in range(L)]


def stream(spec: Spec, *key: int) -> np.random.Generator:
    """A generator seeded by the spec's random_seed and a cell's own coordinates."""
    return np.random.default_rng(np.random.SeedSequence(spec.random_seed, spawn_key=key))


def make_inputs(spec: Spec) -> np.ndarray:
    """The fixed inputs, shape (n, d): standard normal from the random seed, or the spec's .npy file.

    One Gaussian input is the first d numbers of the same stream as n of them.
    """
    net = spec.network
    if net.input == "gaussian":
        return stream(spec, INPUT_STREAM).standard_normal((net.n_inputs, net.input_dim))
    return files.load_inputs(*net.file("input"), net.input_dim)


def make_labels(spec: Spec) -> np.ndarray | None:
    """The class index of every input, or None without ``network.labels``."""
    net = spec.network
    if net.labels is None:
        return None
    return files.load_labels(*net.file("labels"), net.n_inputs, net.output_dim)


def build_network(spec: Spec, L: int, m: int, seed: int, keep: bool | None = None) -> Network:
    """The network of one grid cell, in the spec's precision.

    A random-init network draws W_j (and b_j) from its own stream, keyed by
    (L, m, seed, j), when a pass reaches layer j; it keeps its matrices when
    they fit in :data:`KEEP_WEIGHTS_BYTES` (or as ``keep`` says). A file
    network is read whole.
    """
    net, dtype = spec.network, spec.compute.dtype
    activations = net.activations(L, m, seed)
    if net.init_is_file:
        arrays = files.load_network(*net.network_file(L, m, seed), net.layer_order)
        weights = arrays.weights
        if net.weight_norm_bound is not None:
            weights = tuple(w * _bound_scale(w, net.weight_norm_bound, j) for j, w in enumerate(weights, 1))
        return Network(weights, arrays.biases, dtype, activations)
    shapes = layer_shapes(L, m, net.input_dim, net.output_dim)

    def draw(j: int) -> Layer:
        rng = stream(spec, WEIGHT_STREAM, L, m, seed, j)
        w = _init_matrix(net.init, shapes[j - 1], rng, dtype)
        b = net.bias_std * rng.standard_normal(shapes[j - 1][0]) if net.bias_std > 0 else None
        if net.weight_norm_bound is not None:
            if j not in scales:  # an ARPACK run: once per layer, not once per draw
                scales[j] = _bound_scale(w, net.weight_norm_bound, j)
            w *= scales[j]
        return w.astype(dtype, copy=False), None if b is None else b.astype(dtype, copy=False)

    scales: dict[int, float] = {}

    if keep is None:
        keep = keeps_weights(shapes, dtype)
    return Network.drawn(shapes, draw, net.bias_std > 0, dtype, keep, activations)


def clean_output_mismatch(arrays: files.NetworkArrays, activations, x: np.ndarray, outputs: np.ndarray,
                          tolerance: float) -> str:
    """How the clean pass of ``arrays`` on inputs ``x`` (n, d) misses the user's ``outputs`` (n, k), or "".

    The comparison allows ``tolerance`` of the largest |output| (a float32 model's own rounding),
    and also requires the same predicted class wherever the user's top two outputs are further
    apart than that.
    """
    ours = Network(arrays.weights, arrays.biases, np.float64, activations).forward(x.T).output.T
    scale = max(float(np.abs(outputs).max()), np.finfo(float).tiny)
    err = np.abs(ours - outputs).max(axis=1)
    worst = int(err.argmax())
    if err[worst] > tolerance * scale:
        return (f"by up to {err[worst]:.3g} at input {worst}, where the largest output is {scale:.3g}; "
                f"{int(np.sum(err > tolerance * scale))} of {len(err)} inputs differ")
    return ""


def _bound_scale(w: np.ndarray, bound: float, j: int) -> float:
    """The factor that gives W_j the spectral norm ``bound``, refusing what float64 cannot hold."""
    s = spectral_norm(w)
    scaled = w * (bound / s) if s > 0 else w
    if s == 0 or not np.all(np.isfinite(scaled)) or not np.any(scaled):
        raise SpecError(f"network.weight_norm_bound: {bound!r} cannot be applied to W{j} (spectral norm "
                        f"{s:.3g}): {'it is all zeros' if s == 0 else 'the rescaled weights leave float64'}; "
                        "use weight_norm_bound: null or a bound nearer the weights' own norms.")
    return bound / s


def standard_normal32(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 numbers by the Box-Muller transform of float32 uniforms.

    As PyTorch draws float32 normals on the CPU: pairs r (cos t, sin t) with
    r = sqrt(-2 log(1 - u)), t = 2 pi u', a few vectorised passes, faster than
    numpy's float32 ziggurat (benchmarks/machine.py's normal_rate measures both). Exact in law but for float32's grid of
    uniforms (steps of 2^-24): |z| never exceeds 5.77, where the normal tail
    holds 8e-9 of the mass. tests/test_network.py checks the law.
    """
    n = int(np.prod(shape))
    half = (n + 1) // 2
    out = np.empty(2 * half, np.float32)
    r, t = out[:half], out[half:]
    rng.random(out=r, dtype=np.float32)
    np.subtract(np.float32(1.0), r, out=r)  # exact: u is a multiple of 2^-24 in [0, 1)
    np.log(r, out=r)
    r *= np.float32(-2.0)
    np.sqrt(r, out=r)
    rng.random(out=t, dtype=np.float32)
    t *= np.float32(2 * np.pi)
    sine = np.sin(t)
    np.cos(t, out=t)
    t *= r
    r *= sine
    return out[:n].reshape(shape)


def _init_matrix(scheme: str, shape: tuple[int, int], rng: np.random.Generator, dtype=np.float64) -> np.ndarray:
    """One initial matrix; Gaussian schemes draw in ``dtype`` itself (float32 by :func:`standard_normal32`)."""
    n_out, n_in = shape
    if scheme in ("he", "xavier"):
        w = standard_normal32(rng, shape) if np.dtype(dtype) == np.float32 else rng.standard_normal(shape)
        w *= math.sqrt(2.0 / n_in) if scheme == "he" else math.sqrt(2.0 / (n_in + n_out))  # weak: keeps float32
        return w
    # orthogonal with the ReLU gain sqrt(2): rows (or columns) orthonormal
    a = rng.standard_normal((max(shape), min(shape)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    return np.sqrt(2.0) * (q if n_out >= n_in else q.T)
