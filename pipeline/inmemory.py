"""Networks, inputs and labels given in memory, written once as content-addressed files.

A spec's ``network.init`` may be a network held in memory instead of a path: a list of weight matrices
(each ``(n_out, n_in)``, as a ``Linear`` layer holds it), a list of ``(W, b)`` pairs, a mapping of names
to arrays (a state dict), or a PyTorch ``nn.Module``. ``network.input``, ``network.labels`` and
``network.clean_outputs`` may be arrays. Each is written once, as ``<sha256>.safetensors`` or
``<sha256>.npy``, into a cache folder (:func:`cache_dir`), and the spec names that file. From there on
it is a file like any other: read by the same code (:mod:`pipeline.files`, the same order and activation
rules and the same refusals), its sha256 in the spec's hash, verified by every worker that reads it. So
nothing reaches a Dask worker that the user cannot see: workers read the cached file, whose path and
hash the store's spec records. For a cluster whose workers do not share this machine's disk, point
``NNSWEEP_CACHE`` (or ``cache_dir``) at a folder they all reach.

A PyTorch module also says what the file cannot: the activation modules it holds (in registration
order, e.g. ``nn.Sequential(Linear, ReLU, Linear)``) become ``network.activation`` unless the spec gives
one, and its own outputs on the inputs (in eval mode, without gradients) become ``network.clean_outputs``,
so the spec is refused, before any work, if the module does not run as the tool reads it (a forward
that is not the chain of its layers, an activation called as a function that is not ReLU).

>>> import numpy as np, tempfile
>>> folder = tempfile.mkdtemp()
>>> raw = materialise({"init": [np.ones((3, 2)), np.ones((1, 3))], "input": np.ones((4, 2))}, folder)
>>> raw["init"].endswith(".safetensors"), raw["input"].endswith(".npy")
(True, True)
>>> raw == materialise({"init": [np.ones((3, 2)), np.ones((1, 3))], "input": np.ones((4, 2))}, folder)
True
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SpecError

# torch module class -> the activation name of pipeline.activations; modules that change nothing are skipped
_TORCH_ACTIVATIONS = {"ReLU": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid", "SiLU": "silu"}
_TORCH_NEUTRAL = ("Linear", "BatchNorm1d", "Dropout", "Identity", "Flatten")


def cache_dir(given: str | os.PathLike | None = None) -> Path:
    """Where in-memory arrays are written: ``given``, else ``$NNSWEEP_CACHE``, else ``~/.cache/nnsweep``."""
    if given is not None:
        return Path(given)
    if os.environ.get("NNSWEEP_CACHE"):
        return Path(os.environ["NNSWEEP_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nnsweep"


def in_memory(value: Any) -> bool:
    """True for anything a spec field may hold besides a string (a path or a name) or nothing."""
    return value is not None and not isinstance(value, (str, os.PathLike))


def _is_torch(value: Any) -> bool:
    torch = sys.modules.get("torch")  # a torch object exists only if torch was imported
    return torch is not None and isinstance(value, (torch.nn.Module, torch.Tensor))


def _array(value: Any, field: str) -> np.ndarray:
    if _is_torch(value):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as e:  # ragged lists, objects numpy cannot hold
        raise SpecError(f"{field}: {type(value).__name__} is not allowed; expected an array of numbers "
                        f"({type(e).__name__}: {' '.join(str(e).split())[:200]}).") from None


def _write(data: bytes, suffix: str, folder: Path) -> str:
    """Write ``data`` as ``<sha256><suffix>`` in ``folder`` unless it is there; the file's path."""
    path = folder / f"{hashlib.sha256(data).hexdigest()}{suffix}"
    if not path.is_file():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)  # atomic: a reader sees the whole file or none
        except OSError as e:
            raise SpecError(f"the cache folder {folder} cannot be written ({e.strerror}); set NNSWEEP_CACHE "
                            "(or cache_dir) to a writable folder that the workers can read.") from None
    return str(path)


def _npy(value: Any, field: str, folder: Path) -> str:
    buf = io.BytesIO()
    arr = _array(value, field)
    if arr.dtype == object:
        raise SpecError(f"{field}: an array of Python objects is not allowed; expected an array of numbers.")
    np.save(buf, arr, allow_pickle=False)
    return _write(buf.getvalue(), ".npy", folder)


def _named_arrays(net: Any) -> dict[str, np.ndarray]:
    """The tensors of a network given as a list of weights, of (W, b) pairs, or a mapping of names."""
    field = "network.init"
    if isinstance(net, Mapping):
        return {str(k): _array(v, f"{field}[{k!r}]") for k, v in net.items()}
    if not isinstance(net, (list, tuple)) or not net:
        raise SpecError(f"{field}: {type(net).__name__} is not allowed; expected a network file's path, a "
                        "non-empty list of weight matrices (n_out, n_in) or of (W, b) pairs, a mapping of "
                        "names to arrays (a state dict), or a PyTorch nn.Module.")
    out = {}
    for j, layer in enumerate(net, 1):
        w, b = (layer if isinstance(layer, (list, tuple)) and len(layer) == 2 else (layer, None))
        out[f"W{j}"] = _array(w, f"{field}[{j - 1}]")
        if b is not None:
            out[f"b{j}"] = _array(b, f"{field}[{j - 1}] bias")
    return out


def _safetensors(tensors: dict[str, np.ndarray], folder: Path) -> str:
    from safetensors.numpy import save

    try:
        data = save({k: np.ascontiguousarray(v) for k, v in tensors.items()})
    except Exception as e:  # dtypes safetensors cannot hold (objects, strings, complex)
        raise SpecError(f"network.init: the arrays cannot be written as a network file ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]}); expected real numbers.") from None
    return _write(data, ".safetensors", folder)


def torch_activations(module: Any) -> list[str]:
    """The activation modules of ``module`` in registration order, as activation names.

    A module the table does not know is named by its class (e.g. ``elu``), so that the spec refuses it
    with the list of allowed activations.
    """
    names, after_last_linear = [], None
    for sub in module.modules():
        kind = type(sub).__name__
        after_last_linear = None if kind == "Linear" else after_last_linear
        if next(sub.children(), None) is not None or kind in _TORCH_NEUTRAL:
            continue
        after_last_linear = after_last_linear or kind
        if kind == "LeakyReLU":
            names.append(f"leaky_relu({sub.negative_slope!r})")
        elif kind == "GELU":
            names.append("gelu_tanh" if sub.approximate == "tanh" else "gelu")
        else:
            names.append(_TORCH_ACTIVATIONS.get(kind, kind.lower()))
    if after_last_linear:
        raise SpecError(f"network.init: the module applies {after_last_linear} after its last Linear layer; "
                        "expected a linear read-out (nnsweep measures the change of the logits): pass the "
                        "module without it, e.g. model[:-1] for an nn.Sequential.")
    return names


def _torch_outputs(module: Any, inputs: np.ndarray) -> np.ndarray:
    """The module's own outputs on ``inputs``, in eval mode and without gradients (its mode is restored)."""
    import torch

    param = next(module.parameters(), None)
    dtype, device = (param.dtype, param.device) if param is not None else (torch.float64, "cpu")
    training = module.training
    try:
        module.eval()
        with torch.no_grad():
            return module(torch.as_tensor(inputs, dtype=dtype, device=device)).double().cpu().numpy()
    except Exception as e:  # wrong widths, a forward that needs more than one tensor
        raise SpecError(f"network.input: the module cannot run on these inputs of shape {inputs.shape} "
                        f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); expected an (n, d) array "
                        "the module takes, d its first Linear layer's in_features.") from None
    finally:
        module.train(training)


def _torch_network(module: Any, raw: dict, folder: Path) -> dict:
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    try:
        init = _write(save(tensors), ".safetensors", folder)
    except RuntimeError as e:  # tensors sharing memory (tied weights)
        raise SpecError(f"network.init: the module's state dict cannot be written as safetensors "
                        f"({' '.join(str(e).split())[:300]}); expected a chain of Linear layers.") from None
    out = {**raw, "init": init}
    acts = torch_activations(module)
    if out.get("activation") is None and acts:
        out["activation"] = acts[0] if len(set(acts)) == 1 else acts
    if out.get("clean_outputs") is None and isinstance(out.get("input"), str) and out["input"].endswith(".npy"):
        x = np.load(out["input"], allow_pickle=False)
        out["clean_outputs"] = _npy(_torch_outputs(module, x[None, :] if x.ndim == 1 else x),
                                    "network.clean_outputs", folder)
    return out


def materialise(raw: dict, folder: str | os.PathLike | None = None) -> dict:
    """The ``network`` section of a raw spec with every in-memory value replaced by the path of its file.

    Args:
        raw: the spec's ``network`` mapping; strings (paths, names) are left as they are.
        folder: the cache folder (default: :func:`cache_dir`).

    Raises:
        SpecError: a value that is neither a path nor arrays of numbers, or a cache folder that cannot be written.
    """
    keys = ("init", "input", "labels", "clean_outputs")
    out = {k: os.fspath(v) if isinstance(v, os.PathLike) and k in keys else v for k, v in raw.items()}
    if not any(in_memory(out.get(k)) for k in keys):
        return out
    where = cache_dir(folder)
    for key in ("input", "labels", "clean_outputs"):
        if in_memory(out.get(key)):
            out[key] = _npy(out[key], f"network.{key}", where)
    net = out.get("init")
    if _is_torch(net) and hasattr(net, "state_dict"):
        return _torch_network(net, out, where)
    if in_memory(net):
        out["init"] = _safetensors(_named_arrays(net), where)
    return out
