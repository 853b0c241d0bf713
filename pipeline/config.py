"""Tunables read from the environment: a leaf module (nothing of the package below it).

Every ``NNSWEEP_*`` variable that changes how the tool runs (never a number it
computes) is parsed here, in one way: a size in bytes such as ``64MB`` or
``2GiB`` (or a count), refused in one line when it is not one.

==============================  ===================================================  =========
variable                        what it sets                                         default
==============================  ===================================================  =========
``NNSWEEP_KEEP_WEIGHTS``        the largest network (bytes) whose weights a worker   256 MiB
                                keeps between the kernel's passes
``NNSWEEP_DRAW_BATCH_MEMORY``   the working memory of one batch of noise draws:      32 MiB
                                a network's draws run batch after batch
``NNSWEEP_MAX_STORE_BYTES``     the largest store a spec may ask for                 1 TB
``NNSWEEP_MAX_BLOCKS``          the most blocks (tasks) a spec may ask for           1000000
``NNSWEEP_MAX_BLOCK_MEMORY``    the largest estimated peak memory of one block       16 GiB
``NNSWEEP_MALLOC``              ``default`` leaves glibc's malloc thresholds alone   (set)
                                (pipeline/allocator.py)
==============================  ===================================================  =========
"""

from __future__ import annotations

import os

from .errors import SpecError

# NNSWEEP_DRAW_BATCH_MEMORY's default: a batch holds its draws' results (the kernel works on pieces of a few
# draws), and batches larger than this are no faster
DRAW_BATCH_BYTES = 32 * 2**20
PIECE_BYTES = 256 * 2**10  # the kernel's columns per product and pass: about an L2 cache's worth (not a setting)
FIRST_ORDER_BYTES = 8 * 2**20  # the noise of the draws whose first-order changes are taken together (not a setting)
# the most weight bytes of a network the kernel takes depth first, each piece through all its layers: a share of
# a last-level cache; more would come from memory again for every piece, so the kernel goes layer by layer
DEPTH_FIRST_WEIGHT_BYTES = 8 * 2**20
FIRST_ORDER_PAD = 8  # elements a draw's noise rows grow by before its transposed copy, where n rows are 512 B apart


def env_size(var: str, default: int, count: bool = False, zero: bool = False) -> int:
    """A size in bytes (or a count) from the environment variable ``var``, or ``default`` when unset.

    Raises:
        SpecError: the value is not a size (or count) > 0 (>= 0 with ``zero``).
    """
    raw = os.environ.get(var)
    if raw is None:
        return default
    try:
        if not raw.strip():
            raise ValueError(raw)
        if count:
            value = int(raw)
        else:
            from dask.utils import parse_bytes  # only when the variable is set: dask is slow to import

            value = int(parse_bytes(raw))
    except (ValueError, TypeError):
        raise SpecError(f"{var}={raw!r} is not allowed; expected a count or a size such as 64GB.") from None
    if value < 0 or value == 0 and not zero:
        raise SpecError(f"{var}={raw!r} is not allowed; expected a number {'>= 0' if zero else '> 0'}.")
    return value
