"""Plan a sweep: the blocks of a spec as small immutable keys, minus the done ones.

A block is one L, one m, a run of consecutive seeds, and every ratio, layer and
draw: exactly one chunk of every variable in the store.

>>> from pipeline.spec import Spec
>>> spec = Spec.from_dict({"grid": {"L": [2], "m": [8, 16], "ratio": [0.1], "seeds": 5},
...                        "execution": {"seeds_per_block": 2}})
>>> [str(k) for k in all_blocks(spec)][:3]
['L=2 m=16 seeds=0..1', 'L=2 m=16 seeds=2..3', 'L=2 m=16 seeds=4..4']
>>> all_blocks(spec)[0].region()
{'L': slice(0, 1, None), 'm': slice(1, 2, None), 'seed': slice(0, 2, None)}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from .spec import Spec


@dataclasses.dataclass(frozen=True, order=True)
class BlockKey:
    """Where a block sits in the grid: coordinate values and their positions."""

    L: int
    m: int
    seeds: tuple[int, ...]
    L_index: int
    m_index: int
    seed_start: int

    def region(self, through: BlockKey | None = None) -> dict[str, slice]:
        """The block's zarr region along the dimensions it does not span whole.

        With ``through`` (a later block of the same L and m), the region of the
        consecutive blocks from this one to that one.
        """
        last = through or self
        return {
            "L": slice(self.L_index, self.L_index + 1),
            "m": slice(self.m_index, self.m_index + 1),
            "seed": slice(self.seed_start, last.seed_start + len(last.seeds)),
        }

    def selection(self, dims: tuple[str, ...], through: BlockKey | None = None) -> tuple[slice, ...]:
        """The block's region in an array over ``dims``: its slices, and every other dimension whole.

        >>> BlockKey(2, 8, (4, 5), 0, 1, 4).selection(("L", "m", "ratio", "seed"))
        (slice(0, 1, None), slice(1, 2, None), slice(None, None, None), slice(4, 6, None))
        """
        region = self.region(through)
        return tuple(region.get(d, slice(None)) for d in dims)

    def chunk_index(self, dims: tuple[str, ...], seeds_per_block: int) -> tuple[int, ...]:
        """The index of the block's chunk in an array over ``dims`` (its one chunk along every other).

        >>> BlockKey(2, 8, (4, 5), 0, 1, 4).chunk_index(("L", "m", "ratio", "seed"), 2)
        (0, 1, 0, 2)
        """
        at = {"L": self.L_index, "m": self.m_index, "seed": self.seed_start // seeds_per_block}
        return tuple(at.get(d, 0) for d in dims)

    @property
    def cost(self) -> float:
        """Relative compute cost, for running the big blocks first."""
        return len(self.seeds) * self.L * self.L * self.m * self.m

    def __str__(self) -> str:
        return f"L={self.L} m={self.m} seeds={self.seeds[0]}..{self.seeds[-1]}"


def grid_blocks(L: Sequence[int], m: Sequence[int], seeds: Sequence[int], seeds_per_block: int) -> list[BlockKey]:
    """Every block of a grid with these coordinate values, in store order (L, then m, then seed).

    >>> [str(k) for k in grid_blocks([2], [8], [0, 1, 2], 2)]
    ['L=2 m=8 seeds=0..1', 'L=2 m=8 seeds=2..2']
    """
    seeds = tuple(seeds)
    return [BlockKey(Lv, mv, seeds[s:s + seeds_per_block], li, mi, s)
            for li, Lv in enumerate(L) for mi, mv in enumerate(m) for s in range(0, len(seeds), seeds_per_block)]


def all_blocks(spec: Spec) -> list[BlockKey]:
    """Every block of the grid, largest first (so the long ones do not finish last)."""
    g = spec.grid
    keys = grid_blocks(g.L, g.m, g.seeds, spec.execution.seeds_per_block)
    return sorted(keys, key=lambda k: (-k.cost, k))


def pending_blocks(spec: Spec, done: np.ndarray) -> list[BlockKey]:
    """The blocks not yet marked done; ``done`` is the store's (L, m, seed) mark."""
    return [k for k in all_blocks(spec) if not done[k.L_index, k.m_index, k.seed_start]]


def block_starts(n_seeds: int, seeds_per_block: int) -> np.ndarray:
    """Position along ``seed`` of each block's first seed, which carries the block's done mark and wall time.

    >>> block_starts(5, 2).tolist()
    [0, 2, 4]
    """
    return np.arange(0, n_seeds, seeds_per_block)


def blocks_done(done: np.ndarray, seeds_per_block: int) -> tuple[int, int]:
    """Blocks marked done and blocks in all, from the store's (L, m, seed) done mark.

    >>> blocks_done(np.array([[[True, True, False]]]), 2)
    (1, 2)
    """
    starts = block_starts(done.shape[2], seeds_per_block)
    return int(done[:, :, starts].sum()), done.shape[0] * done.shape[1] * starts.size


def n_cells(spec: Spec, key: BlockKey | None = None) -> int:
    """Cells of the whole grid, or of block ``key``: one cell is one measured ||v - v*||.

    A cell is an (L, m, ratio, layer, seed, input, draw) with layer <= L; cells
    with layer > L are NaN in the store and not counted.

    >>> from pipeline.spec import Spec
    >>> spec = Spec.from_dict({"grid": {"L": [1, 2], "m": [8], "ratio": [0.1], "seeds": 3},
    ...                        "noise": {"draws": 4}})
    >>> n_cells(spec), n_cells(spec, all_blocks(spec)[0])
    (36, 24)
    """
    g, draws = spec.grid, spec.noise.draws * spec.network.n_inputs
    if key is not None:
        return sum(1 for i in g.layer if i <= key.L) * len(g.ratio) * len(key.seeds) * draws
    layers = sum(1 for L in g.L for i in g.layer if i <= L)
    return layers * len(g.m) * len(g.ratio) * len(g.seeds) * draws
