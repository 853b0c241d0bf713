"""The activations a hidden layer may apply: one row of a table each (forward, difference, derivative).

The kernel never computes f(z + d) - f(z) by subtracting two nearly equal
numbers: each row's ``difference`` is an identity (or, for GELU's Gaussian
integral, a short series where |d| is small) whose rounding error is relative
to |d| itself, so ||v' - v|| keeps its relative accuracy at every noise ratio,
in float32 as in float64. The smooth rows compute in float64 whatever the
working precision (a transcendental per entry already costs more than the
conversion) and round once at the end. ``derivative`` gives the clean
pass's D_j = diag(f'(z_j)) of the linear answer.

Names are what a spec's ``network.activation`` takes:

>>> [a.name for a in map(activation, ["relu", "leaky_relu(0.2)", "tanh", "gelu"])]
['relu', 'leaky_relu(0.2)', 'tanh', 'gelu']
>>> import numpy as np
>>> x = activation("tanh").difference(np.array([20.0]), np.array([-2.0]))[0]  # tanh(18) - tanh(20)
>>> print(f"{x:.6e}", f"{np.tanh(18.0) - np.tanh(20.0):.6e}")  # the subtraction keeps one bit
-4.554079e-16 -4.440892e-16
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable

import numpy as np

from .errors import SpecError

Array = np.ndarray

# GELU's series is used where |d| is below this: its truncation error (the d^5 term) is then below 1e-13
# of |d| for |z| <= 10, and direct evaluation of the Gaussian tails above it loses no more than that.
GELU_SERIES_BELOW = 1e-3


def _wide(x: Array) -> Array:
    return np.asarray(x, np.float64)


def _tail(x: Array) -> Array:
    """1 - tanh|x| = 2 e^{-2|x|} / (1 + e^{-2|x|}), without cancellation and without overflow."""
    e = np.exp(-2.0 * np.abs(x))
    return 2.0 * e / (1.0 + e)


def _tanh_difference(z: Array, d: Array) -> Array:
    """tanh(z + d) - tanh(z) = tanh(d) (1 - tanh(z)^2) / (1 + tanh(z) tanh(d)).

    1 - tanh(z)^2 = s (2 - s) with s = 1 - tanh|z| computed directly, and where
    tanh(z) and tanh(d) have opposite signs the denominator 1 - |tanh z| |tanh d|
    is s_z + s_d - s_z s_d: every step is free of cancellation.
    """
    z, d = np.broadcast_arrays(z, d)
    t, td, sz, sd = np.tanh(z), np.tanh(d), _tail(z), _tail(d)
    with np.errstate(invalid="ignore", divide="ignore"):
        den = np.where(t * td >= 0, 1.0 + t * td, sz + sd - sz * sd)
        out = td * (sz * (2.0 - sz)) / den
    bad = ~np.isfinite(out)  # |z| and |d| beyond ~370: both tails underflow; then nothing cancels
    if bad.any():
        out[bad] = np.tanh(z[bad] + d[bad]) - t[bad]
    return out


def _sigmoid(z: Array) -> Array:
    """1 / (1 + e^-z), relative accuracy on both sides (e^z / (1 + e^z) below 0)."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0, e) / (1.0 + e)


def _sech2(z: Array) -> Array:
    s = _tail(z)
    return s * (2.0 - s)


def _phi(z: Array) -> Array:
    return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _Phi(z: Array) -> Array:
    from scipy.special import erfc  # local: only a GELU network needs scipy on an estimate's path

    return 0.5 * erfc(-z / math.sqrt(2.0))


# Gauss-Legendre nodes and weights on [0, 1] for Phi's difference at moderate |d|
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(12)
_GL_NODES, _GL_WEIGHTS = 0.5 * (_GL_NODES + 1), 0.5 * _GL_WEIGHTS


def _Phi_difference(z: Array, d: Array) -> Array:
    """Phi(z + d) - Phi(z): a series in d where |d| < GELU_SERIES_BELOW, the integral of phi over
    [z, z + d] by 12-point Gauss-Legendre where |d| <= 1 (positive terms: relative accuracy; the rule's
    error is below 1e-18 there), else the difference of the Gaussian tails on the side where both lie
    (erfc of the far tail is accurate), which cancels no more than eps / |d|."""
    from scipy.special import erfc

    z, d = np.broadcast_arrays(z, d)
    a, b = z, z + d
    r2 = math.sqrt(2.0)
    with np.errstate(under="ignore"):
        upper = 0.5 * (erfc(a / r2) - erfc(b / r2))     # both >= 0: 1 - Phi is the small tail
        lower = 0.5 * (erfc(-b / r2) - erfc(-a / r2))   # both <= 0
        out = np.where((a >= 0) & (b >= 0), upper, np.where((a <= 0) & (b <= 0), lower, _Phi(b) - _Phi(a)))
        middle = (np.abs(d) >= GELU_SERIES_BELOW) & (np.abs(d) <= 1)
        if middle.any():
            zm, dm = z[middle], d[middle]
            out[middle] = dm * (_phi(zm[:, None] + dm[:, None] * _GL_NODES) @ _GL_WEIGHTS)
        small = np.abs(d) < GELU_SERIES_BELOW
        if small.any():
            zs, ds = z[small], d[small]
            # Phi(z + d) - Phi(z) = phi(z) (d - z d^2/2 + (z^2 - 1) d^3/6 - (z^3 - 3z) d^4/24 + ...)
            series = ds * (1 - ds * (zs / 2 - ds * ((zs * zs - 1) / 6 - ds * (zs ** 3 - 3 * zs) / 24)))
            out[small] = _phi(zs) * series
    return out


GELU_C, GELU_A = math.sqrt(2.0 / math.pi), 0.044715


def _one_plus_tanh(u: Array) -> Array:
    """1 + tanh(u), accurate on both sides (the small tail below 0)."""
    return np.where(u >= 0, 2.0 - _tail(u), _tail(u))


def _gelu_tanh(z: Array) -> Array:
    return 0.5 * z * _one_plus_tanh(GELU_C * (z + GELU_A * z ** 3))


def _gelu_tanh_difference(z: Array, d: Array) -> Array:
    """With u(z) = c (z + a z^3): f(z + d) - f(z) = (d (1 + tanh u') + z (tanh u' - tanh u)) / 2, where
    u' - u = c d (1 + a (3 z^2 + 3 z d + d^2)) and tanh u' - tanh u is the tanh difference."""
    u = GELU_C * (z + GELU_A * z ** 3)
    du = GELU_C * d * (1.0 + GELU_A * (3 * z * z + 3 * z * d + d * d))
    return 0.5 * (d * _one_plus_tanh(u + du) + z * _tanh_difference(u, du))


def _gelu_tanh_derivative(z: Array) -> Array:
    u = GELU_C * (z + GELU_A * z ** 3)
    return 0.5 * _one_plus_tanh(u) + 0.5 * z * _sech2(u) * GELU_C * (1.0 + 3 * GELU_A * z * z)


@dataclasses.dataclass(frozen=True)
class Activation:
    """One row of the table: f, f(z + d) - f(z) computed without cancellation, and f'.

    ``piecewise_linear`` rows (ReLU, LeakyReLU) run in the working precision
    (their difference is exact arithmetic on z and d); the others compute in
    float64. ``zero_below`` says f(z) = 0 for every z <= 0 (ReLU), which the
    kernel uses to make a layer switched off entirely exact. ``lipschitz``
    (max |f'|, rounded up) and ``zero_at_zero`` (f(0) = 0) are what the
    worst-case bound needs.
    """

    name: str
    _forward: Callable[[Array], Array]
    _difference: Callable[[Array, Array], Array]
    _derivative: Callable[[Array], Array]
    lipschitz: float = 1.0
    zero_at_zero: bool = True
    piecewise_linear: bool = False
    zero_below: bool = False

    def forward(self, z: Array) -> Array:
        if self.piecewise_linear:
            return self._forward(z)
        return self._forward(_wide(z)).astype(np.result_type(z), copy=False)

    def difference(self, z: Array, d: Array) -> Array:
        """f(z + d) - f(z), elementwise with broadcasting, in the precision of ``d``."""
        if self.piecewise_linear:
            return self._difference(z, d)
        return self._difference(_wide(z), _wide(d)).astype(np.result_type(d), copy=False)

    def derivative(self, z: Array) -> Array:
        """f'(z) (for ReLU-like kinks, the right-continuous convention of PyTorch: f'(0) = 0 for ReLU)."""
        return self._derivative(z if self.piecewise_linear else _wide(z)).astype(np.result_type(z), copy=False)


def _relu_difference(z: Array, d: Array) -> Array:
    """relu(z + d) - relu(z) = max(d + min(z, 0), -max(z, 0))."""
    return np.maximum(d + np.minimum(z, 0), -np.maximum(z, 0))


def _leaky(alpha: float) -> Activation:
    a = float(alpha)

    def forward(z):
        return np.where(z > 0, z, z * np.asarray(a, z.dtype))

    def difference(z, d):
        # f(z + d) - f(z) = a d + (1 - a) (relu(z + d) - relu(z))
        return d * np.asarray(a, d.dtype) + np.asarray(1 - a, d.dtype) * _relu_difference(z, d)

    def derivative(z):
        return np.where(z > 0, 1.0, a)

    return Activation(f"leaky_relu({a!r})", forward, difference, derivative, piecewise_linear=True)


RELU = Activation("relu", lambda z: np.maximum(z, 0), _relu_difference, lambda z: (z > 0).astype(z.dtype),
                  piecewise_linear=True, zero_below=True)

_FIXED = {
    "relu": RELU,
    "tanh": Activation("tanh", np.tanh, _tanh_difference, _sech2),
    "sigmoid": Activation("sigmoid", _sigmoid, lambda z, d: 0.5 * _tanh_difference(0.5 * z, 0.5 * d),
                          lambda z: 0.25 * _sech2(0.5 * z), lipschitz=0.25, zero_at_zero=False),
    # SiLU z sigma(z): f(z + d) - f(z) = d sigma(z + d) + z (sigma(z + d) - sigma(z))
    "silu": Activation("silu", lambda z: z * _sigmoid(z),
                       lambda z, d: d * _sigmoid(z + d) + z * (0.5 * _tanh_difference(0.5 * z, 0.5 * d)),
                       lambda z: _sigmoid(z) + z * 0.25 * _sech2(0.5 * z), lipschitz=1.0999),
    # GELU z Phi(z): f(z + d) - f(z) = d Phi(z + d) + z (Phi(z + d) - Phi(z))
    "gelu": Activation("gelu", lambda z: z * _Phi(z), lambda z, d: d * _Phi(z + d) + z * _Phi_difference(z, d),
                       lambda z: _Phi(z) + z * _phi(z), lipschitz=1.1290),
    "gelu_tanh": Activation("gelu_tanh", _gelu_tanh, _gelu_tanh_difference, _gelu_tanh_derivative,
                            lipschitz=1.1290),
}

NAMES = ("relu", "leaky_relu(alpha)", "tanh", "sigmoid", "gelu", "gelu_tanh", "silu")
ALLOWED = ("relu, leaky_relu(alpha) with 0 <= alpha < 1 (e.g. leaky_relu(0.01), PyTorch's default slope), "
           "tanh, sigmoid, gelu (the erf form, PyTorch's GELU()), gelu_tanh (GELU(approximate='tanh')) or silu")
_LEAKY = re.compile(r"leaky_relu\(\s*([^()]*?)\s*\)")


@functools.lru_cache(maxsize=64)
def activation(name: str) -> Activation:
    """The row of ``name`` (see :data:`ALLOWED`).

    Raises:
        SpecError: an activation the kernel cannot compute exactly.
    """
    if not isinstance(name, str):
        raise SpecError(f"network.activation: {name!r} is not allowed; expected {ALLOWED}.")
    key = name.strip().lower()
    if key in _FIXED:
        return _FIXED[key]
    match = _LEAKY.fullmatch(key)
    if match:
        try:
            alpha = float(match.group(1))
        except ValueError:
            alpha = math.nan
        if 0 <= alpha < 1:
            return _leaky(alpha)
    raise SpecError(f"network.activation: {name!r} is not allowed; expected {ALLOWED}. Activations outside "
                    "this list are refused rather than approximated: the kernel computes each one's "
                    "change f(z + d) - f(z) without cancellation, which needs a formula per activation.")


def canonical(name: str) -> str:
    """The canonical spelling of an activation name (``leaky_relu(0.2)``, ``gelu``).

    >>> canonical("Leaky_ReLU( .2 )"), canonical("GELU")
    ('leaky_relu(0.2)', 'gelu')
    """
    return activation(name).name
