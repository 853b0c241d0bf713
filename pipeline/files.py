"""Weight, input and label files: read once, validated once, identified by their sha256.

This is the only module that parses user files. The client reads every file a
spec names when the spec is loaded (so a bad file fails before any work) and
records each file's sha256 in the spec; workers read the same path through
:func:`read_verified`, which refuses bytes whose hash differs. So what a worker
computes with is provably what the store's spec hash describes, even if the
file is replaced during a run.

Networks come as ``.npz`` (arrays ``W1..WL`` and optionally ``b1..bL``) or
``.safetensors`` (the same names, or the state dict of a PyTorch
``nn.Sequential`` of ``Linear`` and ``ReLU`` layers: ``0.weight``, ``0.bias``,
``2.weight``, ...; its Linear layers in order are W1..WL).

>>> import io, numpy as np
>>> buf = io.BytesIO(); np.savez(buf, W1=np.ones((3, 2)), W2=np.ones((1, 3))); data = buf.getvalue()
>>> [w.shape for w in parse_network(data, "net.npz").weights]
[(3, 2), (1, 3)]
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import re
from pathlib import Path

import numpy as np

from .errors import SpecError

NETWORK_SUFFIXES = (".npz", ".safetensors")


@dataclasses.dataclass(frozen=True, eq=False)
class NetworkArrays:
    """Weights W1..WL (each n_out x n_in) and biases b1..bL (or None), float64."""

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...] | None
    activations: tuple[str | None, ...] = ()  # after each hidden layer, as the file says; None: it cannot say
    format: str = "npz"

    def __post_init__(self):
        if not self.activations:
            object.__setattr__(self, "activations", (None,) * (len(self.weights) - 1))

    def describe(self) -> list[str]:
        return [f"W{j} ({w.shape[0]} x {w.shape[1]})" for j, w in enumerate(self.weights, 1)]

    @property
    def depth(self) -> int:
        return len(self.weights)

    @property
    def input_dim(self) -> int:
        return self.weights[0].shape[1]

    @property
    def output_dim(self) -> int:
        return self.weights[-1].shape[0]

    @property
    def hidden_widths(self) -> tuple[int, ...]:
        return tuple(w.shape[0] for w in self.weights[:-1])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_bytes(path: str, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise SpecError(f"{field}: {path} could not be read ({e.strerror or type(e).__name__}); "
                        "expected a readable file.") from None


def read_verified(path: str, digest: str) -> bytes:
    """The bytes of ``path``, which must hash to ``digest`` (recorded when the spec was loaded).

    Raises:
        SpecError: the file is gone or changed since the spec was loaded.
    """
    data = read_bytes(path, "input file")
    if sha256(data) != digest:
        raise SpecError(f"{path} changed after the sweep started (sha256 {sha256(data)[:12]}, expected "
                        f"{digest[:12]}); a store holds results of one version of each file. Restore the "
                        "file, or start a new store with the new file.")
    return data


def _numeric(a: np.ndarray, what: str, bad) -> np.ndarray:
    if a.dtype.kind not in "fiu" or a.dtype.kind == "f" and a.dtype.itemsize > 8:
        raise bad(f"holds {what} of dtype {a.dtype}; expected real numbers (float or integer)")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise bad(f"holds {what} with {int(np.sum(~np.isfinite(a)))} non-finite values (NaN or inf)")
    return a


# --- networks -------------------------------------------------------------------------

def _network_error(path: str, why: str) -> SpecError:
    return SpecError(
        f"network.init: {path} {why}; expected 2-D weights W1..WL (n_out x n_in, each W(j+1) with as "
        "many columns as Wj has rows) and optionally bias vectors b1..bL for every layer, or a PyTorch "
        "state dict of Linear layers (0.weight, 0.bias, 2.weight, ...).")


def _raw_arrays(data: bytes, path: str) -> dict[str, np.ndarray]:
    bad = functools.partial(_network_error, path)
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.numpy import load

        try:
            return load(data)
        except (SafetensorError, ValueError, TypeError) as e:
            raise bad(f"is not a readable .safetensors file ({type(e).__name__}: {e})") from None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception as e:  # zipfile errors, pickle refusal, truncation: all one user error
        raise bad(f"is not a readable .npz file ({type(e).__name__}: {' '.join(str(e).split())})") from None


def _natural(key: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key))


def _name_layers(arrays: dict[str, np.ndarray], path: str) -> tuple[list, list]:
    """Weights and biases in layer order, from W1..WL/b1..bL names or a PyTorch state dict."""
    bad = functools.partial(_network_error, path)
    keys = sorted(arrays, key=_natural)
    if any(re.fullmatch(r"[Wb]\d+", k) for k in keys):
        L = sum(1 for k in keys if k.startswith("W"))
        allowed = {f"W{j}" for j in range(1, L + 1)} | {f"b{j}" for j in range(1, L + 1)}
        stray = [k for k in keys if k not in allowed]
        if stray or L == 0:
            raise bad(f"has the arrays {keys}, of which {stray or keys} are not W1..W{L} or b1..b{L}")
        weights = [(f"W{j}", arrays[f"W{j}"]) for j in range(1, L + 1)]
        biases = [(f"b{j}", arrays[f"b{j}"]) for j in range(1, L + 1) if f"b{j}" in arrays]
        return weights, biases
    stray = [k for k in keys if not re.fullmatch(r".+\.(weight|bias)", k)]
    if stray or not keys:
        raise bad(f"has the arrays {keys}; {stray[:3] if stray else 'none'} are neither Wj/bj "
                  "nor PyTorch <layer>.weight/<layer>.bias names")
    prefixes = sorted({k.rsplit(".", 1)[0] for k in keys}, key=_natural)
    for p in prefixes:
        if f"{p}.weight" not in arrays:
            raise bad(f"has {p}.bias but no {p}.weight")
        if arrays[f"{p}.weight"].ndim != 2:
            raise bad(f"has {p}.weight of shape {arrays[p + '.weight'].shape}, which is not a Linear layer "
                      "(only Linear and ReLU layers are supported)")
    weights = [(f"{p}.weight", arrays[f"{p}.weight"]) for p in prefixes]
    biases = [(f"{p}.bias", arrays[f"{p}.bias"]) for p in prefixes if f"{p}.bias" in arrays]
    return weights, biases


def parse_network(data: bytes, path: str, order: tuple[str, ...] | None = None) -> NetworkArrays:
    """Validate and convert the bytes of a network file.

    Raises:
        SpecError: unreadable, unknown or missing keys, shapes that do not chain,
            biases for only some layers, non-numeric or non-finite values.
    """
    bad = functools.partial(_network_error, path)
    named_w, named_b = _name_layers(_raw_arrays(data, path), path)
    weights = tuple(_numeric(np.asarray(w), name, bad) for name, w in named_w)
    for j, ((name, _), w) in enumerate(zip(named_w, weights)):
        if w.ndim != 2 or 0 in w.shape:
            raise bad(f"has {name} of shape {w.shape}, not a non-empty matrix")
        if j and w.shape[1] != weights[j - 1].shape[0]:
            raise bad(f"has {named_w[j - 1][0]} of shape {weights[j - 1].shape} and {name} of shape "
                      f"{w.shape}, which do not chain")
    if not named_b:
        return NetworkArrays(weights, None)
    if len(named_b) != len(weights):
        raise bad(f"has biases {[n for n, _ in named_b]} for only {len(named_b)} of its {len(weights)} "
                  "layers (give a bias for every layer, zeros where there is none, or none at all)")
    biases = tuple(_numeric(np.asarray(b), name, bad) for name, b in named_b)
    for (name, _), b, w in zip(named_b, biases, weights):
        if b.shape != (w.shape[0],):
            raise bad(f"has {name} of shape {b.shape} for a layer of {w.shape[0]} outputs")
    return NetworkArrays(weights, biases)


@functools.lru_cache(maxsize=8)
def load_network(path: str, digest: str, order: tuple[str, ...] | None = None) -> NetworkArrays:
    """A network file as verified against ``digest``; cached per process (workers reuse it)."""
    return parse_network(read_verified(path, digest), path, order)


# --- inputs and labels ----------------------------------------------------------------

def _npy(data: bytes, path: str, field: str, what: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # not an .npy, pickled objects, truncated
        raise SpecError(f"{field}: {path} is not a readable .npy file ({type(e).__name__}: "
                        f"{' '.join(str(e).split())}); expected {what}.") from None


def parse_inputs(data: bytes, path: str, input_dim: int | None) -> np.ndarray:
    """Inputs as an (n, d) float64 array from an .npy of shape (n, d) or (d,).

    Raises:
        SpecError: wrong width, non-numeric or non-finite values, or an all-zero input.
    """
    what = f"an array of inputs of shape (n, d) or (d,){f' with d = {input_dim}' if input_dim else ''}"

    def bad(why: str) -> SpecError:
        return SpecError(f"network.input: {path} {why}; expected {what}, finite real numbers.")

    x = _npy(data, path, "network.input", what)
    x = x[None, :] if x.ndim == 1 else x
    if x.ndim != 2 or 0 in x.shape or input_dim is not None and x.shape[1] != input_dim:
        raise bad(f"holds an array of shape {x.shape}")
    x = _numeric(x, "inputs", bad)
    zero = np.flatnonzero(~x.any(axis=1))
    if zero.size:
        raise bad(f"holds all-zero inputs (rows {zero[:5].tolist()}), whose output change relative to "
                  "||v|| is undefined")
    return x


def parse_labels(data: bytes, path: str, n: int, k: int) -> np.ndarray:
    """Class indices (n,) int64 in [0, k).

    Raises:
        SpecError: wrong length, not integers, or out of range.
    """
    what = f"{n} integer class indices in 0..{k - 1}, one per input"
    y = _npy(data, path, "network.labels", what)
    ok_dtype = y.dtype.kind in "iu" or y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y))
    if y.shape != (n,) or not ok_dtype:
        raise SpecError(f"network.labels: {path} holds an array of shape {y.shape} and dtype {y.dtype}; "
                        f"expected {what}.")
    y = y.astype(np.int64)
    out = np.flatnonzero((y < 0) | (y >= k))
    if out.size:
        raise SpecError(f"network.labels: {path} holds the label {int(y[out[0]])} at position {int(out[0])}; "
                        f"expected {what} (the network has k = {k} outputs).")
    return y


@functools.lru_cache(maxsize=8)
def load_inputs(path: str, digest: str, input_dim: int) -> np.ndarray:
    return parse_inputs(read_verified(path, digest), path, input_dim)


@functools.lru_cache(maxsize=8)
def load_labels(path: str, digest: str, n: int, k: int) -> np.ndarray:
    return parse_labels(read_verified(path, digest), path, n, k)
