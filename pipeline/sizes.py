"""What a sweep will cost, from the spec alone, and the limits that refuse absurd ones.

A spec of a few hundred bytes can ask for 10**9 seeds or draws. Every size here
is arithmetic on the spec (no array is built), so a grid beyond a limit is
refused while the spec is validated: before a store is written or a cluster is
started. The limits are defaults that a user can raise with environment
variables (docs/store.md):

==============================  =============================================  =========
variable                        what it bounds                                 default
==============================  =============================================  =========
``NNSWEEP_MAX_STORE_BYTES``     the store's uncompressed size                  1 TB
``NNSWEEP_MAX_BLOCKS``          blocks (tasks; one chunk per variable each)    1000000
``NNSWEEP_MAX_BLOCK_MEMORY``    the estimated peak memory of one block         16 GiB
==============================  =============================================  =========

>>> from pipeline.spec import Spec
>>> s = sizes(Spec.from_dict({"grid": {"L": [2], "m": [8], "ratio": [0.1], "seeds": 4},
...                           "noise": {"draws": 16}, "execution": {"seeds_per_block": 2}}))
>>> s.cells, s.blocks, s.chunks
(128, 2, 30)
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .activations import activation, per_layer
from . import config
from .config import DRAW_BATCH_BYTES, env_size
from .errors import SpecError
from .network import keeps_weights, layer_shapes
from .noise import BATCH_BYTES, TABLE_INPUTS
from .schema import TOGETHER, VARIABLES, chunk_lengths, dim_lengths

LIMITS = {  # name -> (environment variable, default in bytes or count, what it bounds)
    "store_bytes": ("NNSWEEP_MAX_STORE_BYTES", 10**12, "the store's uncompressed size"),
    "blocks": ("NNSWEEP_MAX_BLOCKS", 10**6, "the number of blocks (one task and one chunk per variable each)"),
    "block_bytes": ("NNSWEEP_MAX_BLOCK_MEMORY", 16 * 2**30, "the estimated peak memory of one block"),
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Sizes of a sweep, computed from its spec.

    ``cells`` counts the values of the largest variable (one per coordinate
    combination, draws included); ``store_bytes`` is the uncompressed size of
    every variable; ``chunks`` the chunk files of a complete store;
    ``block_bytes`` the estimated peak memory of the largest block on a worker,
    above the memory of the libraries themselves.
    """

    cells: int
    store_bytes: int
    chunks: int
    blocks: int
    block_bytes: int

    def __str__(self) -> str:
        return (f"{self.cells:,} cells, {human(self.store_bytes)} uncompressed in {self.chunks:,} chunks, "
                f"{self.blocks:,} blocks of at most {human(self.block_bytes)} peak memory")


def human(n: float) -> str:
    """Bytes as a short string.

    >>> human(1536), human(3 * 10**12)
    ('1.5 KiB', '2.7 TiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def sizes(spec) -> Sizes:
    """The sizes of ``spec``'s store and blocks; cheap for any grid size."""
    n, chunk = dim_lengths(spec), chunk_lengths(spec)
    cells = store_bytes = chunks = 0
    for dims, dtype, *_ in VARIABLES.values():
        count = math.prod(n[d] for d in dims)
        cells = max(cells, count)
        store_bytes += count * np.dtype(dtype).itemsize
        chunks += math.prod(-(-n[d] // chunk[d]) for d in dims)
    blocks = n["L"] * n["m"] * -(-n["seed"] // chunk["seed"])
    return Sizes(cells, store_bytes, chunks, blocks, block_peak_bytes(spec))


def block_peak_bytes(spec) -> int:
    """Estimated peak memory of the largest block of ``spec`` (L and m largest).

    A model of pipeline/measure.py, one network at a time: its weights (all of
    them when the network keeps them, see :func:`pipeline.network.keeps_weights`,
    else the matrix in use and the one being drawn), a batch of draws
    (:func:`batch_bytes`: their results, and their columns when the kernel
    goes layer by layer) and the kernel's pieces (:func:`piece_bytes`), the
    Jacobians, the workspaces of the norms, and the block's results.
    tests/test_sizes.py checks it against the peak that tracemalloc measures.
    """
    g, net, nz = spec.grid, spec.network, spec.noise
    L, m = max(g.L), max(g.m)
    shapes = layer_shapes(L, m, net.input_dim, net.output_dim)
    if net.read:  # networks read from files: the largest of them, with the widths it has
        shapes = max(([(w[j + 1], w[j]) for j in range(len(w) - 1)] for w in (r.widths for r in net.read)),
                     key=lambda s: sum(a * b for a, b in s))
        L = len(shapes)
    item = spec.compute.dtype.itemsize
    biggest = max(a * b for a, b in shapes)
    per_block = min(spec.execution.seeds_per_block, len(g.seeds))
    if net.init_is_file or keeps_weights(shapes, spec.compute.dtype):
        weights = sum(a * b for a, b in shapes) * item + biggest * item
    else:
        weights = 2 * biggest * item
    # copies of a matrix: float32 for the Lanczos estimate, float64 rescaled for the norm bound and for ARPACK
    workspace = biggest * (4 * (item == 8) + 8 * (net.weight_norm_bound is not None) + 8 * (nz.norm == "spectral"))
    rows = max(a for a, _ in shapes)
    n = net.n_inputs
    present = sum(1 for i in g.layer if 1 <= i <= L)
    together = TOGETHER in g.layer
    smooth = any(not activation(a).piecewise_linear for r in net.read or [None]
                 for a in (r.activations if r else per_layer(net.activation, L)))
    held = depth_first(shapes, spec.compute.dtype, net.init_is_file or keeps_weights(shapes, spec.compute.dtype))
    batch, piece, chunk = kernel_batch(shapes, n, len(g.ratio), present, spec.compute.dtype, smooth, held, nz.draws)
    # without a single layer (only the together cells) there are no single-layer columns and no LayerNoise
    work = 0
    if present:
        work += batch_bytes(shapes, n, len(g.ratio), present, spec.compute.dtype, smooth, held) * (batch + 1)
        work += piece_bytes(shapes, n, len(g.ratio), min(batch, piece), spec.compute.dtype, smooth, held)
        # the draws waiting for their first-order changes (a chunk, or a piece when larger): their noise laid out
        # by input in one buffer, and the first-order changes and crossing thresholds' temporaries (working
        # precision and float64)
        work += min(batch, max(chunk, piece)) * n * (rows * item + (item + 24) * net.output_dim)
        work += rows * (n + config.FIRST_ORDER_PAD) * item  # one draw's noise in rows a little longer, for some n
        # J_i of every perturbed layer, kept for the draws' first-order changes
        work += n * net.output_dim * sum(shapes[i - 1][0] for i in g.layer if 1 <= i <= L) * item
    if together:  # its passes run after the batch's single-layer columns, whose buffers are still held
        formed = nz.distribution == "rademacher" or nz.norm == "spectral"
        passes = min(nz.draws, piece,
                     together_draws_per_pass(shapes, n, len(g.ratio), spec.compute.dtype, formed))
        work += together_bytes(shapes, n, len(g.ratio), spec.compute.dtype, smooth, formed) * (passes + 1)
        work += 32 * n * len(g.ratio) * batch  # the together cells' results of a batch, and their copies
    work += 5 * 8 * n * net.output_dim * rows  # one layer's Jacobians of the linear answer, and float64 copies
    if present and (nz.distribution == "rademacher" or n >= min(b for _, b in shapes)):
        # eta is formed a batch of draws at a time (pipeline/noise.py): signs as bytes and in the working
        # precision, or float64 normals and their working-precision copy
        batch = min(nz.draws, max(1, BATCH_BYTES // (8 * biggest))) * biggest
        if nz.distribution != "rademacher":
            workspace += batch * (8 + item)
        elif nz.norm == "frobenius" and n <= TABLE_INPUTS:
            workspace += batch // 8 + 256 * 8 * n * max(b for _, b in shapes)  # sign bits and the byte tables
        else:
            workspace += batch * (1 + item)
    small = [a * b for a, b in shapes if min(a, b) < 128]
    if small:
        workspace += 8 * max(small)  # a dense SVD's workspace for the spectral norm of a small matrix
    # delta, flips, predictions, first-order change and prediction per draw: one network's, and the block's stacked
    results = 5 * 8 * len(g.ratio) * len(g.layer) * n * nz.draws * (per_block + 1)
    return int(weights + workspace + work + results)


def batch_bytes(shapes, n: int, ratios: int, present: int, dtype, smooth: bool = False,
                held: bool = True) -> int:
    """Working memory of one draw in a batch (pipeline/measure.py): the results of its columns (one per
    input, ratio and perturbed layer: the change, flips, prediction and their copies in the batch's
    arrays, and the same of the first-order change and prediction), and, when the kernel goes layer by layer
    (``held`` False: :func:`depth_first` is), the columns in two buffers of the widest layer. The pieces'
    own memory is :func:`piece_bytes`."""
    columns = n * ratios * present
    per_draw = 80 * columns + 32 * columns  # and the first-order change and prediction of every column
    if not held:
        per_draw += 2 * max(a for a, _ in shapes) * columns * np.dtype(dtype).itemsize
    return int(per_draw)


def piece_bytes(shapes, n: int, ratios: int, draws: int, dtype, smooth: bool = False, held: bool = True) -> int:
    """Working memory of the kernel's pieces of ``draws`` draws: two buffers of the widest layer (depth
    first), a mask, the noise of a piece (float64, and its copy at every ratio), the clean values tiled
    for every layer (depth first) or one, and the float64 temporaries of a smooth activation's difference."""
    rows, item = max(a for a, _ in shapes), np.dtype(dtype).itemsize
    columns = n * ratios * draws
    out = rows * columns * (2 * item * held + 1) + 16 * rows * n * draws
    out += rows * columns * (3 * item + 1) * (len(shapes) if held else 1)
    if smooth:
        out += 12 * 8 * rows * columns
    return int(out)


def together_bytes(shapes, n: int, ratios: int, dtype, smooth: bool = False, formed: bool = True) -> int:
    """Working memory of one draw of the together cells (pipeline/together.py): its n * ratios columns
    as the perturbed input, the change and the clean pre-activations gathered per column, their
    difference and a transposed copy (the widest layer, working precision), the float64 samples and
    product of the exact sampler, one layer's eta where it is formed (``formed``: Rademacher or
    spectral noise; else only layers with at most n * ratios inputs) in float64 (and cast to float32
    in float32), and a smooth activation's float64 temporaries."""
    rows = max(max(a, b) for a, b in shapes)
    columns = n * ratios
    item = np.dtype(dtype).itemsize
    eta = max([a * b for a, b in shapes if formed or b <= columns], default=0)
    per_draw = rows * columns * (6 * item + 2 + 3 * 8) + eta * (8 + (item if item < 8 else 0))
    if smooth:
        per_draw += 12 * 8 * rows * columns
    return int(per_draw + 3 * 8 * columns)


def depth_first(shapes, dtype, held: bool) -> bool:
    """Whether the kernel (pipeline/measure.py run_pass) takes each piece of columns through all its layers
    at once: when the network holds its matrices (``held``) and together they fit DEPTH_FIRST_WEIGHT_BYTES, a
    share of a last-level cache. Otherwise it goes layer by layer, every piece of a layer before the next, in
    buffers of the whole batch: taking each piece through every layer would read all the matrices from memory
    again for every piece, where layer by layer one matrix stays in cache for all the pieces
    (docs/performance.md measures both ways). The numbers are the same either way."""
    return held and sum(a * b for a, b in shapes) * np.dtype(dtype).itemsize <= config.DEPTH_FIRST_WEIGHT_BYTES


def draws_per_batch(shapes, n: int, ratios: int, present: int, dtype, smooth: bool = False,
                    held: bool = True) -> int:
    """Draws that fit NNSWEEP_DRAW_BATCH_MEMORY (at least one), before :func:`kernel_batch` rounds them to
    whole pieces and chunks. ``held``: the kernel goes depth first (:func:`depth_first`)."""
    budget = env_size("NNSWEEP_DRAW_BATCH_MEMORY", DRAW_BATCH_BYTES)
    return max(1, budget // batch_bytes(shapes, n, ratios, max(present, 1), dtype, smooth, held))


def draws_per_piece(shapes, n: int, ratios: int, dtype) -> int:
    """Draws that the kernel multiplies and passes through an activation together (pipeline/measure.py):
    the n inputs and every ratio of as many draws as fill PIECE_BYTES of the widest layer (at least
    one), rounded down to a power of two. A column's numbers depend on the shape of the product it is in,
    so a piece is the same whatever the batch; batches are whole pieces."""
    rows = max(a for a, _ in shapes)
    return _power_of_two(config.PIECE_BYTES // (ratios * n * rows * np.dtype(dtype).itemsize))


def first_order_draws(shapes, n: int, ratios: int, present: int, dtype, smooth: bool = False) -> int:
    """Draws whose first-order changes J_i eta h_{i-1} the kernel takes in one product per input: a power of
    two whose noise (n inputs, the widest layer) fits FIRST_ORDER_BYTES and whose batch fits four times the
    default draw-batch budget even when the network draws its weights again (at least one): batches are
    whole chunks, so a smaller NNSWEEP_DRAW_BATCH_MEMORY may be exceeded up to that (the memory model,
    :func:`kernel_batch`, counts it); fewer draws per chunk cost a product per input each (30% of a
    data-set estimate at 4 draws against 16). The default budget, and not whether the weights are kept,
    so that the chunks, whose shape rounds their products, depend on the spec alone (never on
    NNSWEEP_DRAW_BATCH_MEMORY or NNSWEEP_KEEP_WEIGHTS)."""
    rows = max(a for a, _ in shapes)
    return _power_of_two(min(config.FIRST_ORDER_BYTES // (n * rows * np.dtype(dtype).itemsize),
                             4 * DRAW_BATCH_BYTES // batch_bytes(shapes, n, ratios, max(present, 1), dtype, smooth,
                                                                 False)))


def kernel_batch(shapes, n: int, ratios: int, present: int, dtype, smooth: bool, held: bool, draws: int,
                 with_linear: bool = True) -> tuple[int, int, int]:
    """(draws per batch, per piece, per first-order chunk) as pipeline/measure.py runs them: the batch
    NNSWEEP_DRAW_BATCH_MEMORY asks for, rounded down to whole pieces and chunks (both powers of two; at
    least one of the larger), and at most the draws. ``held``: the kernel goes depth first (:func:`depth_first`)."""
    piece = draws_per_piece(shapes, n, ratios, dtype)
    chunk = first_order_draws(shapes, n, ratios, present, dtype, smooth) if with_linear else 1
    unit = max(piece, chunk)
    batch = max(1, draws_per_batch(shapes, n, ratios, present, dtype, smooth, held) // unit) * unit
    return min(batch, draws), piece, chunk


def together_draws_per_pass(shapes, n: int, ratios: int, dtype, formed: bool = True) -> int:
    """Draws per pass of the together cells: a power of two, as many as fit the default draw-batch budget
    (at least one). A batch runs its together draws in passes of this many (or of a piece, if smaller:
    both are powers of two, so the passes divide every batch but the last, and a draw's numbers do not
    depend on the batches). The default budget, not NNSWEEP_DRAW_BATCH_MEMORY, so that the numbers do not
    depend on that setting either; smooth activations' temporaries are left out for the same reason."""
    return _power_of_two(DRAW_BATCH_BYTES // together_bytes(shapes, n, ratios, dtype, False, formed))


def _power_of_two(fit: int) -> int:
    """The largest power of two at most ``fit`` (1 for less): the kernel's pieces, first-order chunks and
    together passes are powers of two, so the smaller of any two divides the larger."""
    return 1 << (max(1, int(fit)).bit_length() - 1)


def limit(name: str) -> int:
    """The limit ``name`` (a key of :data:`LIMITS`): its environment variable, or the default."""
    var, default, _ = LIMITS[name]
    return env_size(var, default, count=name == "blocks")


def check_sizes(spec) -> Sizes:
    """Refuse a spec whose store, block count or block memory exceeds a limit.

    Raises:
        SpecError: naming the size, the limit and the variable that raises it.
    """
    s = sizes(spec)
    where = f"{spec.source}: " if spec.source else ""
    for name, value in (("store_bytes", s.store_bytes), ("blocks", s.blocks), ("block_bytes", s.block_bytes)):
        cap = limit(name)
        if value > cap:
            var, _, what = LIMITS[name]
            shown = f"{value:,}" if name == "blocks" else human(value)
            cap_shown = f"{cap:,}" if name == "blocks" else human(cap)
            raise SpecError(f"{where}this sweep is too large: {what} would be {shown}, above the limit of "
                            f"{cap_shown} ({s}). Make the grid smaller (grid.seeds, noise.draws, "
                            f"execution.seeds_per_block), or raise the limit with {var}=... if the machines "
                            "can hold it. Nothing was written.")
    return s


def machine_memory() -> int:
    """This machine's physical memory in bytes."""
    import psutil

    return int(psutil.virtual_memory().total)


def check_fits(spec, memory_bytes: float, where: str) -> None:
    """Refuse a spec whose largest block does not fit ``memory_bytes`` (one worker's memory).

    Raises:
        SpecError: naming the estimate and the memory.
    """
    need = block_peak_bytes(spec)
    if need > memory_bytes:
        raise SpecError(f"a block of this sweep needs about {human(need)} of memory, more than {where} has "
                        f"({human(memory_bytes)}); use fewer seeds per block (--seeds-per-block), fewer or "
                        "bigger workers (--workers), or a cluster (--cluster). Nothing was written.")
