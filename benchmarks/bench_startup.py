"""Benchmark the fixed start-up cost of the ``nnsweep`` command, whole processes.

One run times, interleaved round by round so that a change of load hits all of
them alike, and keeps the best of ``--repeat`` rounds for each:
  (a) ``python -c pass``: the interpreter alone, the baseline;
  (b) ``nnsweep --help``;
  (c) ``nnsweep estimate --help``;
  (d) a tiny ``nnsweep estimate`` (L = 2, m = 16, d = 8, k = 2, one network,
      two draws, layer 1), whose compute takes milliseconds: nearly all of it
      is start-up (imports, the spec, the table).

Reports each process's seconds and its overhead over (a), with the machine
(cpu model, cores, load average before and after). Target: every overhead
at most 0.35 s.

    python benchmarks/bench_startup.py
    python benchmarks/bench_startup.py --repeat 11 --json

``nnsweep`` is the console script installed beside this Python, else
``python -m pipeline``; either runs the ``pipeline`` package this Python
imports (set PYTHONPATH to time a source tree that is not installed). The
processes cache their bytecode in a temporary directory (PYTHONPYCACHEPREFIX,
PYTHONDONTWRITEBYTECODE unset), as an installed package does after its first
run; ``--as-is`` keeps the environment as it is.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine  # benchmarks/machine.py: benchmarks/ is sys.path[0] when run as a script

TARGET_SECONDS = 0.35
TINY_ESTIMATE = ["estimate", "--L", "2", "--m", "16", "--d", "8", "--k", "2", "--seeds", "1", "--draws", "2",
                 "--ratio", "0.1", "--layer", "1"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=7, help="rounds; the best of each process is kept (default 7)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--as-is", action="store_true",
                   help="keep the environment's bytecode settings (default: cache bytecode in a temporary directory)")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    return args


def nnsweep_command() -> list[str]:
    """The installed console script beside this interpreter, else ``python -m pipeline``."""
    script = Path(sys.executable).parent / "nnsweep"
    if script.exists():
        return [str(script)]
    found = shutil.which("nnsweep")
    return [found] if found else [sys.executable, "-m", "pipeline"]


def commands() -> dict[str, list[str]]:
    cli = nnsweep_command()
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "nnsweep --help": [*cli, "--help"],
        "nnsweep estimate --help": [*cli, "estimate", "--help"],
        "nnsweep " + " ".join(TINY_ESTIMATE): [*cli, *TINY_ESTIMATE],
    }


def time_once(argv: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one whole process; a failure stops the benchmark with its stderr."""
    t0 = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} exited with {done.returncode}:\n{done.stderr}")
    return seconds


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        return None


def run(repeat: int, as_is: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_startup_pycache_") as cache:
        env = dict(os.environ)
        if not as_is:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = cache
        return _run(repeat, env, "as is" if as_is else "cached in a temporary directory")


def _run(repeat: int, env: dict[str, str], bytecode: str) -> dict:
    cmds = commands()
    load_before = load_average()
    for argv in cmds.values():  # warm the file cache and write the bytecode once; not timed
        time_once(argv, env)
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(repeat):
        for name, argv in cmds.items():
            times[name].append(time_once(argv, env))
    base = min(times["python -c pass"])
    processes = [{"command": name, "argv": cmds[name], "seconds": min(t), "median_seconds": sorted(t)[len(t) // 2],
                  "overhead_seconds": min(t) - base} for name, t in times.items()]
    worst = max(p["overhead_seconds"] for p in processes)
    return {
        "machine": {"cpu": machine.cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "load_average_before": load_before,
                    "load_average_after": load_average()},
        "pipeline": str(Path(importlib.util.find_spec("pipeline").origin).parent),
        "repeat": repeat,
        "bytecode": bytecode,
        "processes": processes,
        "target_overhead_seconds": TARGET_SECONDS,
        "worst_overhead_seconds": worst,
        "target_met": worst <= TARGET_SECONDS,
    }


def print_text(res: dict) -> None:
    m = res["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; load average (1, 5, 15 min) "
          f"{m['load_average_before']} before, {m['load_average_after']} after")
    print(f"package: {res['pipeline']}; whole processes, best of {res['repeat']} interleaved rounds "
          f"(median in brackets), bytecode {res['bytecode']}:")
    for p in res["processes"]:
        print(f"  {p['seconds']:6.3f} s ({p['median_seconds']:6.3f})  overhead {p['overhead_seconds']:6.3f} s  "
              f"{p['command']}")
    verdict = "met" if res["target_met"] else "NOT met"
    print(f"target: overhead over `python -c pass` <= {res['target_overhead_seconds']} s; "
          f"worst {res['worst_overhead_seconds']:.3f} s: {verdict}")


def main(argv=None) -> None:
    args = parse_args(argv)
    res = run(args.repeat, args.as_is)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_text(res)


if __name__ == "__main__":
    main()
