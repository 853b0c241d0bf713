"""pipeline/allocator.py: with the policy set, a freed batch-sized array comes back without page faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# Allocates and frees a 1 MiB array (above glibc's first mmap threshold), then counts the page faults of
# allocating and filling one again: the memory freed is reused, or comes back from the system as new pages.
CHILD = """
import json, resource, sys
import numpy as np
from pipeline.allocator import reuse_freed_memory

policy = reuse_freed_memory() if sys.argv[1] == "set" else None
a = np.ones(2**17)
del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
b = np.ones(2**17)
print(json.dumps({"policy": policy, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def faults(mode: str, **env: str) -> dict:
    # glibc's own tunables left out of the child's environment: its default policy is what is compared
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("MALLOC_", "NNSWEEP_MALLOC"))}
    done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=60,
                          check=True, env={**clean, **env})
    return json.loads(done.stdout)


def test_a_freed_array_is_reused_once_the_policy_is_set():
    """On glibc (the Linux machines the suite runs on)."""
    default, policy = faults("default"), faults("set")
    assert policy["policy"] is True
    pages = 2**17 * 8 // 4096  # 256 pages of 4 KiB
    assert default["faults"] >= pages // 2  # glibc's default: new pages from the system, each a fault
    assert policy["faults"] < pages // 8  # the freed memory again


def test_nnsweep_malloc_default_leaves_glibc_alone():
    """NNSWEEP_MALLOC=default: the policy is not set, and a freed array comes back as new pages again."""
    kept = faults("set", NNSWEEP_MALLOC="default")
    assert kept["policy"] is False
    assert kept["faults"] >= 2**17 * 8 // 4096 // 2
