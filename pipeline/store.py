"""The results store: a zarr template made from the spec, region writes per block.

The client creates the store once, before any task runs, with every
coordinate, every variable (NaN fill), units, descriptions and provenance.
The template is metadata only (one dask chunk per variable, the zarr chunks in
the encoding), so creation writes a few small objects per variable whatever the
grid's size, and no chunk. Each block then writes exactly one chunk of every
variable and marks itself done afterwards, so a rerun skips it. Metadata
changes after creation only when the store grows in place (:func:`grow`, under
the store's lock).

Creation is atomic for readers: the root group is first written with a
``nnsweep_creating`` attribute only, then every array, and last the root
attributes with ``spec_hash``, the mark of a results store (one atomic write of
the group's ``zarr.json``). A directory without that mark is not a results
store; one with ``nnsweep_creating`` is a creation that was interrupted, and
``nnsweep run`` recreates it. Every chunk carries a crc32c checksum (zarr's
``crc32c`` codec after ``zstd``), so a reader detects a damaged chunk.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import google_crc32c
import numcodecs
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.sync import sync

from . import accessor  # noqa: F401  (registers ds.nnsweep on every Dataset a store gives)
from .errors import ResultNotFinite, StoreError
from .location import StoreLocation, as_location, short_path
from .lock import store_lock
from .measure import BlockResult
from .plan import BlockKey, grid_blocks
from .schema import NAN_ALLOWED, NAN_AT_TOGETHER, RESULT_VARIABLES, TOGETHER, VARIABLES, chunk_lengths, dim_lengths
from .spec import Spec, differences, result_fields
from .spec import short as short_value

SCHEMA_VERSION = 6  # 2: input dimension, classifier metrics, hidden_flip_fraction, the linear answer
# 3: every weight matrix drawn from a stream of its own, float32 weights drawn in float32; compute.precision
# 4: the noise samplers draw each kind of number from a stream of its own, draw-major (batches of draws);
#    networks of any widths and activations; how each network file was read (spec network.read)
# 5: layer coordinate 0 holds the cells with noise in every layer at once (grid.layer 'together'); noise.biases;
#    linear_change and linear_pred_changed, the first-order change of every draw (the control variates)
# 6: eta scaled before its product with H, first-order changes taken by input: the same draws, other last bits
MARK = "spec_hash"  # the root attribute written last: a directory is a results store once it has it
CREATING = "nnsweep_creating"  # the root attribute of a store whose creation has not finished
CODECS = (ZstdCodec(), Crc32cCodec())  # bytes-to-bytes codecs of every array: compress, then checksum


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("nnsweep", "numpy", "dask", "distributed", "xarray", "zarr"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def template(spec: Spec) -> xr.Dataset:
    """The empty store as a lazy Dataset: coordinates, NaN-filled variables, attributes."""
    g = spec.grid
    coords = {
        "L": ("L", np.array(g.L), {"description": "number of weight layers"}),
        "m": ("m", np.array(g.m), {"description": "neurons per hidden layer"}),
        "ratio": ("ratio", np.array(g.ratio), {"description": "noise ratio r = ||eta|| / ||W_i||"}),
        "layer": ("layer", np.array(g.layer), {"description": "perturbed layer i (cells with i > L are NaN); "
                                                              "0: every layer at once ('together' in specs)"}),
        "seed": ("seed", np.array(g.seeds), {"description": "network seed (with one network file: always 0)"}),
        "input": ("input", np.arange(spec.network.n_inputs), {"description": "input x* (row of network.input)"}),
        "draw": ("draw", np.arange(spec.noise.draws), {"description": "noise draw (one eta for every input)"}),
    }
    sizes = dim_lengths(spec)
    data_vars = {}
    for name, (dims, dtype, units, desc) in VARIABLES.items():
        shape = tuple(sizes[d] for d in dims)
        fill = 0 if dtype == "i1" else np.nan
        # one dask chunk per variable: the template is metadata, never a graph of every chunk (the
        # zarr chunks are in :func:`encoding`), so creating 10^6 chunks costs what 10 do
        data_vars[name] = (dims, da.full(shape, fill, dtype=dtype, chunks=shape),
                           {"units": units, "description": desc})
    attrs = {
        "title": f"nnsweep results: {spec.name}" if spec.name else "nnsweep results",
        "spec": json.dumps(spec.to_dict(), sort_keys=True),
        "spec_hash": spec.hash,
        "schema_version": SCHEMA_VERSION,
        "seeds_per_block": spec.execution.seeds_per_block,
        "versions": json.dumps(_versions(), sort_keys=True),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def encoding(spec: Spec, ds: xr.Dataset) -> dict[str, dict]:
    """The zarr encoding of every array of ``ds`` (the template): codecs, and the variables' chunks.

    A variable's chunk is one block: one L, one m, a block's seeds, every other dimension whole.
    """
    sizes, chunk = dim_lengths(spec), chunk_lengths(spec)
    out: dict[str, dict] = {name: {"compressors": CODECS} for name in ds.variables}
    for name, (dims, *_) in VARIABLES.items():
        out[name]["chunks"] = tuple(min(chunk[d], sizes[d]) for d in dims)
    return out


def _kind(loc: StoreLocation) -> str:
    """'missing', 'results' (one of ours), 'half-created', or a reason the location cannot be a store."""
    if loc.is_local:
        p = Path(loc.url.removeprefix("file://"))
        try:
            if p.is_symlink() and not p.exists():
                return f"a dangling symbolic link (to {os.readlink(p)!r})"
            if not p.exists() or p.is_dir() and not any(p.iterdir()):
                return "missing"
            if not p.is_dir():
                return "an existing file, not a directory"
        except OSError as e:  # a name too long, no permission to look inside
            raise StoreError(f"store path {short_path(loc.url)}: cannot be used ({e.strerror}); choose another "
                             "--store path. Nothing was written.") from None
    else:
        try:
            fs, root = loc.filesystem()
            if not fs.exists(root) or fs.isdir(root) and not fs.ls(root):
                return "missing"
            if fs.isfile(root):
                return "an existing file, not a directory"
        except Exception as e:  # bad options, unreachable endpoint, missing bucket, no permission
            raise StoreError(f"could not reach the store {loc.url!r} with storage options "
                             f"{sorted(loc.options)} ({type(e).__name__}: {' '.join(str(e).split())}); check "
                             "the URL and --storage-option KEY=VALUE settings. Nothing was written.") from None
    try:
        group = zarr.open_group(loc.url, mode="r", **loc.zarr_kwargs)
    except Exception:
        return "a non-empty directory that is not a zarr store"
    if MARK in group.attrs:
        return "results"
    return "half-created" if CREATING in group.attrs else "a zarr store not made by nnsweep"


def read_attrs(where: str | StoreLocation) -> dict:
    """The root attributes of an existing results store.

    Raises:
        StoreError: the path is missing, not a results store, or was not completely created.
    """
    loc = as_location(where)
    kind = _kind(loc)
    if kind == "half-created":
        raise StoreError(f"store {short_path(loc.url)} was not completely created (its creation was interrupted), so "
                         "it holds no results; `nnsweep run SPEC --store` with that path creates it again.")
    if kind != "results":
        what = "does not exist" if kind == "missing" else f"is {kind}"
        raise StoreError(f"store {short_path(loc.url)} {what}; expected a results store written by `nnsweep run`.")
    attrs = dict(zarr.open_group(loc.url, mode="r", **loc.zarr_kwargs).attrs)
    version = attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        made_by = json.loads(attrs.get("versions", "{}")).get("nnsweep", "an older nnsweep")
        raise StoreError(f"store {short_path(loc.url)} has schema version {version}, written by nnsweep {made_by}; "
                         f"this nnsweep reads version {SCHEMA_VERSION} (version 6 moved results in the last place: "
                         "formed noise is scaled before its product, first-order changes are taken by input; "
                         "version 5 added layer 0, noise in every "
                         "layer at once, and every draw's first-order change; version 4's noise samplers draw "
                         "their numbers "
                         "in another order (batches of draws: the same spec gives other noise draws than version "
                         "3 did; version 2 drew other networks, and version 1 had no input dimension)). "
                         "Rerun its spec "
                         "into a new store (nnsweep run SPEC --store NEW.zarr), or read it with the nnsweep "
                         "version that wrote it. Nothing was changed.")
    return attrs


def check_store(spec: Spec, where: str | StoreLocation) -> tuple[Spec, bool]:
    """Check, without writing, that ``where`` is missing or a store made from ``spec``.

    Returns:
        The spec with the store's layout (seeds per block), and whether the
        store already exists.

    Raises:
        StoreError: the path is a file, a foreign directory or zarr store, or a
            store made from another spec.
    """
    loc = as_location(where)
    kind = _kind(loc)
    if kind in ("missing", "half-created"):  # a half-created store holds no results: it is made again
        return spec, False
    if kind != "results":
        raise StoreError(f"store path {short_path(loc.url)} is {kind}; choose a new path (--store) or the path of a "
                         "results store made from this spec. Nothing was written.")
    attrs = read_attrs(loc)
    check_arrays(loc)
    if attrs["spec_hash"] != spec.hash and not growth(spec, loc, attrs):
        raise StoreError(
            f"store {loc.url!r} was made from another spec (its hash {attrs['spec_hash'][:12]} differs from "
            f"{spec.hash[:12]} for {spec.source or spec.name}); resuming would mix results. Use a new "
            "--store path, or the spec the store was made from (`nnsweep status` shows it). Nothing was written.")
    return spec.with_execution(seeds_per_block=int(attrs["seeds_per_block"])), True


def create_or_resume(spec: Spec, where: str | StoreLocation) -> tuple[Spec, bool]:
    """Create the store from ``spec`` (as a template) or check an existing one against it.

    Creation holds the store's lock (re-entered if the caller holds it) and
    replaces a half-created store; the mark of a results store is written last.

    Returns and raises as :func:`check_store`; nothing is written when it raises.

    Raises:
        StoreError: also when the store cannot be created (permissions, a full
            disk); what was written is removed again.
    """
    loc = as_location(where)
    spec, existed = check_store(spec, loc)
    if existed:
        if growth(spec, loc):
            with store_lock(loc):
                grow(spec, loc)
        return spec, existed
    with store_lock(loc):
        spec, existed = check_store(spec, loc)  # another run may have created it meanwhile
        if not existed:
            _create(spec, loc)
    return spec, existed


def _create(spec: Spec, loc: StoreLocation) -> None:
    if _kind(loc) == "half-created":
        _remove(loc)
    ds = template(spec)
    attrs, ds.attrs = ds.attrs, {CREATING: spec.hash}
    try:
        # the group and its creating mark in one write: another run that looks meanwhile sees a
        # half-created store, never a zarr group without our marks
        zarr.create_group(loc.url, zarr_format=3, attributes={CREATING: spec.hash}, **loc.zarr_kwargs)
        ds.to_zarr(loc.url, mode="a", compute=False, zarr_format=3, consolidated=False,
                   encoding=encoding(spec, ds), **loc.zarr_kwargs)
        zarr.open_group(loc.url, mode="r+", **loc.zarr_kwargs).attrs.put(attrs)
    except (OSError, ValueError) as e:  # no permission, a full disk, a path zarr cannot make
        _remove(loc, missing_ok=True)
        raise StoreError(f"could not create the store {short_path(loc.url)} ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:300]}); choose a --store path in a writable place. "
                         "Nothing was kept.") from None


def _remove(loc: StoreLocation, missing_ok: bool = False) -> None:
    """Delete a store that holds no results (a half-created one, or one whose creation failed)."""
    import shutil

    kind = _kind(loc) if not missing_ok else "half-created"
    if kind != "half-created":
        return
    if loc.is_local:
        shutil.rmtree(loc.url.removeprefix("file://"), ignore_errors=missing_ok)
        return
    fs, root = loc.filesystem()
    try:
        fs.rm(root, recursive=True)
    except FileNotFoundError:
        pass


# The fields along which a store grows in place: values appended to its grid.
GROWABLE = ("grid.L", "grid.m", "grid.seeds", "grid.layer")


def growth(spec: Spec, where: str | StoreLocation, attrs: dict | None = None) -> dict[str, tuple[list, list]]:
    """How ``spec`` extends the grid of the store at ``where``: {field: (old values, new values)}.

    Empty when the store was made from ``spec`` itself. A store grows by values
    appended to ``grid.L``, ``grid.m`` or ``grid.seeds``, and by layers beyond
    its largest L (whose cells are absent, NaN, in every block it holds), with
    every other field equal; a network file may be added for a new cell.

    Raises:
        StoreError: any other difference, naming the first field that differs.
    """
    loc = as_location(where)
    attrs = attrs if attrs is not None else read_attrs(loc)
    if attrs["spec_hash"] == spec.hash:
        return {}
    old_spec = json.loads(attrs["spec"])
    old, new = result_fields(old_spec), spec.result_fields
    grown = {}
    for field, a, b in differences(old, new):
        if field.startswith("network.files.") and a is None:
            continue  # the file of a new grid cell
        reason = _why_not_appended(field, a, b, max(old["grid"]["L"]))
        if reason:
            source = spec.source or spec.name or "the new spec"
            raise StoreError(
                f"store {short_path(loc.url)} was made from another spec (its hash {attrs['spec_hash'][:12]} differs "
                f"from {spec.hash[:12]} for {source}): {field} is {short_value(a)} there and {short_value(b)} in "
                f"the new spec; {reason}. A store grows in place only by values appended to grid.L, grid.m or "
                "grid.seeds (and layers beyond its largest L), everything else equal. Use a new --store path, or "
                "the spec the store was made from (`nnsweep status` shows it). Nothing was written.")
        grown[field] = (a, b)
    return grown


def _why_not_appended(field: str, old: Any, new: Any, old_max_L: int) -> str:
    """Why a difference cannot be grown in place; empty if it can."""
    if field not in GROWABLE:
        return "that field must stay as it is"
    removed = [v for v in old if v not in new]
    if removed:
        return f"the store's values {short_value(removed)} are missing from it, and a store never shrinks"
    inside = [v for v in new if v not in old and v < max(old)]
    if inside:
        return (f"the values {short_value(inside)} would fall between the store's values, whose order is fixed; "
                f"new values must come after the largest ({max(old)})")
    if field == "grid.layer" and min(new[len(old):]) <= old_max_L:
        return f"a new layer must lie beyond the store's largest L ({old_max_L}), or its blocks would be incomplete"
    return ""


def grow(spec: Spec, where: str | StoreLocation) -> dict[str, tuple[list, list]]:
    """Grow the store at ``where`` in place to the grid of ``spec`` (see :func:`growth`).

    Every array is resized (new cells read as the fill value: NaN, not done) and
    its coordinates extended; a block that was the short last block along seed
    is marked not done, so that it is computed again as a full block. The root
    attributes (spec, hash, history) are written last: a reader that opens the
    store meanwhile may see arrays of different sizes, which :func:`open_results`
    reports as a store being grown.

    Returns:
        What grew, as :func:`growth` reports it.
    """
    loc = as_location(where)
    attrs = read_attrs(loc)
    grown = growth(spec, loc, attrs)
    if not grown:
        return grown
    new = template(spec.with_execution(seeds_per_block=int(attrs["seeds_per_block"])))
    group = zarr.open_group(loc.url, mode="r+", **loc.zarr_kwargs)
    old_sizes = {dim: group[dim].shape[0] for dim in new.dims}
    for dim, n in old_sizes.items():
        if not np.array_equal(group[dim][...], new[dim].values[:n]):
            raise StoreError(f"store {short_path(loc.url)}: its {dim} coordinate does not match the start of the new "
                             f"grid's; it cannot grow in place. Nothing was written.")
    for name in VARIABLES:
        group[name].resize(new[name].shape)
    _restart_short_blocks(group, old_sizes["seed"], int(attrs["seeds_per_block"]))
    for dim in new.dims:
        group[dim].resize(new[dim].shape)
        group[dim][...] = new[dim].values
    history = json.loads(attrs.get("history", "[]"))
    history.append({"time": _now(), "spec": json.loads(attrs["spec"]), "spec_hash": attrs["spec_hash"],
                    "grown": {field: [len(a), len(b)] for field, (a, b) in grown.items()}})
    group.attrs.update({"spec": new.attrs["spec"], "spec_hash": spec.hash, "history": json.dumps(history)})
    return grown


def _restart_short_blocks(group: zarr.Group, n_seeds: int, seeds_per_block: int) -> None:
    """Unmark the last block along seed if it was short: with more seeds it is a larger block."""
    if n_seeds % seeds_per_block:
        seeds = group["seed"][:n_seeds].tolist()
        for key in store_blocks(group, seeds_per_block, seeds):
            if len(key.seeds) < seeds_per_block:
                unmark(group, key, seeds_per_block)


def unmark(group: zarr.Group, key: BlockKey, seeds_per_block: int) -> None:
    """Delete the done mark of block ``key``: from then on it counts as not done, whatever else happens."""
    done = group["done"]
    index = key.chunk_index(VARIABLES["done"][0], seeds_per_block)
    sync(done.store.delete(f"{done.path}/{done.metadata.encode_chunk_key(index)}"))


def store_blocks(group: zarr.Group, seeds_per_block: int, seeds: list | None = None) -> list[BlockKey]:
    """Every block of a store, from its coordinates (or these ``seeds``), in store order."""
    L, m = (group[d][...].tolist() for d in ("L", "m"))
    return grid_blocks(L, m, group["seed"][...].tolist() if seeds is None else seeds, seeds_per_block)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def done_mask(where: str | StoreLocation) -> np.ndarray:
    """The (L, m, seed) done mark as a bool array; a chunk that cannot be read counts as not done.

    "Not done" is always safe: the block is computed again and rewrites every
    chunk, its done mark included. `nnsweep verify` reports such chunks.

    One listing of the mark's chunks, then a batched read of those that exist:
    a new store reads no chunk at all, and a resumed one only the marks of
    blocks that have run.
    """
    loc = as_location(where)
    group = zarr.open_group(loc.url, mode="r", **loc.zarr_kwargs)
    arr, dims, spb = group["done"], VARIABLES["done"][0], int(group.attrs["seeds_per_block"])
    done = np.zeros(arr.shape, dtype=bool)
    keys = {arr.metadata.encode_chunk_key(k.chunk_index(dims, spb)): k for k in store_blocks(group, spb)}
    for name, chunk in read_chunks(loc, arr, [k for k in chunk_keys(loc, arr) if k in keys]):
        if chunk is not None:
            key = keys[name]
            done[key.selection(dims)] = chunk[..., :len(key.seeds)].astype(bool)
    return done


def chunk_keys(loc: StoreLocation, arr: zarr.Array) -> set[str]:
    """The keys of the chunks ``arr`` has in the store (``c/0/1/2``), from one listing."""
    fs, root = loc.filesystem()
    prefix = f"{root.rstrip('/')}/{arr.path}/"
    return {p.removeprefix(prefix) for p in fs.find(prefix)} - {"zarr.json"}


READ_BATCH = 10_000  # chunks fetched in one batched request (fsspec fetches them concurrently)


def read_chunks(loc: StoreLocation, arr: zarr.Array, keys: list[str]) -> Iterator[tuple[str, np.ndarray | None]]:
    """Each chunk of ``keys`` (chunk keys of ``arr``) as an array of the chunk's shape, or None if damaged.

    The chunks are fetched in batches and decoded here, without zarr's
    per-chunk machinery (40 times faster for small chunks such as the done
    mark); the codecs are the store's own, zstd then crc32c (:data:`CODECS`),
    and an array with other codecs is read through zarr.
    """
    if [c.to_dict()["name"] for c in arr.metadata.codecs] != ["bytes", "zstd", "crc32c"]:
        for name in keys:
            try:
                yield name, arr.get_block_selection(arr.metadata.chunk_key_encoding.decode_chunk_key(name))
            except Exception:
                yield name, None
        return
    fs, root = loc.filesystem()
    prefix = f"{root.rstrip('/')}/{arr.path}/"
    zstd = numcodecs.Zstd()
    for start in range(0, len(keys), READ_BATCH):
        batch = keys[start:start + READ_BATCH]
        found = fs.cat([prefix + name for name in batch], on_error="return")
        for name in batch:
            raw = found.get(prefix + name)
            yield name, _decode(raw, arr, zstd) if isinstance(raw, bytes) else None


def _decode(raw: bytes, arr: zarr.Array, zstd) -> np.ndarray | None:
    """A chunk from its stored bytes (zstd, then a crc32c of those), or None if they are damaged."""
    if len(raw) < 4 or np.uint32(google_crc32c.value(raw[:-4])).tobytes() != raw[-4:]:
        return None
    try:
        data = np.frombuffer(zstd.decode(raw[:-4]), dtype=arr.dtype)
        return data.reshape(arr.chunks)
    except (RuntimeError, ValueError):  # not zstd, or not the chunk's size
        return None


def nonfinite(name: str, data: np.ndarray, dims: tuple[str, ...], layers: np.ndarray, L: int) -> np.ndarray:
    """Where ``data`` (variable ``name`` over ``dims``) is not finite though it must be.

    Every cell must be finite except where ``layer`` > ``L`` (that layer does
    not exist); the variables of :data:`NAN_ALLOWED` may be NaN, never infinite, and those of
    :data:`NAN_AT_TOGETHER` may be NaN in the together cells (layer 0).
    """
    bad = np.isinf(data) if name in NAN_ALLOWED else ~np.isfinite(data)
    if "layer" in dims:
        shape = [1] * data.ndim
        shape[dims.index("layer")] = -1
        layers = np.asarray(layers)
        bad &= (layers <= L).reshape(shape)
        if name in NAN_AT_TOGETHER:
            bad &= ~((layers == TOGETHER).reshape(shape) & np.isnan(data))
    return bad


def _check_finite(group: zarr.Group, key: BlockKey, values: dict[str, np.ndarray]) -> None:
    """Refuse a block whose results are not finite where they must be, before anything is written."""
    layers = None
    for name, data in values.items():
        dims = tuple(d for d in VARIABLES[name][0] if d not in ("L", "m"))
        if "layer" in dims and layers is None:
            layers = group["layer"][...]
        bad = nonfinite(name, np.asarray(data), dims, layers, key.L)
        if bad.any():
            first = dict(zip(dims, np.argwhere(bad)[0]))
            coords = {d: (group[d][int(i)].item() if d in ("ratio", "layer") else int(i)) for d, i in first.items()}
            if "seed" in coords:
                coords["seed"] = key.seeds[coords["seed"]]
            where = ", ".join(f"{d}={v}" for d, v in coords.items())
            kinds = sorted({"inf" if np.isinf(x) else "nan" for x in np.asarray(data)[bad][:1000]})
            raise ResultNotFinite(
                f"{name} holds {int(bad.sum())} non-finite values ({', '.join(kinds)}) where the computation "
                f"must give finite numbers, first at {where}: the network's numbers overflow float64 or are "
                "not numbers (weights, biases, the input, weight_norm_bound or the ratio too large, or NaN in "
                "a file). The block is not marked done; rerunning gives the same result.")


def write_block(where: str | StoreLocation, key: BlockKey, result: BlockResult, wall_time: float) -> None:
    """Write one block into its own region, then mark it done (in that order).

    The region is exactly one chunk of every variable (checked here), so no
    other task ever touches these chunks. This writes through zarr directly:
    the same region write as xarray's ``to_zarr(region=..., mode="r+")``, at
    half the cost, because the group is opened once instead of twice with all
    its metadata (benchmarks/bench_pipeline.py).
    """
    loc = as_location(where)
    # write every chunk, even an all-NaN one (accuracy without labels): a done block has all its chunks
    with zarr.config.set({"array.write_empty_chunks": True}):
        group = zarr.open_group(loc.url, mode="r+", **loc.zarr_kwargs)
        arrays = {name: group[name] for name in (*RESULT_VARIABLES, "wall_time", "done")}
    region = key.region()
    n = len(key.seeds)
    values = {name: getattr(result, name) for name in RESULT_VARIABLES}
    values["wall_time"] = np.full(n, wall_time)
    _check_finite(group, key, values)
    for name, arr in arrays.items():
        seed_axis = VARIABLES[name][0].index("seed")
        chunk = arr.chunks[seed_axis]
        if region["seed"].start % chunk or n != min(chunk, arr.shape[seed_axis] - region["seed"].start):
            raise ValueError(f"block {key} is not one chunk of {name} (chunk {chunk} seeds)")
    for name, data in values.items():
        arrays[name][key.selection(VARIABLES[name][0])] = data[None, None]
    arrays["done"][key.selection(VARIABLES["done"][0])] = np.ones((1, 1, n), dtype="i1")


def open_results(where: str | os.PathLike | StoreLocation, storage_options: dict | None = None) -> xr.Dataset:
    """The results store as a lazy Dataset, with ``rel_change`` = delta_norm / output_norm.

    Args:
        where: a path, an fsspec URL or a StoreLocation.
        storage_options: options for an fsspec URL (e.g. ``endpoint_url``, ``key``).

    Raises:
        StoreError: the path is missing or not a results store, or an array's metadata is missing or damaged.
    """
    loc = as_location(where, storage_options)
    read_attrs(loc)
    check_arrays(loc)
    try:
        ds = xr.open_zarr(loc.url, consolidated=False, **loc.zarr_kwargs)
    except ValueError as e:
        if "conflicting sizes" not in str(e):
            raise
        raise StoreError(f"store {short_path(loc.url)} is being grown by `nnsweep run` (its arrays are resized one by "
                         "one and differ in size for a moment); open it again.") from None
    return with_rel_change(ds)


def with_rel_change(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with the derived variable ``rel_change`` = delta_norm / output_norm, as every reader sees it."""
    rel = ds["delta_norm"] / ds["output_norm"]
    rel.attrs = {"units": "1", "description": "relative output change ||v - v*|| / ||v||"}
    return ds.assign(rel_change=rel)


def check_arrays(where: str | StoreLocation) -> None:
    """Check that every variable's array exists with readable metadata and its dimensions.

    Raises:
        StoreError: naming the first array that is missing or damaged.
    """
    loc = as_location(where)
    group = zarr.open_group(loc.url, mode="r", **loc.zarr_kwargs)
    for name, (dims, *_) in VARIABLES.items():
        try:
            arr = group[name]
            ok = isinstance(arr, zarr.Array) and tuple(arr.metadata.dimension_names or ()) == dims
            why = "" if ok else f"is not an array over {', '.join(dims)}"
        except KeyError:
            why = "is missing"
        except Exception as e:  # unreadable zarr.json
            why = f"has unreadable metadata ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        if why:
            raise StoreError(f"store {short_path(loc.url)} is damaged: the array {name!r} {why}; it cannot be "
                             "read or resumed. "
                             "Run the sweep into a new --store (the spec is in the store's root zarr.json).")
