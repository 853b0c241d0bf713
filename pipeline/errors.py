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


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a run; finished blocks are kept, a rerun resumes.

    A KeyboardInterrupt, so that no ``except Exception`` swallows it; the CLI
    prints its message as one line and exits with :attr:`exit_status`.
    """

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"interrupted ({signal_name(signum)})")
        self.signum = signum
        self.detailed = bool(message)  # says what was kept and how to resume

    @property
    def signal_name(self) -> str:
        return signal_name(self.signum)

    @property
    def exit_status(self) -> int:
        """128 + the signal number, as a shell reports a process killed by it (130, 143)."""
        return 128 + self.signum


def signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
