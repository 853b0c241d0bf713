"""Errors that users can fix, reported by the CLI as one paragraph with exit status 2."""


class UserError(Exception):
    """Bad input: a spec, a file, a store or an option the user can correct."""


class SpecError(UserError):
    """A sweep spec that cannot be loaded or does not validate."""


class StoreError(UserError):
    """A results store that is missing, foreign or made from another spec."""


class ResultNotFinite(ValueError):
    """A block's results are not finite where they must be; computing it again gives the same."""


class BlockFailed(RuntimeError):
    """A block of the sweep raised on a worker; carries the block's coordinates."""


class ClusterLost(RuntimeError):
    """The scheduler went away mid-run; finished blocks are kept, a rerun resumes."""
