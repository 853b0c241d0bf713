"""nnsweep: weight-noise sensitivity sweeps of ReLU networks.

The public API: load a spec, measure, run a sweep, read the results.
"""

from .errors import BlockFailed, SpecError, StoreError, UserError
from .estimate import estimate
from .measure import BlockResult, measure_block, measure_network
from .network import Network, build_network, make_input
from .plan import BlockKey, all_blocks, pending_blocks
from .spec import Spec, load_spec
from .store import open_results

__all__ = [
    "BlockFailed", "BlockKey", "BlockResult", "Network", "Spec", "SpecError", "StoreError", "UserError",
    "all_blocks", "build_network", "estimate", "load_spec", "make_input", "measure_block",
    "measure_network", "open_results", "pending_blocks", "run",
]


def run(*args, **kwargs):
    """Run or resume a sweep; see :func:`pipeline.execute.run` (imports dask.distributed)."""
    from .execute import run as _run

    return _run(*args, **kwargs)
