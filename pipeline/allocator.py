"""The C allocator's policy for a process that frees and allocates batch-sized arrays again and again.

glibc gives a freed block of more than its mmap threshold back to the system at once (the threshold
starts at 128 KiB and rises as larger blocks are freed), and trims the top of its heap when more than
its trim threshold lies free there. An estimate's kernel allocates and frees arrays of a batch's size
every few milliseconds, so whether they come back as fresh pages (a fault for every 4 KiB, zeroed by
the system) or as memory the process already has depends on how the thresholds happened to move:
from run to run, and with what the pooling allocates between batches. Setting both thresholds once
makes freed arrays of up to 32 MiB reused. The price is memory: up to :data:`TRIM_THRESHOLD` bytes may
stay free in the process instead of going back to the system.

Other C libraries (macOS, musl, Windows) are left as they are.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 32 * 2**20  # the ceiling of glibc's own dynamic threshold on 64-bit systems
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # what glibc sets when it raises the mmap threshold itself


@functools.cache
def reuse_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (:data:`MMAP_THRESHOLD`, :data:`TRIM_THRESHOLD`) for this
    process, once; whether they were set (False on other C libraries, or with NNSWEEP_MALLOC=default,
    which leaves glibc's own policy alone). The kernel (:func:`pipeline.measure.network_batches`) calls it in
    every process that measures, a Dask worker too: a worker of an outside cluster then keeps up to
    TRIM_THRESHOLD of freed memory, where its nanny may have asked glibc for less
    (MALLOC_TRIM_THRESHOLD_). Without it, how fast the kernel ran depended on what the process had
    allocated before (docs/performance.md)."""
    if not sys.platform.startswith("linux") or os.environ.get("NNSWEEP_MALLOC", "").strip().lower() == "default":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
