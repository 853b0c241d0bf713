"""plan: blocks cover the grid exactly once, align with store chunks, and pending drops the done ones."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.plan import BlockKey, all_blocks, blocks_done, n_cells, pending_blocks
from pipeline.spec import Spec

axis_ints = lambda lo, hi, n: st.lists(st.integers(lo, hi), min_size=1, max_size=n, unique=True)  # noqa: E731


@st.composite
def specs(draw) -> Spec:
    """Arbitrary grids: unsorted axes, seeds given as a count or as a sparse list, any block size."""
    seeds = draw(st.one_of(st.integers(1, 23), axis_ints(0, 10_000, 23)))
    L = draw(axis_ints(1, 9, 4))
    raw = {
        "grid": {"L": L, "m": draw(axis_ints(1, 600, 4)),
                 "ratio": draw(st.lists(st.floats(1e-3, 2.0), min_size=1, max_size=3, unique=True)),
                 "layer": draw(st.one_of(st.just("all"), axis_ints(1, max(L), 4))), "seeds": seeds},
        "noise": {"draws": draw(st.integers(1, 5))},
        "execution": {"seeds_per_block": draw(st.integers(1, 30))},
    }
    return Spec.from_dict(raw)


def block_cells(key: BlockKey) -> list[tuple[int, int, int]]:
    return [(key.L, key.m, s) for s in key.seeds]


@settings(max_examples=100, deadline=None)
@given(specs())
def test_all_blocks_cover_every_cell_exactly_once(spec):
    g = spec.grid
    cells = [c for key in all_blocks(spec) for c in block_cells(key)]
    assert len(cells) == len(set(cells)), "a cell is in two blocks"
    assert set(cells) == set(itertools.product(g.L, g.m, g.seeds))


@settings(max_examples=100, deadline=None)
@given(specs())
def test_regions_are_chunk_aligned_and_point_at_the_keys_coordinates(spec):
    g, spb = spec.grid, spec.execution.seeds_per_block
    n = len(g.seeds)
    for key in all_blocks(spec):
        r = key.region()
        assert set(r) == {"L", "m", "seed"}
        assert all(s.step is None for s in r.values())
        # L and m: a single index each, the one holding the key's value
        assert r["L"].stop - r["L"].start == 1 and g.L[r["L"].start] == key.L
        assert r["m"].stop - r["m"].start == 1 and g.m[r["m"].start] == key.m
        # seed: starts on a chunk boundary, ends on the next one (or at the end of the axis)
        start, stop = r["seed"].start, r["seed"].stop
        assert start % spb == 0
        assert stop == min(start + spb, n)
        assert g.seeds[start:stop] == key.seeds


@settings(max_examples=80, deadline=None)
@given(specs(), st.data())
def test_pending_blocks_removes_exactly_the_done_ones(spec, data):
    g = spec.grid
    blocks = all_blocks(spec)
    done_keys = set(data.draw(st.sets(st.sampled_from(blocks), max_size=len(blocks))))
    done = np.zeros((len(g.L), len(g.m), len(g.seeds)), dtype=bool)
    for key in done_keys:  # a block marks all its seeds, as store.write_block does
        r = key.region()
        done[r["L"], r["m"], r["seed"]] = True
    pending = pending_blocks(spec, done)
    assert set(pending) == set(blocks) - done_keys
    assert len(pending) == len(set(pending))
    assert pending == [k for k in blocks if k not in done_keys], "pending must keep the plan's order"
    assert blocks_done(done, spec.execution.seeds_per_block) == (len(done_keys), len(blocks))


@settings(max_examples=60, deadline=None)
@given(specs())
def test_cells_are_the_measurements_that_exist_and_blocks_add_up(spec):
    g = spec.grid
    brute = sum(1 for L, m, r, i, s, d in itertools.product(g.L, g.m, g.ratio, g.layer, g.seeds,
                                                            range(spec.noise.draws)) if i <= L)
    assert n_cells(spec) == brute
    assert sum(n_cells(spec, key) for key in all_blocks(spec)) == brute


def test_all_blocks_runs_largest_first_and_is_deterministic():
    spec = Spec.from_dict({"grid": {"L": [2, 8, 4], "m": [64, 8], "ratio": [0.1], "seeds": 7},
                           "execution": {"seeds_per_block": 3}})
    blocks = all_blocks(spec)
    costs = [k.cost for k in blocks]
    assert costs == sorted(costs, reverse=True)
    assert (blocks[0].L, blocks[0].m, blocks[0].seeds) == (8, 64, (0, 1, 2))
    assert (blocks[-1].L, blocks[-1].m, blocks[-1].seeds) == (2, 8, (6,))
    assert all_blocks(spec) == blocks
    assert len(blocks) == 3 * 2 * 3


def test_block_key_is_small_immutable_and_hashable():
    key = all_blocks(Spec.from_dict({"grid": {"L": [3], "m": [5], "ratio": [0.1], "seeds": 4},
                                     "execution": {"seeds_per_block": 2}}))[1]
    assert str(key) == "L=3 m=5 seeds=2..3"
    assert {key: 1}[dataclasses.replace(key)] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.L = 4  # type: ignore[misc]
    assert pending_blocks(Spec.from_dict({"grid": {"L": [3], "m": [5], "ratio": [0.1], "seeds": 4},
                                          "execution": {"seeds_per_block": 2}}),
                          np.ones((1, 1, 4), dtype=bool)) == []
