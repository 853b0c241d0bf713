"""What a network file holds once read: float64 layers and how each was read.

The readers (pipeline.statedict for .npz/.safetensors/.pt state dicts,
pipeline.onnxread for ONNX graphs) all produce a :class:`NetworkArrays`;
pipeline.files chooses the reader. Nothing here imports a reader, so they can
all import this module.

>>> import numpy as np
>>> layer = LayerRead("fc1.weight", "fc1.bias", (3, 2), "bn1 (eps 1e-05)", False, "bfloat16")
>>> net = NetworkArrays((np.ones((3, 2)),), (np.zeros(3),), (), (layer,), "safetensors")
>>> net.describe()
['W1 <- fc1.weight (3 x 2, bfloat16), b1 <- fc1.bias, BatchNorm1d bn1 folded (eps 1e-05)']
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .errors import SpecError

#: What every network refusal ends with unless the reader says something more specific.
EXPECTED = ("expected 2-D weights W1..WL (n_out x n_in, each W(j+1) with as many columns as Wj has rows) and "
            "optionally bias vectors b1..bL for every layer, a PyTorch state dict of Linear (and BatchNorm1d) "
            "layers (0.weight, 0.bias, 2.weight, ...), or an ONNX graph of such a chain")


def network_error(path: str, why: str, expected: str | None = EXPECTED) -> SpecError:
    """The one-paragraph refusal of a network file: the path, what is wrong, what to do."""
    return SpecError(f"network.init: {path} {why}" + (f"; {expected}." if expected else "."))


@dataclasses.dataclass(frozen=True)
class LayerRead:
    """How one layer W_j (and b_j) was read from the file, for printing and the store's provenance.

    Attributes:
        weight: the tensor (state dict key, npz array, ONNX initializer) that became W_j.
        bias: the tensor that became b_j, or None (no bias, or only the BatchNorm fold's).
        shape: (n_out, n_in) of W_j.
        folded: the BatchNorm folded into the layer and its eps, or None.
        transposed: W_j is the transpose of the stored tensor (ONNX MatMul, Gemm with transB=0).
        dtype: the stored tensor's dtype ("float32", "bfloat16", ...).
    """

    weight: str
    bias: str | None
    shape: tuple[int, int]
    folded: str | None
    transposed: bool
    dtype: str


@dataclasses.dataclass(frozen=True, eq=False)
class NetworkArrays:
    """Weights W1..WL (each n_out x n_in) and biases b1..bL (or None), float64, BatchNorm folded.

    ``activations[j]`` is the activation after hidden layer j + 1 as the file says it (an ONNX
    graph), or None where the file cannot say (state dicts, npz): the spec then says it.
    """

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...] | None
    activations: tuple[str | None, ...]
    layers: tuple[LayerRead, ...]
    format: str

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

    def describe(self) -> list[str]:
        """One line per layer: which tensor became W_j and b_j, its shape and dtype, any fold."""
        return [_describe(j, layer, self.format) for j, layer in enumerate(self.layers, 1)]


def _describe(j: int, layer: LayerRead, fmt: str) -> str:
    n_out, n_in = layer.shape
    line = f"W{j} <- {layer.weight}{' transposed' if layer.transposed else ''} ({n_out} x {n_in}, {layer.dtype})"
    if layer.bias is not None:
        line += f", b{j} <- {layer.bias}"
    elif layer.folded is None:
        line += ", no bias"
    if layer.folded is not None:
        name, _, rest = layer.folded.partition(" (")
        kind = "BatchNormalization" if fmt == "onnx" else "BatchNorm1d"
        line += f", {kind} {name} folded" + (f" ({rest}" if rest else "")
        if layer.bias is None:
            line += f" (b{j} is the fold's alone: the layer has no bias)"
    return line


def as_float64(a: np.ndarray, what: str, bad) -> np.ndarray:
    """``a`` as float64, refusing non-numeric (bool, complex, strings) and non-finite values."""
    if a.dtype.kind not in "fiu" or a.dtype.kind == "f" and a.dtype.itemsize > 8:
        raise bad(f"holds {what} of dtype {a.dtype}; expected real numbers (float or integer)")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise bad(f"holds {what} with {int(np.sum(~np.isfinite(a)))} non-finite values (NaN or inf)")
    return a


def fold_batchnorm(w: np.ndarray, b: np.ndarray | None, gamma: np.ndarray, beta: np.ndarray,
                   mean: np.ndarray, var: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """W', b' of Linear(W, b) followed by BatchNorm (eval): s = gamma / sqrt(var + eps),
    W' = s[:, None] W, b' = s (b - mean) + beta (b = 0 when the Linear has no bias).

    >>> w, b = fold_batchnorm(np.eye(2), None, np.array([2., 1.]), np.zeros(2), np.ones(2), np.full(2, 3.), 1.)
    >>> w.tolist(), b.tolist()
    ([[1.0, 0.0], [0.0, 0.5]], [-1.0, -0.5])
    """
    s = gamma / np.sqrt(var + eps)
    return s[:, None] * w, s * ((0.0 if b is None else b) - mean) + beta


def assemble(layers: list, activations: tuple, fmt: str) -> NetworkArrays:
    """NetworkArrays from [(W, b or None, LayerRead)]: biases None if no layer has one, else zeros where
    a layer has none."""
    weights = tuple(w for w, _, _ in layers)
    biases = None
    if any(b is not None for _, b, _ in layers):
        biases = tuple(np.zeros(w.shape[0]) if b is None else b for w, b, _ in layers)
    return NetworkArrays(weights, biases, tuple(activations), tuple(r for _, _, r in layers), fmt)
