"""Sweep specs: load and validate a sweep file into an immutable object.

Every other stage receives a :class:`Spec`, never a raw dict. Invalid input
fails here, before any work starts, with a message that names the field, the
value and what is allowed.

>>> spec = Spec.from_dict({"grid": {"L": [2, 4], "m": [16], "ratio": [0.1], "seeds": 3}})
>>> spec.grid.layer, spec.grid.seeds
((1, 2, 3, 4), (0, 1, 2))
>>> len(spec.hash)
64
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import re
import reprlib
import string
from pathlib import Path
from typing import Any

import numpy as np

from .activations import canonical, per_layer
from .errors import SpecError
from .schema import TOGETHER, TOGETHER_NAME
from .files import NETWORK_SUFFIXES, NetworkArrays, parse_inputs, parse_labels, parse_network, read_bytes, sha256
from .inmemory import materialise
from .network import clean_output_mismatch
from .sizes import check_sizes

INITS = ("he", "xavier", "orthogonal")
DISTRIBUTIONS = ("gaussian", "rademacher", "sphere")
NORMS = ("frobenius", "spectral")

# A name becomes a file name (results/<name>.zarr): letters, digits, '.', '_', '-'.
NAME_RULE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
# Two ratios closer than this (relative) are one coordinate: `--sel ratio=` matches with it.
RATIO_RTOL = 1e-9
# The smallest ratio whose accuracy is tested, in float64 and float32 (tests/test_spec.py::
# test_min_ratio_is_resolved, tests/test_precision.py). The kernel carries differences from the
# clean pass, so nothing breaks just below it; it keeps typos such as 1e-100 out of a sweep.
MIN_RATIO = 1e-10
# The user's clean outputs and the tool's may differ by this much of the largest output: float32
# exports computed in float32 agree to about 1e-6; a layer order or activation guessed wrong is off by O(1).
CLEAN_OUTPUTS_TOLERANCE = 1e-4

_short = reprlib.Repr()  # keyword arguments need Python 3.12
_short.maxstring, _short.maxother, _short.maxlist, _short.maxtuple, _short.maxdict, _short.maxlevel = \
    60, 60, 8, 8, 6, 3


def short(value: Any) -> str:
    """A repr of ``value`` cut to at most 100 characters, for error messages.

    >>> short(list(range(100)))
    '[0, 1, 2, 3, 4, 5, 6, 7, ...]'
    >>> len(short([[["x" * 50] * 8] * 8] * 8))
    100
    """
    text = _short.repr(value)
    return text if len(text) <= 100 else text[:96] + " ..."


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """The networks and their inputs.

    ``init`` is one of :data:`INITS`, the absolute path of one network file
    (``.npz`` or ``.safetensors``, see :mod:`pipeline.files`), or a path
    template such as ``models/net_L{L}_m{m}_seed{seed}.safetensors`` that names
    one file per grid cell. ``input`` is ``"gaussian"`` (``n_inputs`` standard
    normal inputs from the random seed) or the absolute path of a ``.npy`` of
    shape (n, d) or (d,); ``labels`` the path of a ``.npy`` of n class indices.
    ``activation`` is the activation of every hidden layer (a name of
    :mod:`pipeline.activations`) or a list with one per hidden layer; None
    means "as the network file says" (an ONNX graph names its activations).
    ``layer_order`` lists a state dict's module names in forward order where
    the file cannot say it; ``clean_outputs`` is the path of a ``.npy`` of the
    user's own clean outputs on ``input`` (n x k), compared with the tool's
    clean pass when the spec is loaded, to ``clean_outputs_tolerance`` of the
    largest output. ``files`` holds (role, path, sha256) of every file read,
    in a fixed order: workers refuse a file whose bytes no longer match.
    ``read`` says how each network file was read (:class:`NetworkRead`).
    """

    input_dim: int = 784
    output_dim: int = 10
    init: str = "he"
    bias_std: float = 0.0
    weight_norm_bound: float | None = None
    input: str = "gaussian"
    n_inputs: int = 1
    labels: str | None = None
    activation: str | tuple[str, ...] | None = "relu"
    layer_order: tuple[str, ...] | None = None
    clean_outputs: str | None = None
    clean_outputs_tolerance: float = CLEAN_OUTPUTS_TOLERANCE
    files: tuple[tuple[str, str, str], ...] = ()
    read: tuple[NetworkRead, ...] = ()

    @property
    def init_kind(self) -> str:
        """``random``, ``file`` (one network for the whole grid) or ``template`` (one file per cell)."""
        if self.init in INITS:
            return "random"
        return "template" if "{" in self.init else "file"

    @property
    def init_is_file(self) -> bool:
        return self.init_kind != "random"

    @property
    def one_network(self) -> bool:
        """True when every cell of the grid is the same network (a single file)."""
        return self.init_kind == "file"

    def file(self, role: str) -> tuple[str, str]:
        """(path, sha256) of the file read for ``role`` (``init``, ``input``, ``labels``, or a cell)."""
        for r, path, digest in self.files:
            if r == role:
                return path, digest
        raise KeyError(role)

    def network_role(self, L: int, m: int, seed: int) -> str:
        return "init" if self.init_kind == "file" else cell_role(L, m, seed)

    def network_file(self, L: int, m: int, seed: int) -> tuple[str, str]:
        """(path, sha256) of the network file of one grid cell."""
        return self.file(self.network_role(L, m, seed))

    def reading(self, L: int, m: int, seed: int) -> NetworkRead:
        """How the network file of one grid cell was read."""
        role = self.network_role(L, m, seed)
        return next(r for r in self.read if r.role == role)

    def activations(self, L: int, m: int, seed: int) -> tuple[str, ...]:
        """The activation after each hidden layer of one grid cell's network."""
        if self.init_is_file:
            return self.reading(L, m, seed).activations
        return per_layer(self.activation, L)


@dataclasses.dataclass(frozen=True)
class NetworkRead:
    """How one network file was read: which tensor became which layer, its shape, the activation after it.

    Printed by every command that reads a network, and recorded in the
    store (it is part of the spec's provenance, not of its hash: the file's
    sha256 and the spec's fields already determine it).
    """

    role: str
    path: str
    format: str
    widths: tuple[int, ...]
    activations: tuple[str, ...]
    lines: tuple[str, ...]
    activation_source: str  # "the file" or "the spec" or "the default"

    def text(self) -> str:
        head = (f"{self.path} ({self.format}): {len(self.widths) - 1} layers, widths "
                f"{'-'.join(map(str, self.widths))}, activations from {self.activation_source}")
        return "\n".join([head] + [f"  {line}" for line in self.lines])

    def inline(self) -> str:
        """:meth:`text` on one line, for an error message."""
        return self.text().replace("\n  ", "; ")




def cell_role(L: int, m: int, seed: int) -> str:
    return f"init L={L} m={m} seed={seed}"


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """The swept axes, each sorted; :func:`pipeline.plan.all_blocks` cuts their product into blocks."""

    L: tuple[int, ...]
    m: tuple[int, ...]
    ratio: tuple[float, ...]
    layer: tuple[int, ...]
    seeds: tuple[int, ...]  # a range until the grid's size has been checked


@dataclasses.dataclass(frozen=True)
class NoiseSpec:
    """The noise model: distribution, the norm that sets its size, draws per cell."""

    distribution: str = "gaussian"
    norm: str = "frobenius"
    draws: int = 16
    biases: bool = False  # the together cells (layer 0) perturb each b_j too, ||eta_b|| = r ||b_j||_2


PRECISIONS = ("float64", "float32")


@dataclasses.dataclass(frozen=True)
class ComputeSpec:
    """How the numbers are computed: the precision of weights, noise and matrix products.

    float32 halves memory traffic and roughly doubles the GEMM rate; norms and
    sums are accumulated in float64 either way (docs/performance.md gives the
    accuracy of each).
    """

    precision: str = "float64"

    @property
    def dtype(self):
        return np.dtype(self.precision)


@dataclasses.dataclass(frozen=True)
class ExecutionSpec:
    """Layout and execution settings. They never change a number."""

    seeds_per_block: int = 4
    storage_options: tuple[tuple[str, Any], ...] = ()  # fsspec options for a store URL


@dataclasses.dataclass(frozen=True)
class Spec:
    """A validated sweep: what determines the results, plus execution settings."""

    name: str
    description: str
    random_seed: int
    network: NetworkSpec
    grid: GridSpec
    noise: NoiseSpec
    execution: ExecutionSpec
    compute: ComputeSpec = ComputeSpec()
    source: str | None = None  # the file it was read from, for messages only

    @classmethod
    def from_dict(cls, raw: Any, source: str | None = None, base_dir: Path | None = None,
                  names: dict[str, str] | None = None, cache_dir: str | Path | None = None) -> Spec:
        """Validate a parsed spec. Relative file paths resolve against ``base_dir``.

        ``names`` renames fields in error messages (the CLI maps ``grid.L`` to ``--L``). A network,
        inputs or labels given in memory are written to ``cache_dir`` first (:mod:`pipeline.inmemory`).
        """
        return _Validator(source, base_dir or Path.cwd(), names, cache_dir).spec(raw)

    def to_dict(self) -> dict:
        """The spec as plain data (what a store records as provenance)."""
        d = dataclasses.asdict(self)
        d.pop("source")
        d["grid"] = {k: list(v) for k, v in d["grid"].items()}
        d["network"]["files"] = [list(f) for f in self.network.files]
        d["network"]["read"] = [dataclasses.asdict(r) for r in self.network.read]
        # option names only: values may be credentials and the dict is written to the store
        d["execution"]["storage_options"] = sorted(k for k, _ in self.execution.storage_options)
        if not self.noise.biases:  # the default is left out: specs made before the field keep their record
            d["noise"].pop("biases")
        return d

    @classmethod
    def from_record(cls, d: dict) -> Spec:
        """The spec a store records (:meth:`to_dict`), rebuilt as it was validated, without reading a file.

        >>> spec = Spec.from_dict({"grid": {"L": [2], "m": [4], "ratio": [0.1, 0.2]}})
        >>> Spec.from_record(spec.to_dict()).hash == spec.hash
        True
        """
        net = dict(d["network"])
        net["files"] = tuple(tuple(f) for f in net["files"])
        net["read"] = tuple(NetworkRead(**{k: tuple(v) if isinstance(v, list) else v for k, v in r.items()})
                            for r in net["read"])
        for key in ("activation", "layer_order"):
            net[key] = tuple(net[key]) if isinstance(net[key], list) else net[key]
        return cls(d["name"], d["description"], d["random_seed"], NetworkSpec(**net),
                   GridSpec(**{k: tuple(v) for k, v in d["grid"].items()}), NoiseSpec(**d["noise"]),
                   ExecutionSpec(d["execution"]["seeds_per_block"]), ComputeSpec(**d.get("compute", {})))

    @property
    def result_fields(self) -> dict:
        """Everything that determines a number: files by content (sha256), never by path."""
        return result_fields(self.to_dict())

    @property
    def hash(self) -> str:
        """A stable sha256 over :attr:`result_fields`; resuming requires it to match."""
        text = json.dumps(self.result_fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def with_execution(self, **changes) -> Spec:
        """A copy with other execution settings; the hash does not change."""
        ex = _Validator(self.source, Path.cwd()).execution({**dataclasses.asdict(self.execution), **changes})
        spec = dataclasses.replace(self, execution=ex)
        check_sizes(spec)
        return spec


def result_fields(d: dict) -> dict:
    """:attr:`Spec.result_fields` of a spec given as plain data (:meth:`Spec.to_dict`, as a store records it)."""
    d = json.loads(json.dumps(d))  # a deep copy
    for key in ("name", "description", "execution"):
        d.pop(key, None)
    net = d["network"]
    if net["init"] not in INITS:
        net["init"] = "template" if "{" in net["init"] else "file"
    net["input"] = "gaussian" if net["input"] == "gaussian" else "file"
    net["labels"] = net["labels"] is not None
    net["files"] = {role: digest for role, _, digest in net["files"]}
    # how the files were read follows from their bytes and the fields below; the clean-output check changes
    # no number; the defaults are left out so that specs made before these fields existed keep their hash
    for key in ("read", "clean_outputs", "clean_outputs_tolerance"):
        net.pop(key, None)
    if net.get("activation", "relu") in ("relu", None):
        net.pop("activation", None)
    if net.get("layer_order") is None:
        net.pop("layer_order", None)
    if not d.get("noise", {}).get("biases", False):
        d.get("noise", {}).pop("biases", None)
    return d


def differences(old: Any, new: Any, field: str = "") -> list[tuple[str, Any, Any]]:
    """The fields (dotted names) whose values differ between two specs given as plain data.

    >>> differences({"grid": {"m": [8], "L": [2]}}, {"grid": {"m": [8, 16], "L": [2]}})
    [('grid.m', [8], [8, 16])]
    """
    if isinstance(old, dict) and isinstance(new, dict):
        return [diff for key in sorted(set(old) | set(new), key=str)
                for diff in differences(old.get(key), new.get(key), f"{field}.{key}" if field else str(key))]
    return [] if old == new else [(field, old, new)]


def load_spec(path: str | Path) -> Spec:
    """Read and validate a sweep file (YAML, read with :mod:`pipeline.yamlload`: a safe
    loader where ``1e-3`` is a number and a repeated key is an error).

    Raises:
        SpecError: the file is missing, is not YAML, or does not validate.
    """
    import yaml  # local: only a sweep file is YAML; `nnsweep estimate` builds its spec from options

    from . import yamlload

    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {str(path)!r} does not exist or is not a file; "
                        "pass the path of a sweep file such as sweeps/quickstart.yaml.")
    try:
        raw = yamlload.load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        detail = " ".join(str(e).split())
        raise SpecError(f"{path}: not valid YAML ({detail}); a sweep file is a YAML mapping "
                        "with the sections network, grid, noise and execution.") from None
    spec = Spec.from_dict(raw, source=str(path), base_dir=path.resolve().parent)
    if not spec.name:
        spec = dataclasses.replace(spec, name=path.stem)
    return spec


class _Validator:
    """Turns raw YAML data into a Spec, or raises SpecError naming the field."""

    SECTIONS = {"name", "description", "random_seed", "network", "grid", "noise", "compute", "execution"}

    def __init__(self, source: str | None, base_dir: Path, names: dict[str, str] | None = None,
                 cache_dir: str | Path | None = None):
        self.source = source
        self.cache_dir = cache_dir
        self.base_dir = base_dir
        self.names = names or {}
        self.order: tuple[str, ...] | None = None  # network.layer_order, once read

    def fail(self, field: str, value: Any, allowed: str) -> SpecError:
        where = f"{self.source}: " if self.source else ""
        return SpecError(f"{where}{self.names.get(field, field)}: {short(value)} is not allowed; expected {allowed}.")

    def rename(self, e: SpecError) -> SpecError:
        """A file error (which names a spec field first) in this validator's field names."""
        field, sep, rest = str(e).partition(": ")
        where = f"{self.source}: " if self.source else ""
        return SpecError(f"{where}{self.names.get(field, field)}{sep}{rest}")

    def mapping(self, raw: Any, field: str, allowed_keys: set[str]) -> dict:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.fail(field or "spec", raw, f"a mapping with the keys {sorted(allowed_keys)}")
        unknown = sorted(set(map(str, raw)) - allowed_keys)
        if unknown:
            key = f"{field}.{unknown[0]}" if field else unknown[0]
            where = f"{self.source}: " if self.source else ""
            raise SpecError(f"{where}unknown key {key!r}; the keys allowed "
                            f"{'in ' + field if field else 'at the top level'} are {sorted(allowed_keys)}.")
        return raw

    def int_(self, v: Any, field: str, lo: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise self.fail(field, v, f"an integer >= {lo}")
        return v

    def float_(self, v: Any, field: str, positive: bool = False, nonneg: bool = False) -> float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if ok and positive and v <= 0 or ok and nonneg and v < 0 or not ok:
            what = "> 0" if positive else ">= 0" if nonneg else ""
            raise self.fail(field, v, f"a finite number {what}".rstrip())
        return float(v)

    def choice(self, v: Any, field: str, allowed: tuple[str, ...]) -> str:
        if v not in allowed:
            raise self.fail(field, v, "one of " + ", ".join(allowed))
        return v

    def axis(self, v: Any, field: str, item) -> tuple:
        values = v if isinstance(v, list) else [v]
        if not values:
            raise self.fail(field, v, "a non-empty list")
        out = tuple(item(x, field) for x in values)
        if len(set(out)) != len(out):
            raise self.fail(field, v, "a list without repeated values")
        return tuple(sorted(out))

    def ratios(self, v: Any) -> tuple[float, ...]:
        out = self.axis(v, "grid.ratio", lambda x, f: self.float_(x, f, positive=True))
        if out[0] < MIN_RATIO:
            raise self.fail("grid.ratio", out[0], f"ratios >= {MIN_RATIO:g}, the smallest ratio whose accuracy "
                            "is tested (a change of 1e-10 relative is already far below what any metric of a "
                            "network can show)")
        for a, b in zip(out, out[1:]):
            if b - a <= RATIO_RTOL * b:
                raise self.fail("grid.ratio", [a, b], f"ratios that differ by more than {RATIO_RTOL:g} relative; "
                                "these two are one value to `nnsweep query --sel` and to a reader of the store")
        return out

    def path(self, v: Any, field: str, suffix: str, what: str) -> str:
        if not isinstance(v, str) or not v.endswith(suffix):
            raise self.fail(field, v, what)
        p = (self.base_dir / v).resolve()
        if not p.is_file():
            raise self.fail(field, v, f"{what} (no such file: {p})")
        return str(p)

    def spec(self, raw: Any) -> Spec:
        raw = self.mapping(raw, "", self.SECTIONS)
        name = raw.get("name", "")
        if not isinstance(name, str) or name and not NAME_RULE.fullmatch(name):
            raise self.fail("name", name, "a name of 1 to 100 letters, digits, '.', '_' or '-', not starting "
                            "with '.' or '-' (it names the store file)")
        description = raw.get("description", "")
        if not isinstance(description, str):
            raise self.fail("description", description, "a string")
        random_seed = self.int_(raw.get("random_seed", 0), "random_seed", 0)
        net_raw = self.mapping(raw.get("network"), "network", {f.name for f in dataclasses.fields(NetworkSpec)}
                               - {"files", "read"})
        try:
            net_raw = materialise(net_raw, self.cache_dir)  # in-memory networks and arrays become files
        except SpecError as e:
            raise self.rename(e) from None
        init = self.init(net_raw.get("init", NetworkSpec.init))
        self.order = self.layer_order(net_raw.get("layer_order"), init)
        single = self.read_network(init, "init") if init not in INITS and "{" not in init else None
        grid = self.grid(raw.get("grid"), single)
        if "{" in init and "{seed}" not in init and len(grid.seeds) > 1:
            raise self.fail("grid.seeds", len(grid.seeds), f"1, because the template {init} has no {{seed}}: "
                            "every seed would be the same network")
        network = self.network(net_raw, init, single, grid)
        noise = self.noise(raw.get("noise"))
        if noise.biases and TOGETHER not in grid.layer:
            raise self.fail("noise.biases", True, f"false unless grid.layer includes '{TOGETHER_NAME}': only the "
                            "cells with noise in every layer at once perturb biases")
        execution = self.execution(raw.get("execution"))
        compute = self.compute(raw.get("compute"))
        spec = Spec(name, description, random_seed, network, grid, noise, execution, compute, self.source)
        check_sizes(spec)  # before a seed list is built: a count can be 10**9
        grid = dataclasses.replace(grid, seeds=tuple(grid.seeds))
        return Spec(name, description, random_seed, network, grid, noise, execution, compute, self.source)

    def init(self, v: Any) -> str:
        allowed = (f"{', '.join(INITS)}, the path of a network file ({' or '.join(NETWORK_SUFFIXES)}), "
                   "or a path template with {L}, {m} and {seed}, e.g. models/net_L{L}_m{m}_seed{seed}.safetensors")
        if v in INITS:
            return v
        if not isinstance(v, str) or not v.endswith(NETWORK_SUFFIXES):
            raise self.fail("network.init", v, allowed)
        try:  # (field, format spec, conversion) of every placeholder
            holes = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(v) if f is not None]
        except ValueError:  # an unmatched brace
            holes = [("?", "", None)]
        fields = {f for f, _, _ in holes}
        if fields - {"L", "m", "seed"} or any(spec or conv for _, spec, conv in holes):
            raise self.fail("network.init", v, allowed + " (no other placeholders or formats)")
        return str((self.base_dir / v).resolve()) if fields else self.path(v, "network.init", NETWORK_SUFFIXES,
                                                                         allowed)

    def layer_order(self, v: Any, init: str) -> tuple[str, ...] | None:
        if v is None:
            return None
        if isinstance(v, str):
            v = [p.strip() for p in v.split(",")]
        what = ("null, or the module names of a state dict in forward order, e.g. [stem, body, top] (the "
                "prefixes of their .weight tensors)")
        if init in INITS:
            raise self.fail("network.layer_order", v, f"null with network.init: {init} (an order is read from "
                            "a network file only)")
        if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v) \
                or len(set(v)) != len(v):
            raise self.fail("network.layer_order", v, what)
        return tuple(v)

    def read_network(self, path: str, role: str, cell: str = "") -> tuple[NetworkArrays, tuple[str, str, str]]:
        """Parse one network file on the client: (arrays, (role, path, sha256))."""
        if not Path(path).is_file():
            raise self.fail("network.init", path, f"an existing network file{cell}")
        data = read_bytes(path, self.names.get("network.init", "network.init"))
        try:
            arrays = parse_network(data, path, self.order)
        except SpecError as e:
            raise self.rename(SpecError(f"{e}{cell}")) from None
        return arrays, (role, path, sha256(data))

    def activation(self, v: Any, field: str = "network.activation") -> str | tuple[str, ...]:
        """A canonical name, or a tuple of names (one per hidden layer)."""
        try:
            if isinstance(v, list):
                if not v:
                    raise self.fail(field, v, "an activation name, or a non-empty list of one per hidden layer")
                return tuple(canonical(x) for x in v)
            return canonical(v)
        except SpecError as e:
            raise self.rename(e) from None

    def resolve_activations(self, given: Any, arrays: NetworkArrays, path: str, cell: str) -> tuple[tuple, str]:
        """The activation after each hidden layer of a file's network, and where it came from.

        A file that names its activations (an ONNX graph) is followed, and a spec that says
        otherwise is refused; a file that cannot say (a state dict) takes the spec's, or ReLU.
        """
        L = arrays.depth
        from_file = [a for a in arrays.activations if a is not None]
        if len(from_file) == L - 1 and L > 1:
            file_acts = tuple(canonical(a) for a in arrays.activations)
            if given is not None:
                want = per_layer(self.activation(given), L)
                if want != file_acts:
                    raise self.fail("network.activation", given,
                                    f"{list(file_acts)}, the activations that {path}{cell} itself applies "
                                    "(or leave network.activation out: the file's are used)")
            return file_acts, "the file"
        act = self.activation(given) if given is not None else "relu"
        acts = per_layer(act, L)
        if len(acts) != L - 1:
            raise self.fail("network.activation", given, f"one name, or a list of {L - 1} names (one per hidden "
                            f"layer of {path}{cell})")
        return acts, "the spec" if given is not None else "the default (relu: the file does not say)"

    def reading(self, arrays: NetworkArrays, entry: tuple[str, str, str], given: Any, cell: str) -> NetworkRead:
        role, path, _ = entry
        acts, source = self.resolve_activations(given, arrays, path, cell)
        lines = list(arrays.describe())
        lines = [f"{line}, then {acts[j]}" if j < len(acts) else f"{line}, linear read-out"
                 for j, line in enumerate(lines)]
        widths = (arrays.input_dim,) + tuple(w.shape[0] for w in arrays.weights)
        return NetworkRead(role, path, arrays.format, widths, acts, tuple(lines), source)

    def network(self, raw: dict, init: str, single, grid: GridSpec) -> NetworkSpec:
        d = NetworkSpec()
        files, read, cells = [], [], []
        given = raw.get("activation")
        if init in INITS:
            dims = (raw.get("input_dim", d.input_dim), raw.get("output_dim", d.output_dim))
            activation = self.activation(given) if given is not None else "relu"
            if isinstance(activation, tuple) and any(len(activation) != L - 1 for L in grid.L):
                raise self.fail("network.activation", given, f"one name, or a list of one per hidden layer "
                                f"({max(grid.L) - 1} names) with a single L (grid.L is {list(grid.L)})")
        else:
            cells = self.network_files(init, single, grid)
            files = [f for _, f in cells]
            dims = self.file_dims(raw, cells)
            read = [self.reading(arrays, entry, given, f" ({entry[0]})" if entry[0] != "init" else "")
                    for arrays, entry in cells]
            activation = (None if all(r.activation_source == "the file" for r in read)
                          else self.activation(given) if given is not None else "relu")
        input_dim = self.int_(dims[0], "network.input_dim", 1)
        output_dim = self.int_(dims[1], "network.output_dim", 1)
        bias_std = self.float_(raw.get("bias_std", d.bias_std), "network.bias_std", nonneg=True)
        if init not in INITS and bias_std:
            raise self.fail("network.bias_std", bias_std,
                            "0 with a network file (its biases, if any, come from the file)")
        bound = raw.get("weight_norm_bound", None)
        if bound is not None:
            bound = self.float_(bound, "network.weight_norm_bound", positive=True)
        inp, n_inputs = self.inputs(raw, input_dim, files)
        labels = raw.get("labels", None)
        if labels is not None:
            labels = self.path(labels, "network.labels", ".npy", "null or the path of a .npy of class indices")
            data = read_bytes(labels, "network.labels")
            try:
                parse_labels(data, labels, n_inputs, output_dim)
            except SpecError as e:
                raise self.rename(e) from None
            files.append(("labels", labels, sha256(data)))
        tolerance = self.float_(raw.get("clean_outputs_tolerance", d.clean_outputs_tolerance),
                                "network.clean_outputs_tolerance", positive=True)
        clean = raw.get("clean_outputs")
        if clean is not None:
            clean = self.check_clean_outputs(clean, init, inp, cells, read, tolerance)
        return NetworkSpec(input_dim, output_dim, init, bias_std, bound, inp, n_inputs, labels, activation,
                           self.order, clean, tolerance, tuple(files), tuple(read))

    def check_clean_outputs(self, v: Any, init: str, inp: str, cells: list, read: list, tolerance: float) -> str:
        """The user's clean outputs against the tool's clean pass of every network file, before any work."""
        field = "network.clean_outputs"
        what = ("null, or the path of a .npy of your own network's outputs on network.input, shape (n, k) "
                "(e.g. model(x).detach().numpy()), with {L}, {m}, {seed} for a path template of networks")
        if init in INITS:
            raise self.fail(field, v, "null with a random-init network (compare outputs of a network file)")
        if not isinstance(v, str) or not v.endswith(".npy"):
            raise self.fail(field, v, what)
        if inp == "gaussian":
            raise self.fail("network.input", inp, f"a .npy of inputs when {self.names.get(field, field)} is given "
                            "(the outputs compared are those of these inputs)")
        if "{" in init and "{" not in v and len(cells) > 1:
            raise self.fail(field, v, what + f"; one file cannot hold the outputs of {len(cells)} networks")
        x = parse_inputs(read_bytes(inp, "network.input"), inp, None)
        for (arrays, (role, path, _)), r in zip(cells, read):
            cell = dict(zip(("L", "m", "seed"), map(int, re.findall(r"=(\d+)", role)))) if role != "init" else {}
            p = self.path(v.format(**cell) if cell else v, field, ".npy", what)
            y = self.outputs_file(p, x.shape[0], arrays.output_dim)
            bad = clean_output_mismatch(arrays, r.activations, x, y, tolerance)
            if bad:
                where = f"{self.source}: " if self.source else ""
                raise SpecError(
                    f"{where}{self.names.get(field, field)}: the network was not read as it runs: the tool's clean "
                    f"outputs of {path} differ from yours in {p} ({bad}; the tolerance is {tolerance:g} of the "
                    "largest output). Check the layer order (network.layer_order / --layer-order), the activation "
                    f"(network.activation / --activation: now {', '.join(dict.fromkeys(r.activations)) or 'none'}), "
                    "and that the outputs come from these weights in eval mode on these inputs. The tool read it "
                    f"as {r.inline()}. Nothing was run.")
        return v

    def outputs_file(self, path: str, n: int, k: int):
        field = "network.clean_outputs"
        data = read_bytes(path, field)
        try:
            y = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as e:  # not an .npy, pickled objects, truncated
            raise self.fail(field, path, f"a readable .npy ({type(e).__name__})") from None
        y = y[:, None] if y.ndim == 1 and k == 1 else y
        if y.shape != (n, k) or y.dtype.kind not in "fiu" or not np.all(np.isfinite(y)):
            raise self.fail(field, path, f"an array of shape ({n}, {k}) of finite numbers, the outputs of the {n} "
                            f"inputs (it holds shape {y.shape}, dtype {y.dtype})")
        return y.astype(np.float64)

    def network_files(self, init: str, single, grid: GridSpec) -> list:
        """(arrays, file entry) of every network file, checked against its grid cell."""
        if single is not None:
            return [single]
        cells = []
        for L in grid.L:
            for m in grid.m:
                for seed in grid.seeds:
                    cell = f" (grid cell L={L}, m={m}, seed={seed})"
                    path = init.format(L=L, m=m, seed=seed)
                    arrays, entry = self.read_network(path, cell_role(L, m, seed), cell)
                    if arrays.depth != L or L > 1 and max(arrays.hidden_widths) != m:
                        raise self.fail("network.init", path, f"a network of L = {L} layers whose widest hidden "
                                        f"layer has m = {m} units{cell}; the file has {arrays.depth} layers of "
                                        f"hidden widths {list(arrays.hidden_widths)}")
                    cells.append((arrays, entry))
        return cells

    def file_dims(self, raw: dict, cells: list) -> tuple[int, int]:
        """input_dim and output_dim: read from the files, and equal to the spec's where it gives them."""
        (first, (_, path, _)), *_ = cells
        for key, value, get in (("input_dim", first.input_dim, lambda a: a.input_dim),
                                ("output_dim", first.output_dim, lambda a: a.output_dim)):
            for arrays, (_, p, _) in cells:
                if get(arrays) != value:
                    raise self.fail("network.init", p, f"networks of one {key}; {path} has {value}, "
                                    f"{p} has {get(arrays)}")
            if key in raw and raw[key] != value:
                raise self.fail(f"network.{key}", raw[key], f"{value}, the {key} of {path} (or leave it out)")
        return first.input_dim, first.output_dim

    def inputs(self, raw: dict, input_dim: int, files: list) -> tuple[str, int]:
        inp = raw.get("input", NetworkSpec.input)
        if inp == "gaussian":
            return inp, self.int_(raw.get("n_inputs", 1), "network.n_inputs", 1)
        inp = self.path(inp, "network.input", ".npy", "gaussian or the path of a .npy of inputs, shape (n, d) or (d,)")
        if "n_inputs" in raw:
            raise self.fail("network.n_inputs", raw["n_inputs"],
                            "to be left out with an input file (its rows are the inputs)")
        data = read_bytes(inp, "network.input")
        try:
            x = parse_inputs(data, inp, input_dim)
        except SpecError as e:
            raise self.rename(e) from None
        files.append(("input", inp, sha256(data)))
        return inp, x.shape[0]

    def grid(self, raw: Any, single: tuple | None = None) -> GridSpec:
        raw = dict(self.mapping(raw, "grid", {"L", "m", "ratio", "layer", "seeds"}))
        if single is not None:
            raw = {**self.single_network_grid(raw, *single), **raw}
        for key in ("L", "m", "ratio"):
            if key not in raw:
                raise self.fail(f"grid.{key}", None, "a list of values (the key is required)")
        L = self.axis(raw["L"], "grid.L", lambda x, f: self.int_(x, f, 1))
        m = self.axis(raw["m"], "grid.m", lambda x, f: self.int_(x, f, 1))
        ratio = self.ratios(raw["ratio"])
        layer = self.layers(raw.get("layer", "all"), max(L))
        seeds_raw = raw.get("seeds", 4)
        if isinstance(seeds_raw, list):
            seeds = self.axis(seeds_raw, "grid.seeds", lambda x, f: self.int_(x, f, 0))
        else:
            seeds = range(self.int_(seeds_raw, "grid.seeds", 1))
        if single is not None and len(seeds) > 1:
            raise self.fail("grid.seeds", seeds_raw, "1 with a single network file: it is one network, so "
                            "seeds would repeat it; use noise.draws for more noise samples, or a path "
                            "template with {seed} for several trained networks")
        return GridSpec(L, m, ratio, layer, seeds)

    def layers(self, v: Any, max_L: int) -> tuple[int, ...]:
        """grid.layer: 'all' (1..max_L), 'together' (0: every layer at once), layers i >= 1, or a list of these."""
        allowed = (f"'all', '{TOGETHER_NAME}' (noise in every layer at once, stored as layer 0), a layer between "
                   f"1 and the largest L ({max_L}), or a list of these")
        out = []
        for x in v if isinstance(v, list) else [v]:
            if x == "all":
                out += range(1, max_L + 1)
            elif x == TOGETHER_NAME:
                out.append(TOGETHER)
            elif isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= max_L:
                raise self.fail("grid.layer", x, allowed)
            else:
                out.append(x)
        if not out or len(set(out)) != len(out):
            raise self.fail("grid.layer", v, allowed + ", without repeated values")
        return tuple(sorted(out))

    def single_network_grid(self, raw: dict, net: NetworkArrays, entry: tuple[str, str, str]) -> dict:
        """grid.L and grid.m of a single network file: read from it, or checked against it."""
        m = max(net.hidden_widths) if net.hidden_widths else net.input_dim  # a label: the widest hidden layer
        for key, value, what in (("L", net.depth, "weight layers"), ("m", m, "widest hidden layer")):
            if key in raw and raw[key] not in (value, [value]):
                raise self.fail(f"grid.{key}", raw[key], f"[{value}], the {what} of the network file "
                                "(or leave it out)")
        return {"L": [net.depth], "m": [m], "seeds": 1}

    def noise(self, raw: Any) -> NoiseSpec:
        raw = self.mapping(raw, "noise", {f.name for f in dataclasses.fields(NoiseSpec)})
        d = NoiseSpec()
        return NoiseSpec(
            distribution=self.choice(raw.get("distribution", d.distribution), "noise.distribution", DISTRIBUTIONS),
            norm=self.choice(raw.get("norm", d.norm), "noise.norm", NORMS),
            draws=self.int_(raw.get("draws", d.draws), "noise.draws", 1),
            biases=self.biases(raw.get("biases", d.biases)),
        )

    def biases(self, v: Any) -> bool:
        if not isinstance(v, bool):
            raise self.fail("noise.biases", v, "true or false (whether the together cells perturb the biases too)")
        return v

    def compute(self, raw: Any) -> ComputeSpec:
        raw = self.mapping(raw, "compute", {f.name for f in dataclasses.fields(ComputeSpec)})
        return ComputeSpec(self.choice(raw.get("precision", ComputeSpec.precision), "compute.precision",
                                       PRECISIONS))

    def execution(self, raw: Any) -> ExecutionSpec:
        raw = self.mapping(raw, "execution", {f.name for f in dataclasses.fields(ExecutionSpec)})
        d = ExecutionSpec()
        opts = raw.get("storage_options", {})
        if isinstance(opts, tuple):
            opts = dict(opts)
        if not isinstance(opts, dict) or not all(isinstance(k, str) for k in opts):
            raise self.fail("execution.storage_options", opts,
                            "a mapping of fsspec options for the store URL, e.g. {endpoint_url: http://...}")
        return ExecutionSpec(
            seeds_per_block=self.int_(raw.get("seeds_per_block", d.seeds_per_block),
                                      "execution.seeds_per_block", 1),
            storage_options=tuple(sorted(opts.items())))
