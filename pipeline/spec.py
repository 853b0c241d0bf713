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
import json
import math
from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError

INITS = ("he", "xavier", "orthogonal")
DISTRIBUTIONS = ("gaussian", "rademacher", "sphere")
NORMS = ("frobenius", "spectral")


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """The networks: dimensions, initialisation, biases, norm bound and input.

    ``init`` is one of :data:`INITS` or the absolute path of an ``.npz`` file
    holding ``W1..WL`` (and optionally ``b1..bL``); ``input`` is ``"gaussian"``
    or the absolute path of a ``.npy`` vector.
    """

    input_dim: int = 784
    output_dim: int = 10
    init: str = "he"
    bias_std: float = 0.0
    weight_norm_bound: float | None = None
    input: str = "gaussian"

    @property
    def init_is_file(self) -> bool:
        return self.init not in INITS


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """The swept axes; iterating the grid's outer product gives every cell."""

    L: tuple[int, ...]
    m: tuple[int, ...]
    ratio: tuple[float, ...]
    layer: tuple[int, ...]
    seeds: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class NoiseSpec:
    """The noise model: distribution, the norm that sets its size, draws per cell."""

    distribution: str = "gaussian"
    norm: str = "frobenius"
    draws: int = 16


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
    source: str | None = None  # the file it was read from, for messages only

    @classmethod
    def from_dict(cls, raw: Any, source: str | None = None, base_dir: Path | None = None) -> Spec:
        """Validate a parsed spec. Relative file paths resolve against ``base_dir``."""
        return _Validator(source, base_dir or Path.cwd()).spec(raw)

    def to_dict(self) -> dict:
        """The spec as plain data (what a store records as provenance)."""
        d = dataclasses.asdict(self)
        d.pop("source")
        d["grid"] = {k: list(v) for k, v in d["grid"].items()}
        # option names only: values may be credentials and the dict is written to the store
        d["execution"]["storage_options"] = sorted(k for k, _ in self.execution.storage_options)
        return d

    @property
    def result_fields(self) -> dict:
        """Everything that determines a number, with the content hash of any input file."""
        d = self.to_dict()
        for key in ("name", "description", "execution"):
            d.pop(key)
        net = d["network"]
        if self.network.init_is_file:
            net["init"] = {"sha256": _file_sha256(self.network.init)}
        if self.network.input != "gaussian":
            net["input"] = {"sha256": _file_sha256(self.network.input)}
        return d

    @property
    def hash(self) -> str:
        """A stable sha256 over :attr:`result_fields`; resuming requires it to match."""
        text = json.dumps(self.result_fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def n_cells(self) -> int:
        """Number of (L, m, ratio, layer, seed) cells that exist (layer <= L)."""
        g = self.grid
        per_l = [sum(1 for i in g.layer if i <= L) for L in g.L]
        return sum(per_l) * len(g.m) * len(g.ratio) * len(g.seeds)

    def with_execution(self, **changes) -> Spec:
        """A copy with other execution settings; the hash does not change."""
        ex = _Validator(self.source, Path.cwd()).execution({**dataclasses.asdict(self.execution), **changes})
        return dataclasses.replace(self, execution=ex)


def load_spec(path: str | Path) -> Spec:
    """Read and validate a sweep file (YAML, read with ``safe_load``).

    Raises:
        SpecError: the file is missing, is not YAML, or does not validate.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {str(path)!r} does not exist or is not a file; "
                        "pass the path of a sweep file such as sweeps/quickstart.yaml.")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        detail = " ".join(str(e).split())
        raise SpecError(f"{path}: not valid YAML ({detail}); a sweep file is a YAML mapping "
                        "with the sections network, grid, noise and execution.") from None
    spec = Spec.from_dict(raw, source=str(path), base_dir=path.resolve().parent)
    if not spec.name:
        spec = dataclasses.replace(spec, name=path.stem)
    return spec


def _file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class _Validator:
    """Turns raw YAML data into a Spec, or raises SpecError naming the field."""

    SECTIONS = {"name", "description", "random_seed", "network", "grid", "noise", "execution"}

    def __init__(self, source: str | None, base_dir: Path):
        self.source = source
        self.base_dir = base_dir

    def fail(self, field: str, value: Any, allowed: str) -> SpecError:
        where = f"{self.source}: " if self.source else ""
        return SpecError(f"{where}{field}: {value!r} is not allowed; expected {allowed}.")

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
        if not isinstance(name, str) or any(c in name for c in "/\\ "):
            raise self.fail("name", name, "a short name without spaces or slashes")
        description = raw.get("description", "")
        if not isinstance(description, str):
            raise self.fail("description", description, "a string")
        random_seed = self.int_(raw.get("random_seed", 0), "random_seed", 0)
        network = self.network(raw.get("network"))
        grid = self.grid(raw.get("grid"))
        noise = self.noise(raw.get("noise"))
        execution = self.execution(raw.get("execution"))
        if network.init_is_file:
            if network.bias_std:
                raise self.fail("network.bias_std", network.bias_std,
                                "0 with an .npz network (its biases, if any, come from the file as b1..bL)")
            self.check_weight_file(network, grid)
        return Spec(name, description, random_seed, network, grid, noise, execution, self.source)

    def network(self, raw: Any) -> NetworkSpec:
        raw = self.mapping(raw, "network", {f.name for f in dataclasses.fields(NetworkSpec)})
        d = NetworkSpec()
        init = raw.get("init", d.init)
        if init not in INITS:
            init = self.path(init, "network.init", ".npz",
                             "he, xavier, orthogonal or the path of an .npz file of weights W1..WL")
        bound = raw.get("weight_norm_bound", None)
        if bound is not None:
            bound = self.float_(bound, "network.weight_norm_bound", positive=True)
        inp = raw.get("input", d.input)
        input_dim = self.int_(raw.get("input_dim", d.input_dim), "network.input_dim", 1)
        if inp != "gaussian":
            inp = self.path(inp, "network.input", ".npy", "gaussian or the path of a .npy vector")
            self.check_input_file(inp, input_dim)
        return NetworkSpec(
            input_dim=input_dim,
            output_dim=self.int_(raw.get("output_dim", d.output_dim), "network.output_dim", 1),
            init=init,
            bias_std=self.float_(raw.get("bias_std", d.bias_std), "network.bias_std", nonneg=True),
            weight_norm_bound=bound,
            input=inp,
        )

    def grid(self, raw: Any) -> GridSpec:
        raw = self.mapping(raw, "grid", {"L", "m", "ratio", "layer", "seeds"})
        for key in ("L", "m", "ratio"):
            if key not in raw:
                raise self.fail(f"grid.{key}", None, "a list of values (the key is required)")
        L = self.axis(raw["L"], "grid.L", lambda x, f: self.int_(x, f, 1))
        m = self.axis(raw["m"], "grid.m", lambda x, f: self.int_(x, f, 1))
        ratio = self.axis(raw["ratio"], "grid.ratio", lambda x, f: self.float_(x, f, positive=True))
        layer_raw = raw.get("layer", "all")
        if layer_raw == "all":
            layer = tuple(range(1, max(L) + 1))
        else:
            layer = self.axis(layer_raw, "grid.layer", lambda x, f: self.int_(x, f, 1))
            if max(layer) > max(L):
                raise self.fail("grid.layer", max(layer),
                                f"'all' or layers between 1 and the largest L ({max(L)})")
        seeds_raw = raw.get("seeds", 4)
        if isinstance(seeds_raw, list):
            seeds = self.axis(seeds_raw, "grid.seeds", lambda x, f: self.int_(x, f, 0))
        else:
            seeds = tuple(range(self.int_(seeds_raw, "grid.seeds", 1)))
        return GridSpec(L, m, ratio, layer, seeds)

    def noise(self, raw: Any) -> NoiseSpec:
        raw = self.mapping(raw, "noise", {f.name for f in dataclasses.fields(NoiseSpec)})
        d = NoiseSpec()
        return NoiseSpec(
            distribution=self.choice(raw.get("distribution", d.distribution), "noise.distribution", DISTRIBUTIONS),
            norm=self.choice(raw.get("norm", d.norm), "noise.norm", NORMS),
            draws=self.int_(raw.get("draws", d.draws), "noise.draws", 1),
        )

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

    def check_input_file(self, path: str, input_dim: int) -> None:
        import numpy as np

        try:
            x = np.load(path, allow_pickle=False)
        except Exception as e:  # not an .npy, pickled objects, truncated
            raise self.fail("network.input", path, f"a .npy file holding one numeric vector ({type(e).__name__}: "
                            f"{e})") from None
        if x.shape != (input_dim,) or x.dtype.kind not in "fiu" or not np.all(np.isfinite(x)):
            raise self.fail("network.input", path, f"a finite numeric vector of length input_dim = {input_dim}; "
                            f"the file holds shape {x.shape}, dtype {x.dtype}")

    def check_weight_file(self, net: NetworkSpec, grid: GridSpec) -> None:
        from .network import load_weight_file  # local: network imports spec

        weights, _ = load_weight_file(net.init)
        L, widths = len(weights), {w.shape[0] for w in weights[:-1]}
        m = widths.pop() if len(widths) == 1 else None
        if grid.L != (L,):
            raise self.fail("grid.L", list(grid.L), f"[{L}], the number of matrices in {net.init}")
        if L > 1 and (m is None or grid.m != (m,)):
            raise self.fail("grid.m", list(grid.m), f"[{m}], the hidden width of {net.init}"
                            if m else f"one hidden width, but {net.init} has several")
        if weights[0].shape[1] != net.input_dim:
            raise self.fail("network.input_dim", net.input_dim,
                            f"{weights[0].shape[1]}, the input width of W1 in {net.init}")
        if weights[-1].shape[0] != net.output_dim:
            raise self.fail("network.output_dim", net.output_dim,
                            f"{weights[-1].shape[0]}, the output width of W{L} in {net.init}")
