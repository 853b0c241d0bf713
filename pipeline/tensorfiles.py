"""Named tensors out of .npz, .safetensors and .pt/.pth files, with the dtype each was stored in.

Every reader returns ``{name: (array, dtype)}`` in the file's order, where
``array`` is a numpy array that holds the stored values exactly (bfloat16 as
float32) and ``dtype`` names the stored type ("float32", "bfloat16", ...).
What the names mean is pipeline.statedict's business.

.safetensors files are parsed here from their bytes (an 8-byte little-endian
header length, a JSON header of dtype, shape and data_offsets per tensor, then
the data), because safetensors' numpy API has no bfloat16. torch is imported
only for a .pt/.pth file, and is optional.

>>> import json, struct, numpy as np
>>> head = json.dumps({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
>>> data = struct.pack("<Q", len(head)) + head + np.array([0x3FC0, 0xC000], "<u2").tobytes()
>>> read_safetensors(data, ValueError)["w"]
(array([ 1.5, -2. ], dtype=float32), 'bfloat16')
"""

from __future__ import annotations

import io
import json
import re
import struct

import numpy as np

Tensors = dict  # name -> (np.ndarray, dtype name)

#: safetensors dtype -> (numpy dtype of the stored bytes, name); BF16 is converted after reading.
SAFETENSORS_DTYPES = {
    "F64": ("<f8", "float64"), "F32": ("<f4", "float32"), "F16": ("<f2", "float16"), "BF16": ("<u2", "bfloat16"),
    "I64": ("<i8", "int64"), "I32": ("<i4", "int32"), "I16": ("<i2", "int16"), "I8": ("i1", "int8"),
    "U64": ("<u8", "uint64"), "U32": ("<u4", "uint32"), "U16": ("<u2", "uint16"), "U8": ("u1", "uint8"),
}

CONVERT = ("convert the tensor to float32 before saving (model.float()), or to float16 or bfloat16")

PT_TO_SAFETENSORS = ("python -c \"import torch; from safetensors.torch import save_file; "
                     "save_file({k: v.contiguous() for k, v in torch.load('model.pt', weights_only=True).items()}, "
                     "'model.safetensors')\"")


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) as float32: the same bits in the high half of a uint32 (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def read_npz(data: bytes, bad) -> Tensors:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            return {k: (f[k], str(f[k].dtype)) for k in f.files}
    except Exception as e:  # zipfile errors, pickle refusal, truncation: all one user error
        raise bad(f"is not a readable .npz file ({type(e).__name__}: {' '.join(str(e).split())})") from None


def read_safetensors(data: bytes, bad) -> Tensors:
    """The tensors of a .safetensors file, from its raw bytes (every dtype the format has but float8 and bool).

    Raises:
        ``bad(why)``: not a safetensors file, truncated, or a dtype that holds no real numbers.
    """
    unreadable = "is not a readable .safetensors file ({})"
    if len(data) < 8:
        raise bad(unreadable.format(f"{len(data)} bytes, shorter than its 8-byte header length"))
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise bad(unreadable.format(f"a header of {n} bytes in a file of {len(data)}"))
    try:
        header = json.loads(data[8:8 + n])
        assert isinstance(header, dict)
    except (ValueError, AssertionError):
        raise bad(unreadable.format("its header is not a JSON object")) from None
    body = memoryview(data)[8 + n:]
    return {name: _safetensor(name, entry, body, bad, unreadable)
            for name, entry in header.items() if name != "__metadata__"}


def _safetensor(name: str, entry, body: memoryview, bad, unreadable: str):
    try:
        dtype, shape, (begin, end) = entry["dtype"], [int(s) for s in entry["shape"]], entry["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise bad(unreadable.format(f"the header entry of {name} lacks dtype, shape or data_offsets")) from None
    if dtype not in SAFETENSORS_DTYPES:
        raise bad(f"holds {name} of dtype {dtype}, which nnsweep does not read; {CONVERT}")
    stored, kind = SAFETENSORS_DTYPES[dtype]
    size = int(np.prod(shape)) * np.dtype(stored).itemsize
    if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= len(body)) \
            or end - begin != size:
        raise bad(unreadable.format(f"{name}'s data_offsets {[begin, end]} do not hold {size} bytes of a "
                                    f"file body of {len(body)} bytes; is it truncated?"))
    a = np.frombuffer(body[begin:end], dtype=stored).reshape(shape)
    return (bfloat16_to_float32(a) if kind == "bfloat16" else a.astype(a.dtype.newbyteorder("="))), kind


def read_pt(data: bytes, bad) -> tuple[Tensors, str | None]:
    """The state dict of a torch.save file and where it was in the file (None: the top level).

    A checkpoint (a dict of a state dict and other things, such as an epoch or an optimizer state) is
    read if exactly one of its "state_dict" / "model_state_dict" entries is a dict of tensors.

    Raises:
        ``bad(why)``: torch is not installed, a pickled whole model, or no state dict.
    """
    try:
        import torch
    except ImportError:
        raise bad("is a torch.save file, which needs PyTorch to read, and torch is not installed. Install "
                  "it (pip install torch), or convert the file to safetensors where torch is installed: "
                  f"{PT_TO_SAFETENSORS}", expected=None) from None
    try:
        obj = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:  # UnpicklingError for pickled objects; zip/pickle errors for other bytes
        raise bad(_pt_load_error(e), expected=None) from None
    where = None
    if isinstance(obj, dict) and not _is_state_dict(obj, torch):
        nested = [k for k in ("state_dict", "model_state_dict") if isinstance(obj.get(k), dict)]
        if len(nested) != 1 or not _is_state_dict(obj[nested[0]], torch):
            raise bad(f"holds a dict of {_keys(obj)}, which is neither a state dict (names to tensors) nor a "
                      "checkpoint with one state dict under \"state_dict\" or \"model_state_dict\"; save the "
                      "model's state dict alone: torch.save(model.state_dict(), 'model.pt')", expected=None)
        where, obj = nested[0], obj[nested[0]]
    elif not isinstance(obj, dict):
        raise bad(f"holds a {type(obj).__name__}, not a state dict; save the model's state dict: "
                  "torch.save(model.state_dict(), 'model.pt')", expected=None)
    return {k: _torch_tensor(k, t, torch, bad) for k, t in obj.items()}, where


def _is_state_dict(d: dict, torch) -> bool:
    return bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def _keys(d: dict) -> str:
    names = [repr(k) for k in list(d)[:6]]
    return ", ".join(names) + (", ..." if len(d) > 6 else "")


def _pt_load_error(e: Exception) -> str:
    text = " ".join(str(e).split())
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        cls = found.group(1)
        what = ("a pickled whole model" if "torch.nn.modules" in cls or cls.startswith("__main__.")
                else "pickled Python objects besides tensors")
        return (f"is {what} (it needs the class {cls}), which torch can only load by running code from the "
                "file (torch.load(weights_only=False)), and nnsweep does not run code from files. Save the "
                "state dict instead: torch.save(model.state_dict(), 'model.pt'), or export the model with "
                "torch.onnx.export or safetensors.torch.save_file(model.state_dict(), 'model.safetensors')")
    return (f"is not a readable torch.save file ({type(e).__name__}: {text[:200]}); save the model's state "
            "dict with torch.save(model.state_dict(), 'model.pt')")


def _torch_tensor(name: str, t, torch, bad):
    kind = str(t.dtype).removeprefix("torch.")
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.float().numpy(), kind  # exact: bfloat16 is float32 with a shorter mantissa
    if not (t.dtype.is_floating_point or t.dtype in (torch.int8, torch.uint8, torch.int16, torch.int32,
                                                     torch.int64)) or t.is_quantized:
        raise bad(f"holds {name} of dtype {kind}, which nnsweep does not read; {CONVERT}")
    try:
        return t.numpy(), kind
    except (TypeError, RuntimeError):  # float8 and other dtypes numpy lacks
        raise bad(f"holds {name} of dtype {kind}, which nnsweep does not read; {CONVERT}") from None
