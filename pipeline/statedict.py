"""Named tensors (npz, safetensors, torch.save) as a chain of layers, in forward order or refused.

A state dict stores tensors by name, not the order forward() uses them. The
order is read from the names only where they say it:

- ``W1..WL`` and ``b1..bL``;
- numeric ``nn.Sequential`` indices, under any common prefix and nested
  (``0``, ``2``, ``model.layers.4``, ``0.1``): ordered as numbers;
- one numbered stem of Linear layers (``fc1, fc2, fc3``, any common prefix).

Anything else needs ``order``: the module names in forward order, BatchNorm
modules after the Linear they follow. An entry may also be a parent whose
children are all numbered (``features`` for ``features.0, features.3``).

Modules without tensors (activations, Dropout, Flatten) are not in a state
dict, so a BatchNorm is folded only where the file or the user says that it
directly follows its Linear layer (before the activation): the next
Sequential index, or the next entry of ``order``. A numbered ``bnJ`` beside
``fcJ`` could come before or after the activation, so it needs ``order``.

A module is a Linear layer (``weight`` 2-D, optional ``bias``) or a
BatchNorm1d (``running_mean``, ``running_var``, optional ``weight``/``bias``
and ``num_batches_tracked``), which is folded into the Linear layer before
it with eps = 1e-5 (PyTorch's default; a state dict does not store eps).
"""

from __future__ import annotations

import re

import numpy as np

from .netarrays import LayerRead, NetworkArrays, as_float64, assemble, fold_batchnorm

BN_EPS = 1e-5
BN_NOTE = f"eps {BN_EPS:g}, PyTorch's default: a state dict does not store eps"
LINEAR_PARAMS = {"weight", "bias"}
BN_PARAMS = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def how_to_order(names: list[str], modules) -> str:
    """How to give the order, naming what an order may list (never suggesting an order of its own)."""
    parents = [n for n in names if n not in modules]
    parent = ""
    if parents:
        children = sorted((m for m in modules if m.startswith(parents[0] + ".")), key=_natural)
        parent = f"; {parents[0]} stands for its numbered children {', '.join(children)}"
    return (f"give the layer order: the names {', '.join(names)} in the order forward() applies them (each "
            f"BatchNorm after the Linear layer it follows{parent}), as network.layer_order: [first, second, "
            "...] in a spec, or --layer-order first,second,... for estimate")


def read_state_dict(tensors: dict, fmt: str, bad, order: tuple[str, ...] | None = None) -> NetworkArrays:
    """The chain of layers in ``tensors`` ({name: (array, dtype)}).

    Raises:
        ``bad(why)``: names that are neither W/b nor Linear/BatchNorm1d tensors, an order that the names
            do not give (and no ``order``), an ``order`` that does not fit the modules, shapes that do
            not chain, non-numeric or non-finite values.
    """
    if not tensors:
        raise bad("holds no tensors")
    if any(re.fullmatch(r"[Wb]\d+", k) for k in tensors):
        if order is not None:
            raise bad("names its layers W1..WL, which give their order; leave the layer order out",
                      expected=None)
        return _wb_layers(tensors, fmt, bad)
    modules = _modules(tensors, bad)
    layers = _fold_chain(_order(modules, order, bad), modules, tensors, bad, order)
    return assemble(layers, (None,) * (len(layers) - 1), fmt)


# --- W1..WL ----------------------------------------------------------------------------

def _natural(key: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key))


def _wb_layers(tensors: dict, fmt: str, bad) -> NetworkArrays:
    keys = sorted(tensors, key=_natural)
    L = sum(1 for k in keys if k.startswith("W"))
    allowed = {f"W{j}" for j in range(1, L + 1)} | {f"b{j}" for j in range(1, L + 1)}
    stray = [k for k in keys if k not in allowed]
    if stray or L == 0:
        raise bad(f"has the arrays {keys}, of which {stray or keys} are not W1..W{L} or b1..b{L}")
    nb = sum(1 for k in keys if k.startswith("b"))
    if nb and nb != L:
        raise bad(f"has biases {[k for k in keys if k.startswith('b')]} for only {nb} of its {L} layers "
                  "(give a bias for every layer, zeros where there is none, or none at all)")
    layers = []
    for j in range(1, L + 1):
        w = _matrix(f"W{j}", tensors, bad)
        b = _vector(f"b{j}", tensors, w.shape[0], bad) if nb else None
        layers.append((w, b, LayerRead(f"W{j}", f"b{j}" if nb else None, w.shape, None, False,
                                       tensors[f"W{j}"][1])))
    _check_chain(layers, bad)
    return assemble(layers, (None,) * (L - 1), fmt)


def _matrix(name: str, tensors: dict, bad) -> np.ndarray:
    a = as_float64(np.asarray(tensors[name][0]), name, bad)
    if a.ndim != 2 or 0 in a.shape:
        raise bad(f"has {name} of shape {a.shape}, not a non-empty matrix")
    return a


def _vector(name: str, tensors: dict, n: int, bad, layer: str = "a layer") -> np.ndarray:
    a = as_float64(np.asarray(tensors[name][0]), name, bad)
    if a.shape != (n,):
        raise bad(f"has {name} of shape {a.shape} for {layer} of {n} outputs")
    return a


def _check_chain(layers: list, bad, order=None) -> None:
    for (w0, _, r0), (w1, _, r1) in zip(layers, layers[1:]):
        if w1.shape[1] != w0.shape[0]:
            why = (f"has {r0.weight} of shape {w0.shape} and {r1.weight} of shape {w1.shape}, which do not "
                   f"chain ({r1.weight} takes {w1.shape[1]} inputs, {r0.weight} gives {w0.shape[0]})")
            if order is None:
                raise bad(why)
            raise bad(f"{why} in the layer order [{', '.join(order)}]; give the modules in the order forward() "
                      "applies them", expected=None)


# --- modules ---------------------------------------------------------------------------

class Module:
    """One Linear or BatchNorm1d module of a state dict: its name, kind and tensor names."""

    def __init__(self, name: str, params: dict[str, str], tensors: dict, bad):
        self.name, self.params = name, params
        self.shapes = shapes = {p: np.shape(tensors[k][0]) for p, k in params.items()}
        if "running_mean" in params or "running_var" in params:
            self.kind = "batchnorm"
            missing = [f"{name}.{p}" for p in ("running_mean", "running_var") if p not in params]
            if not missing and ("weight" in params) != ("bias" in params):
                missing = [f"{name}.{p}" for p in ("weight", "bias") if p not in params]
            if missing:
                raise bad(f"has the BatchNorm tensors {', '.join(sorted(params.values()))} but not "
                          f"{' or '.join(missing)}", expected=None)
            stray = sorted(set(params) - BN_PARAMS)
            width = shapes["running_mean"]
        elif "weight" in params:
            self.kind = "linear"
            stray = sorted(set(params) - LINEAR_PARAMS)
            if len(shapes["weight"]) != 2:
                raise bad(f"has {name}.weight of shape {shapes['weight']}, which is not a Linear layer (only "
                          "Linear and BatchNorm1d layers hold tensors in an MLP; a 1-D weight is a LayerNorm, "
                          "PReLU, or a BatchNorm1d without running statistics, none of which nnsweep reads)")
            width = None
        else:
            raise bad(f"has {', '.join(sorted(params.values()))} but no {name}.weight")
        if stray:
            raise bad(f"has {', '.join(params[p] for p in stray)}, which is not a tensor of a "
                      f"{'BatchNorm1d' if self.kind == 'batchnorm' else 'Linear'} layer")
        if width is not None and any(shapes[p] != width for p in params if p != "num_batches_tracked"):
            raise bad(f"has the BatchNorm tensors of {name} with shapes "
                      f"{ {params[p]: shapes[p] for p in params} }, which differ", expected=None)


def _modules(tensors: dict, bad) -> dict[str, Module]:
    grouped: dict[str, dict[str, str]] = {}
    for key in tensors:
        if "." not in key:
            raise bad(f"has the arrays {sorted(tensors, key=_natural)}; {key} is neither Wj/bj nor a "
                      "PyTorch <layer>.weight/<layer>.bias name")
        module, param = key.rsplit(".", 1)
        grouped.setdefault(module, {})[param] = key
    return {name: Module(name, params, tensors, bad) for name, params in grouped.items()}


# --- order -----------------------------------------------------------------------------

def _numbered(names: list[str], prefix: tuple[str, ...] = ()) -> list[str] | None:
    """``names`` in numeric order if, past their common prefix (at least ``prefix``), all are numbers."""
    parts = [n.split(".") for n in names]
    common = len(prefix)
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    if len(names) > 1 and all(len(p) > common and all(c.isdigit() for c in p[common:]) for p in parts):
        return sorted(names, key=lambda n: tuple(int(c) for c in n.split(".")[common:]))
    return None


def _stems(modules: dict[str, Module]) -> list[str] | None:
    """fc1, fc2, ... (and bn1, bn2 following them where their width says so), or None."""
    found = {}
    for name, mod in modules.items():
        match = re.fullmatch(r"(.*?)(\d+)", name)
        if not match or not match.group(1) or match.group(1)[-1] == ".":
            return None
        found.setdefault((mod.kind, match.group(1)), []).append((int(match.group(2)), name))
    linear = [s for s in found if s[0] == "linear"]
    bns = [s for s in found if s[0] == "batchnorm"]
    if len(linear) != 1 or len(bns) > 1:
        return None
    numbers = dict(found[linear[0]])
    if len(numbers) != len(found[linear[0]]):
        return None
    after = {}
    for j, bn in (found[bns[0]] if bns else []):
        if j not in numbers or j in after:
            return None
        after[j] = bn
    return [n for j in sorted(numbers) for n in [numbers[j]] + ([after[j]] if j in after else [])]


def _bn_gap(names: list[str], modules: dict[str, Module]) -> str | None:
    """A BatchNorm whose Sequential index is not the one right after its Linear layer's, or None.

    Modules without tensors (ReLU, Dropout) are not in a state dict: a gap in the indices between a
    Linear layer and the BatchNorm after it may be an activation, and a BatchNorm after an activation
    does not fold into the Linear layer."""
    for prev, name in zip(names, names[1:]):
        if modules[name].kind == "batchnorm" and modules[prev].kind == "linear":
            (p0, _, i0), (p1, _, i1) = prev.rpartition("."), name.rpartition(".")
            if p0 != p1 or int(i1) != int(i0) + 1:
                return (f"the BatchNorm1d {name} does not directly follow the Linear layer {prev}: the modules "
                        "between them hold no tensors, and if one is an activation the BatchNorm comes after it "
                        "and does not fold into the Linear layer")
    return None


def _groups(names: list[str]) -> str:
    parts = [n.split(".") for n in names]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    tops = list(dict.fromkeys(".".join(p[:common + 1]) for p in parts))
    if 1 < len(tops) <= 6:
        return f"the order between {', '.join(tops[:-1])} and {tops[-1]} is not in the file"
    return "their names do not say the order"


def _order(modules: dict[str, Module], order, bad) -> list[str]:
    """The modules in forward order: numeric indices (a fact of nn.Sequential, which ``order`` must agree
    with), else ``order``, else one numbered stem (a naming convention, read where it is unambiguous)."""
    names = list(modules)
    numbered = names if len(names) == 1 else _numbered(names)
    gap = _bn_gap(numbered or [], modules)
    if gap:
        raise bad(f"has the modules {', '.join(numbered)}, and {gap}. If the BatchNorm1d directly follows "
                  "its Linear layer, save the model with the BatchNorm right after it; if it follows an "
                  "activation, fold it into the next Linear layer before saving (with s = gamma / "
                  "sqrt(running_var + eps): W' = W * s, column by column, and b' = b + W @ (beta - s * "
                  "running_mean)), since no file format nnsweep reads can carry it there",
                  expected=None)
    if order is not None:
        given = _expand(order, modules, bad)
        if numbered is not None and given != numbered:
            raise bad(f"has modules whose numeric indices give the order {', '.join(numbered)}, and the layer "
                      f"order given is {', '.join(given)}; leave the layer order out (the indices say it), or "
                      "fix it", expected=None)
        return given
    if numbered is not None:
        return numbered
    stem = _stems(modules)
    if stem is None:
        raise bad(f"is a state dict of the modules {', '.join(sorted(names, key=_natural))}, and "
                  f"{_groups(sorted(names, key=_natural))}: a state dict stores tensors by name, not in "
                  f"forward order, and a guessed order can chain and still be wrong. So "
                  f"{how_to_order(_top_names(names), modules)}", expected=None)
    bns = [n for n in stem if modules[n].kind == "batchnorm"]
    if bns:
        raise bad(f"is a state dict of the modules {', '.join(stem)}, and a state dict does not say whether "
                  f"{bns[0]} normalises the output of {stem[stem.index(bns[0]) - 1]} before its activation "
                  f"(relu({bns[0]}(...))) or after it ({bns[0]}(relu(...))); only the first folds into the Linear "
                  "layer. If every BatchNorm directly follows its Linear layer, "
                  f"{how_to_order(stem, modules)}; otherwise export the model to ONNX, which records every "
                  "step", expected=None)
    return stem


def _top_names(names: list[str]) -> list[str]:
    """The shortest entries an order can use: parents of numbered children, else the modules."""
    return list(dict.fromkeys(n.rsplit(".", 1)[0] if "." in n and n.rsplit(".", 1)[1].isdigit() else n
                              for n in names))


def _expand(order, modules: dict[str, Module], bad) -> list[str]:
    """The modules ``order`` names, a parent of numbered children standing for them in numeric order."""
    out, unknown, unnumbered = [], [], []
    for entry in order:
        if entry in modules:
            out.append(entry)
            continue
        children = [n for n in modules if n.startswith(entry + ".")]
        ordered = _numbered(children, tuple(entry.split("."))) if len(children) > 1 else children
        if not children:
            unknown.append(entry)
        elif ordered is None:
            unnumbered.append(f"{entry} ({', '.join(sorted(children, key=_natural))})")
        else:
            out.extend(ordered)
    twice = sorted({n for n in out if out.count(n) > 1}, key=_natural)
    missing = [n for n in sorted(modules, key=_natural) if n not in out]
    problems = []
    if unknown:
        problems.append(f"names {', '.join(unknown)}, which {'is' if len(unknown) == 1 else 'are'} not a "
                        "module of the file")
    if unnumbered:
        problems.append(f"names the parents {'; '.join(unnumbered)}, whose children are not all numbered: "
                        "list those children in order instead")
    if twice:
        problems.append(f"names {', '.join(twice)} twice")
    if missing and not unknown and not unnumbered:
        problems.append(f"leaves out {', '.join(missing)}")
    if problems:
        raise bad(f"has the modules {', '.join(sorted(modules, key=_natural))}, and the layer order "
                  f"[{', '.join(order)}] {'; it '.join(problems)}; give every module once, in forward order",
                  expected=None)
    return out


# --- the chain -------------------------------------------------------------------------

def _fold_chain(names: list[str], modules: dict[str, Module], tensors: dict, bad, order=None) -> list:
    layers, bn_ok = [], False
    for name in names:
        mod = modules[name]
        if mod.kind == "linear":
            w = _matrix(mod.params["weight"], tensors, bad)
            b = _vector(mod.params["bias"], tensors, w.shape[0], bad, name) if "bias" in mod.params else None
            layers.append((w, b, LayerRead(mod.params["weight"], mod.params.get("bias"), w.shape, None, False,
                                           tensors[mod.params["weight"]][1])))
            bn_ok = True
            continue
        if not bn_ok:
            where = ("before the first Linear layer" if not layers else
                     f"after the BatchNorm1d {layers[-1][2].folded.split()[0]}, not a Linear layer")
            raise bad(f"has the BatchNorm1d {name} {where} in the layer order {', '.join(names)}; nnsweep folds "
                      "a BatchNorm only into the Linear layer it directly follows (a BatchNorm of the inputs "
                      "belongs in the inputs: normalise them before saving them)", expected=None)
        w, b, read = layers[-1]
        p = {k: _vector(v, tensors, w.shape[0], bad, f"the BatchNorm1d {name} after {read.weight}")
             for k, v in mod.params.items() if k != "num_batches_tracked"}
        if np.any(p["running_var"] + BN_EPS <= 0):
            raise bad(f"has {mod.params['running_var']} with negative values, which no BatchNorm has",
                      expected=None)
        w, b = fold_batchnorm(w, b, p.get("weight", 1.0), p.get("bias", 0.0), p["running_mean"],
                              p["running_var"], BN_EPS)
        layers[-1] = (w, b, LayerRead(read.weight, read.bias, read.shape, f"{name} ({BN_NOTE})", False,
                                      read.dtype))
        bn_ok = False
    _check_chain(layers, bad, order)
    return layers
