"""Benchmark what `nnsweep estimate` spends outside the kernel: start-up, pooling, summaries.

Runs one `nnsweep estimate` command in fresh processes and splits each process's
CPU seconds (user + system, from its own start) into the kernel, the time spent
inside :func:`pipeline.measure.block_batches` while it makes the batches, and
the rest: the interpreter and the imports, the spec, pooling the batches
(:class:`pipeline.estimation.Pool`: the per-draw means and the exact medians),
a median's second pass if one is needed, the summaries and the printing. The
split is taken within each process; a figure is the best of the rounds.

With several ``--tree`` source directories (a checkout of each version, e.g.
from ``git archive``), the processes run interleaved round by round, so a change
of load hits all of them alike; every command's output is hashed, so the table
also says whether the versions print the same numbers. The default command is
issue 18's data-set question:

    python benchmarks/bench_estimate_overhead.py
    python benchmarks/bench_estimate_overhead.py --tree /tmp/before --tree . --repeat 5
    python benchmarks/bench_estimate_overhead.py --json -- --L 2 --m 16 --seeds 1 --draws 20

Bytecode is cached in a temporary directory (as an installed package's is after
its first run), the first round is a warm-up and not counted, and BLAS is pinned
to one thread (the kernel's own setting).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import machine  # benchmarks/machine.py: benchmarks/ is sys.path[0] when run as a script

COMMAND = ["estimate", "--L", "3", "--m", "128", "--d", "64", "--k", "10", "--n-inputs", "360", "--seeds", "1",
           "--draws", "2000", "--ratio", "0.01,0.1,0.3", "--layer", "all", "--no-control-variate"]

# Runs the CLI in-process on argv[1] (JSON) and prints its CPU seconds: the whole process, and those spent
# inside block_batches (the kernel), with a digest of what the command printed.
CHILD = """
import contextlib, hashlib, io, json, resource, sys

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

import pipeline.estimation as estimation

kernel = [0.0]
batches = estimation.block_batches

def timed(*args, **kwargs):
    it = batches(*args, **kwargs)
    while True:
        c = cpu()
        try:
            item = next(it)
        except StopIteration:
            kernel[0] += cpu() - c
            return
        kernel[0] += cpu() - c
        yield item

estimation.block_batches = timed
from pipeline.cli import main

out = io.StringIO()
with contextlib.redirect_stdout(out):
    main(json.loads(sys.argv[1]), prog_name="nnsweep", standalone_mode=False)
total, usage = cpu(), resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"total": total, "kernel": kernel[0], "output": hashlib.sha256(out.getvalue().encode()).hexdigest(),
                  "package": estimation.__file__, "faults": usage.ru_minflt, "maxrss": usage.ru_maxrss}))
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", action="append", default=None,
                   help="a source directory holding the pipeline package, repeatable (default: the one this "
                        "Python imports)")
    p.add_argument("--repeat", type=int, default=3, help="timed rounds; the best of each tree is kept (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("command", nargs="*", help="the estimate's options after --, instead of the default command")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    return args


def run_once(tree: str | None, command: list[str], env: dict[str, str], cwd: str) -> dict:
    """One process: its CPU seconds, whole and inside block_batches, its output's digest and the file of the
    estimation module it ran. ``cwd``: a directory without a ``pipeline`` package (``python -c`` imports
    from its working directory before PYTHONPATH)."""
    env = dict(env)
    if tree is not None:
        env["PYTHONPATH"] = str(Path(tree).resolve())
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(command)], capture_output=True, text=True,
                          env=env, cwd=cwd, check=False)
    if done.returncode != 0:
        sys.exit(f"the estimate in {tree or 'this Python'} exited with {done.returncode}:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(trees: list[str | None], command: list[str], repeat: int) -> dict:
    machine.pin_threads(1)
    info = machine.describe()
    rounds: dict[int, list[dict]] = {i: [] for i in range(len(trees))}
    with tempfile.TemporaryDirectory(prefix="bench_estimate_pycache_") as cache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        for r in range(repeat + 1):  # round 0 writes the bytecode and warms the file cache: not counted
            for i, tree in enumerate(trees):
                env["PYTHONPYCACHEPREFIX"] = os.path.join(cache, str(i))
                res = run_once(tree, command, env, cache)
                if r:
                    rounds[i].append(res)
    rows = []
    for i, tree in enumerate(trees):
        runs = rounds[i]
        rows.append({"tree": tree or "(this Python's pipeline)",
                     "total_cpu_s": min(x["total"] for x in runs), "kernel_cpu_s": min(x["kernel"] for x in runs),
                     "rest_cpu_s": min(x["total"] - x["kernel"] for x in runs),
                     "page_faults": min(x["faults"] for x in runs),
                     "peak_rss_mb": max(machine.rss_mb(x["maxrss"]) for x in runs),
                     "rounds": [{"total_cpu_s": x["total"], "kernel_cpu_s": x["kernel"], "page_faults": x["faults"]}
                                for x in runs],
                     "outputs": sorted({x["output"] for x in runs}),
                     "package": sorted({str(Path(x["package"]).parent) for x in runs})})
    info["load_average_after"] = machine.load_average()
    return {"machine": info, "command": "nnsweep " + " ".join(command), "repeat": repeat, "rows": rows,
            "same_output": len({o for row in rows for o in row["outputs"]}) == 1}


def print_text(res: dict) -> None:
    print(f"machine: {machine.summary(res['machine'])}; load after {res['machine']['load_average_after']}")
    print(res["command"])
    print(f"CPU seconds of each process from its start, best of {res['repeat']} interleaved rounds: the whole "
          f"command, inside the kernel, the rest (the process's own difference); the fewest minor page faults "
          f"and the highest peak resident memory of the rounds")
    print(f"  {'total':>7} {'kernel':>7} {'rest':>7} {'faults':>8} {'peak MB':>8}  tree")
    for row in res["rows"]:
        print(f"  {row['total_cpu_s']:7.3f} {row['kernel_cpu_s']:7.3f} {row['rest_cpu_s']:7.3f} "
              f"{row['page_faults']:8d} {row['peak_rss_mb']:8.0f}  {', '.join(row['package'])}")
    if len(res["rows"]) > 1:
        first, last = res["rows"][0], res["rows"][-1]
        print(f"first / last tree: total {first['total_cpu_s'] / last['total_cpu_s']:.2f}x, "
              f"rest {first['rest_cpu_s'] / last['rest_cpu_s']:.2f}x")
    print(f"every command printed the same output: {'yes' if res['same_output'] else 'NO'}")


def main(argv=None) -> None:
    args = parse_args(argv)
    res = run(args.tree or [None], ["estimate", *args.command] if args.command else COMMAND, args.repeat)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_text(res)


if __name__ == "__main__":
    main()
