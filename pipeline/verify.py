"""Find and repair damaged blocks of a results store.

A block marked done must have every chunk, each chunk must pass its crc32c
checksum, and its values must be finite wherever the computation gives finite
numbers (every cell except layers beyond the network's depth). :func:`scan`
reads every done block and reports, by block coordinates, what is wrong;
:func:`repair` deletes the chunks of those blocks and clears their done mark,
so that ``nnsweep run`` computes exactly them again. Readers (query, fit,
report) use :func:`reading` and :func:`check_nan` to name a damaged block
instead of crashing or averaging NaN.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import numpy as np
import xarray as xr
import zarr
from zarr.core.sync import sync

from .errors import StoreError, UserError
from .plan import BlockKey
from .schema import NAN_AT_TOGETHER, TOGETHER
from .location import StoreLocation, as_location, short_path
from .lock import store_lock
from .store import VARIABLES, check_arrays, nonfinite, read_attrs, store_blocks, unmark


BATCH_BYTES = 64 * 2**20  # read this much of one array at once; chunk by chunk only after a failure


class DamagedStore(StoreError):
    """A results store with damaged blocks: missing, corrupt or non-finite chunks."""


@dataclasses.dataclass(frozen=True)
class Damage:
    """One problem of one block: the variable (array) and what is wrong."""

    block: BlockKey
    variable: str
    problem: str

    def __str__(self) -> str:
        return f"{self.block}: {self.variable} {self.problem}"


@dataclasses.dataclass
class Report:
    """What :func:`scan` found."""

    store: str
    blocks_total: int
    blocks_done: int
    damage: list[Damage]
    checksums: bool  # whether the store's chunks carry crc32c checksums

    @property
    def damaged_blocks(self) -> list[BlockKey]:
        return sorted({d.block for d in self.damage}, key=lambda k: (k.L_index, k.m_index, k.seed_start))

    def to_dict(self) -> dict:
        return {"store": self.store, "blocks_total": self.blocks_total, "blocks_done": self.blocks_done,
                "checksums": self.checksums, "damaged_blocks": len(self.damaged_blocks),
                "damage": [{"L": d.block.L, "m": d.block.m, "seeds": list(d.block.seeds), "variable": d.variable,
                            "problem": d.problem} for d in self.damage]}


def _keys(group: zarr.Group, name: str) -> set[str]:
    """The chunk keys an array has in the store (one listing, not one request per chunk)."""
    store, prefix = group.store, f"{group[name].path}/"

    async def collect() -> set[str]:
        return {k.removeprefix(prefix) async for k in store.list_prefix(prefix)}

    return sync(collect())


def _problem(e: Exception) -> str:
    text = " ".join(str(e).split())
    if "checksum" in text.lower():
        return "fails its crc32c checksum"
    return f"cannot be read ({type(e).__name__}: {text[:120]})"


def _read(arr: zarr.Array, index: tuple[int, ...], keys: set[str]) -> np.ndarray | str:
    """One chunk's data, or what is wrong with it."""
    if arr.metadata.encode_chunk_key(index) not in keys:
        return "chunk is missing"
    try:
        return arr.get_block_selection(index)
    except Exception as e:  # a checksum mismatch, a truncated or garbled chunk
        return _problem(e)


def _read_run(arr: zarr.Array, name: str, run: list[BlockKey], spb: int, keys: set[str]) -> list[np.ndarray | str]:
    """The chunks of consecutive blocks of one (L, m): one read when every chunk is there and sound."""
    dims = VARIABLES[name][0]
    indexes = [k.chunk_index(dims, spb) for k in run]
    if all(arr.metadata.encode_chunk_key(i) in keys for i in indexes):
        first = run[0]
        try:
            data = arr[first.selection(dims, through=run[-1])]
        except Exception:  # some chunk is damaged: find which, one by one
            pass
        else:
            axis = dims.index("seed")
            return [np.take(data, range(k.seed_start - first.seed_start,
                                        k.seed_start - first.seed_start + len(k.seeds)), axis=axis) for k in run]
    return [_read(arr, i, keys) for i in indexes]


def _runs(blocks: list[BlockKey], group: zarr.Group) -> Iterator[list[BlockKey]]:
    """Consecutive blocks of one (L, m), in runs of at most BATCH_BYTES of the largest array."""
    per_seed = max(8 * int(np.prod([n for n, d in zip(group[name].shape, VARIABLES[name][0])
                                    if d not in ("L", "m", "seed")])) for name in VARIABLES)
    run: list[BlockKey] = []
    for key in sorted(blocks, key=lambda k: (k.L_index, k.m_index, k.seed_start)):
        if run and ((key.L_index, key.m_index) != (run[0].L_index, run[0].m_index)
                    or (key.seed_start + len(key.seeds) - run[0].seed_start) * per_seed > BATCH_BYTES):
            yield run
            run = []
        run.append(key)
    if run:
        yield run


def _check_run(group: zarr.Group, run: list[BlockKey], spb: int, keys: dict[str, set[str]], layers: np.ndarray,
               undone: bool) -> tuple[int, list[Damage]]:
    """Blocks done among ``run``, and their damage (and unreadable chunks of the others if ``undone``)."""
    damage, done = [], []
    for key, mark in zip(run, _read_run(group["done"], "done", run, spb, keys["done"])):
        if isinstance(mark, str) and mark != "chunk is missing":
            damage.append(Damage(key, "done", mark))  # an unreadable mark: run treats the block as not done
        done.append(not isinstance(mark, str) and bool(mark.all()))
    for name, (dims, *_) in VARIABLES.items():
        if name == "done":
            continue
        for key, is_done, data in zip(run, done, _read_run(group[name], name, run, spb, keys[name])):
            if isinstance(data, str):
                if is_done or undone and data != "chunk is missing":
                    damage.append(Damage(key, name, data))
            elif is_done and (bad := nonfinite(name, data, dims, layers, key.L)).any():
                damage.append(Damage(key, name, f"holds {int(bad.sum())} non-finite values where the results "
                                     "are finite"))
    return sum(done), damage


def scan(where: str | StoreLocation, blocks: list[BlockKey] | None = None, undone: bool = False,
         progress: bool = False) -> Report:
    """Check every block marked done (or the given ``blocks``); nothing is written.

    Args:
        where: the store.
        blocks: check only these blocks (default: all).
        undone: also check that the chunks present in blocks not marked done can be read.
        progress: show a progress bar on stderr.

    Raises:
        StoreError: the path is not a results store, or an array's metadata is damaged.
    """
    from tqdm.auto import tqdm

    loc = as_location(where)
    attrs = read_attrs(loc)
    check_arrays(loc)
    group = zarr.open_group(loc.url, mode="r", **loc.zarr_kwargs)
    spb = int(attrs["seeds_per_block"])
    every = store_blocks(group, spb)
    todo = every if blocks is None else blocks
    keys = {name: _keys(group, name) for name in VARIABLES}
    layers = group["layer"][...]
    damage: list[Damage] = []
    done_count = 0
    with tqdm(total=len(todo), unit="block", desc="verify", disable=not progress) as bar:
        for run in _runs(todo, group):
            n, found = _check_run(group, run, spb, keys, layers, undone)
            done_count += n
            damage += found
            bar.update(len(run))
    checksums = all(any(c.to_dict()["name"] == "crc32c" for c in group[n].metadata.codecs) for n in VARIABLES)
    return Report(str(loc), len(every), done_count, damage, checksums)


def repair(where: str | StoreLocation, report: Report) -> list[BlockKey]:
    """Delete every chunk of the damaged blocks and clear their done mark, under the store's lock.

    The blocks are then exactly as if they had never run: ``nnsweep run``
    computes them again and nothing else.

    Returns:
        The blocks repaired.
    """
    loc = as_location(where)
    blocks = report.damaged_blocks
    with store_lock(loc):
        group = zarr.open_group(loc.url, mode="r+", **loc.zarr_kwargs)
        spb = int(read_attrs(loc)["seeds_per_block"])
        for key in blocks:
            unmark(group, key, spb)  # the done mark first: from here on the block counts as not done
            for name, (dims, *_) in VARIABLES.items():
                arr = group[name]
                sync(arr.store.delete(f"{arr.path}/{arr.metadata.encode_chunk_key(key.chunk_index(dims, spb))}"))
    return blocks


def describe(report: Report, limit: int = 8) -> str:
    """Damaged blocks in one paragraph, at most ``limit`` named."""
    blocks = report.damaged_blocks
    by_block: dict[BlockKey, list[str]] = {}
    for d in report.damage:
        by_block.setdefault(d.block, []).append(f"{d.variable} {d.problem}")
    named = "; ".join(f"{k} ({', '.join(by_block[k])})" for k in blocks[:limit])
    more = f"; and {len(blocks) - limit} more" if len(blocks) > limit else ""
    return f"{len(blocks)} damaged block{'s' if len(blocks) != 1 else ''}: {named}{more}"


def damaged_error(report: Report) -> DamagedStore:
    path = short_path(report.store)
    return DamagedStore(f"store {path} is damaged: {describe(report)}. Run `nnsweep verify {report.store} "
                        f"--repair`, then `nnsweep run SPEC --store {report.store}` to compute those blocks again.")


@contextlib.contextmanager
def reading(where: str | StoreLocation) -> Iterator[None]:
    """Turn a failure to read the store's data into a message naming the damaged blocks."""
    try:
        yield
    except UserError:
        raise
    except Exception:
        report = scan(where, undone=True)
        if report.damage:
            raise damaged_error(report) from None
        raise


def nan_cells(data: xr.DataArray | xr.Dataset, done: xr.DataArray) -> xr.DataArray:
    """Lazily: over (L, m, seed), whether ``data`` is NaN in a done block where results are finite.

    Args:
        data: values read from a store, with dims L, m and seed (and maybe others).
        done: the store's done mark over (L, m, seed).
    """
    if isinstance(data, xr.Dataset):
        data = data.to_dataarray("variable")
    expected = done.sel({d: data[d] for d in ("L", "m", "seed")}).astype(bool)
    if "layer" in data.dims:
        expected = expected & (data["layer"] <= data["L"])
        # the first-order changes are NaN by design in the together cells (layer 0)
        if "variable" in data.dims:
            by_design = xr.DataArray([str(v) in NAN_AT_TOGETHER for v in data["variable"].values], dims="variable",
                                     coords={"variable": data["variable"]})
        else:
            by_design = data.name in NAN_AT_TOGETHER
        expected = expected & ~((data["layer"] == TOGETHER) & by_design)
    return (data.isnull() & expected).any([d for d in data.dims if d not in ("L", "m", "seed")])


def check_nan(where: str | StoreLocation, bad: xr.DataArray) -> None:
    """Raise naming the blocks where ``bad`` (computed :func:`nan_cells`) is true.

    Raises:
        DamagedStore: naming the blocks and what is wrong with them.
    """
    if not bool(bad.any()):
        return
    loc = as_location(where)
    spb = int(read_attrs(loc)["seeds_per_block"])
    group = zarr.open_group(loc.url, mode="r", **loc.zarr_kwargs)
    index = {d: {v: i for i, v in enumerate(group[d][...].tolist())} for d in ("L", "m", "seed")}
    flags = bad.transpose("L", "m", "seed")
    starts = {(index["L"][flags.L.values[a].item()], index["m"][flags.m.values[b].item()],
               index["seed"][flags.seed.values[c].item()] // spb * spb) for a, b, c in np.argwhere(flags.values)}
    blocks = [k for k in store_blocks(group, spb) if (k.L_index, k.m_index, k.seed_start) in starts]
    report = scan(loc, blocks=blocks)
    if not report.damage:  # e.g. NaN written by an older nnsweep, which did not refuse it
        report.damage = [Damage(k, "data", "holds NaN where the results are finite") for k in blocks]
    raise damaged_error(report)
