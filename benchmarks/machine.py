"""The machine's own limits, measured in the run that compares against them.

Shared by the benchmarks (run as ``python benchmarks/x.py`` from the repository
root, so this module is importable as ``machine``):

- :func:`gemm_rate`: float64 or float32 GEMM rate, ``np.matmul`` of (m x m) by
  (m x c) into a preallocated output, best of several timings;
- :func:`normal_rate`: standard normal numbers per second,
  ``Generator.standard_normal(out=...)`` into a preallocated array, best of several;
- :func:`bracket`: a rate measured before AND after the timed work, of which
  the best is the limit. A single reference taken at a cold or busy moment is
  not a ceiling: a kernel could then appear to run above 100% of it;
- :func:`describe`: CPU model, cores, load average, BLAS and numpy versions;
- :class:`Launcher`: runs a command and measures its wall time and its own peak
  resident memory.

Pin the BLAS thread count around the rates and the work alike: a rate is only
a limit for work done with the same number of threads. :func:`pin_threads` does
it through the environment (for this process and its children), so this module
imports numpy only inside its functions: import it, pin, then import numpy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def pin_threads(threads: int) -> None:
    """Set the BLAS and OpenMP thread counts in the environment: for this process if numpy is not imported
    yet, and for every child process started afterwards."""
    for var in THREAD_VARS:
        os.environ[var] = str(threads)


def best_seconds(fn: Callable[[], object], repeats: int, min_time: float = 0.05) -> float:
    """Best time of one call of ``fn`` over ``repeats`` timings of at least ``min_time`` seconds each.

    A timing repeats the call until ``min_time`` has passed and divides by the
    count, so short calls are not timer noise. ``fn`` is called once first
    (warm-up: page faults, BLAS buffers).
    """
    fn()
    best = float("inf")
    for _ in range(repeats):
        calls, t0 = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time:
                break
        best = min(best, elapsed / calls)
    return best


def gemm_rate(m: int, c: int, dtype="float64", repeats: int = 7, min_time: float = 0.05) -> float:
    """Flop/s of ``np.matmul`` (m x m) @ (m x c) in ``dtype`` into a preallocated output, best of ``repeats``."""
    import numpy as np

    rng = np.random.default_rng(1)
    lhs = rng.standard_normal((m, m)).astype(dtype)
    rhs = rng.standard_normal((m, c)).astype(dtype)
    out = np.empty((m, c), dtype=dtype)
    seconds = best_seconds(lambda: np.matmul(lhs, rhs, out=out), repeats, min_time)
    return 2.0 * m * m * c / seconds


def normal_rate(dtype="float64", size: int = 1 << 20, repeats: int = 7, min_time: float = 0.05) -> float:
    """Standard normal numbers per second in ``dtype``, best of ``repeats``; ``size`` numbers per call
    (large enough that the call's overhead does not count). numpy's ``Generator.standard_normal(out=...)``,
    and for float32 the faster of it and the kernel's own sampler (pipeline.network.standard_normal32)."""
    import numpy as np

    dtype = np.dtype(dtype)
    rng = np.random.default_rng(2)
    out = np.empty(size, dtype=dtype)
    seconds = best_seconds(lambda: rng.standard_normal(out=out, dtype=dtype), repeats, min_time)
    if dtype == np.float32:
        from pipeline.network import standard_normal32

        seconds = min(seconds, best_seconds(lambda: standard_normal32(rng, (size,)), repeats, min_time))
    return size / seconds


@dataclasses.dataclass
class Bracket:
    """One rate measured before and after the timed work; :attr:`best` is the limit to compare with."""

    before: float
    after: float | None = None

    @property
    def best(self) -> float:
        return self.before if self.after is None else max(self.before, self.after)

    @property
    def spread(self) -> float:
        """How far the lower of the two is below the best (0.1 = 10% below): a warning sign of a busy machine."""
        return 0.0 if self.after is None else 1.0 - min(self.before, self.after) / self.best

    def as_dict(self) -> dict:
        return {"before": self.before, "after": self.after, "best": self.best}


@contextmanager
def bracket(measure: Callable[[], float]) -> Iterator[Bracket]:
    """Measure a rate before the ``with`` body and again after it; the best of the two is the limit.

    >>> rates = iter([1.0, 3.0])
    >>> with bracket(lambda: next(rates)) as b:
    ...     pass  # the timed work
    >>> b.before, b.after, b.best
    (1.0, 3.0, 3.0)
    """
    b = Bracket(measure())
    yield b
    b.after = measure()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas() -> str:
    """The BLAS numpy uses, with its version, architecture and current thread count (threadpoolctl)."""
    from threadpoolctl import threadpool_info

    found = [f"{p.get('internal_api')} {p.get('version')} ({p.get('architecture', '?')}, "
             f"{p.get('num_threads')} threads)" for p in threadpool_info() if p.get("user_api") == "blas"]
    return "; ".join(found) or "unknown"


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def describe() -> dict:
    """What the figures were measured on."""
    import numpy as np

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average": load_average(), "blas": blas(),
            "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform()}


def summary(info: dict) -> str:
    """One line of :func:`describe`'s output."""
    load = "/".join(f"{x:.2f}" for x in info["load_average"]) or "unknown"
    return (f"{info['cpu']}, {info['cores']} cores, load {load} (1/5/15 min); {info['blas']}; "
            f"numpy {info['numpy']}, Python {info['python']}")


def rss_mb(maxrss: int) -> float:
    """``ru_maxrss`` in MB (kilobytes on Linux, bytes on macOS)."""
    return maxrss / (2**20 if sys.platform == "darwin" else 2**10)


# The helper process of Launcher: reads one JSON request per line, forks and execs it with stdin from
# /dev/null and stdout/stderr to the files named, and answers one JSON line with its wait4 figures.
_LAUNCHER = r"""
import json, os, sys, time
for line in sys.stdin:
    req = json.loads(line)
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.chdir(req["cwd"])
            for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["stdout"], os.O_WRONLY | os.O_TRUNC),
                                    (2, req["stderr"], os.O_WRONLY | os.O_TRUNC)):
                os.dup2(os.open(path, flags), fd)
            os.execvp(req["argv"][0], req["argv"])
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    print(json.dumps({"seconds": time.perf_counter() - t0, "maxrss": usage.ru_maxrss,
                      "cpu_seconds": usage.ru_utime + usage.ru_stime,
                      "returncode": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Launcher:
    """Runs commands from a small helper process, so that their measured peak memory is their own.

    A child's ``ru_maxrss`` (from ``wait4``) starts at its parent's peak
    resident memory: fork copies the parent's memory map (vfork shares it), and
    exec keeps that map's high-water mark. Every child of a benchmark that has
    imported numpy and allocated GEMM buffers would report at least that much.
    Start a Launcher before the parent grows (before numpy is imported): the
    commands are forked from its helper, a bare interpreter of a few MB, below
    any Python process's own peak. Use it as a context manager.
    """

    def __init__(self):
        self._dir = tempfile.TemporaryDirectory(prefix="launcher-")
        self._helper = subprocess.Popen([sys.executable, "-I", "-S", "-c", _LAUNCHER], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)

    def run(self, argv: list[str], cwd: str | Path = ".") -> dict:
        """Run ``argv`` to completion (environment: this process's at the Launcher's start).

        Returns:
            ``stdout``, ``seconds`` (wall, start-up included), ``cpu_seconds`` (user and system time of the
            command), ``peak_rss_mb`` (the command's ru_maxrss).

        Raises:
            RuntimeError: the command failed; the message holds its stderr.
        """
        out, err = Path(self._dir.name, "stdout"), Path(self._dir.name, "stderr")
        out.touch()
        err.touch()
        request = {"argv": [str(a) for a in argv], "cwd": str(Path(cwd).resolve()), "stdout": str(out),
                   "stderr": str(err)}
        self._helper.stdin.write(json.dumps(request) + "\n")
        self._helper.stdin.flush()
        line = self._helper.stdout.readline()
        if not line:
            raise RuntimeError(f"the launcher's helper process ended before running {' '.join(request['argv'])}")
        answer = json.loads(line)
        if answer["returncode"] != 0:
            raise RuntimeError(f"{' '.join(request['argv'])} exited with {answer['returncode']}:\n{err.read_text()}")
        return {"stdout": out.read_text(), "seconds": answer["seconds"], "cpu_seconds": answer["cpu_seconds"],
                "peak_rss_mb": rss_mb(answer["maxrss"])}

    def close(self) -> None:
        self._helper.stdin.close()
        self._helper.wait()
        self._helper.stdout.close()
        self._dir.cleanup()

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
