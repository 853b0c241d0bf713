"""Weight, input and label files: read once, validated once, identified by their sha256.

This is the only module that parses user files. The client reads every file a
spec names when the spec is loaded (so a bad file fails before any work) and
records each file's sha256 in the spec; workers read the same path through
:func:`read_verified`, which refuses bytes whose hash differs. So what a worker
computes with is provably what the store's spec hash describes, even if the
file is replaced during a run.

Networks come as ``.npz``, ``.safetensors`` or ``.pt``/``.pth`` (arrays
``W1..WL`` and optionally ``b1..bL``, or a PyTorch state dict of Linear and
BatchNorm1d layers, read in forward order or refused: pipeline.statedict), or
as ``.onnx`` (a graph of linear layers and activations: pipeline.onnxread).
Every reader gives a :class:`NetworkArrays` that says how each layer was read.

>>> import io, numpy as np
>>> buf = io.BytesIO(); np.savez(buf, W1=np.ones((3, 2)), W2=np.ones((1, 3))); data = buf.getvalue()
>>> [w.shape for w in parse_network(data, "net.npz").weights]
[(3, 2), (1, 3)]
"""

from __future__ import annotations

import functools
import hashlib
import io
from pathlib import Path

import numpy as np

from .errors import SpecError
from .netarrays import LayerRead, NetworkArrays, as_float64, network_error

__all__ = ["NETWORK_SUFFIXES", "LayerRead", "NetworkArrays", "parse_network", "load_network", "parse_inputs",
           "parse_labels", "load_inputs", "load_labels", "read_bytes", "read_verified", "sha256"]

NETWORK_SUFFIXES = (".npz", ".safetensors", ".pt", ".pth", ".onnx")


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


# --- networks -------------------------------------------------------------------------

def parse_network(data: bytes, path: str, order: tuple[str, ...] | None = None) -> NetworkArrays:
    """Validate and convert the bytes of a network file, chosen by its suffix.

    Args:
        order: module names in forward order, for a state dict whose names do not give it.

    Raises:
        SpecError: one paragraph naming the tensor, module or node and what to do: unreadable, unknown
            or missing keys, an order the file does not give (and no ``order``), shapes that do not
            chain, unsupported dtypes, layer kinds or graph nodes, non-numeric or non-finite values.
    """
    # the readers only when a file is read: a random-init run (most of them) never imports them
    from . import statedict, tensorfiles
    from .onnxread import read_onnx

    bad = functools.partial(network_error, path)
    if path.endswith(".onnx"):
        if order is not None:
            raise bad("is an ONNX graph, which gives its layer order; leave the layer order out", expected=None)
        return read_onnx(data, bad)
    if path.endswith((".pt", ".pth")):
        tensors, where = tensorfiles.read_pt(data, bad)
        if where is not None:
            bad = functools.partial(network_error, f"{path} (its checkpoint's {where!r})")
        return statedict.read_state_dict(tensors, "pt", bad, order)
    if path.endswith(".safetensors"):
        return statedict.read_state_dict(tensorfiles.read_safetensors(data, bad), "safetensors", bad, order)
    return statedict.read_state_dict(tensorfiles.read_npz(data, bad), "npz", bad, order)


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
    x = as_float64(x, "inputs", bad)
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
