"""Benchmark sweeps of many tiny blocks: what creation, planning, submission and a block cost, side by side.

The blocks are tiny on purpose (L in {1, 2}, m in 4..53, 4 seeds per block, 4
draws), so that everything but the kernel shows: the client's work per block
and the store's objects. For each grid size, in one run:

- *plan* sizes: a fresh process creates the store (``create_or_resume``) and
  plans it (``pending_blocks(done_mask(...))``): seconds of each, the client's
  peak RSS, and the objects the store holds after creation;
- *full* sizes: the same, then the sweep (``execute.run_sweep``, what
  ``nnsweep run`` calls) on a local cluster of ``--workers`` workers started
  beforehand (its start-up reported apart): wall seconds, wall seconds per
  block, the client's CPU seconds per block (creating, planning, submitting,
  collecting), the client's peak RSS over the whole run, and the objects
  written per block.

Every measurement runs in a process of its own started from a small helper
(machine.Launcher), so each peak RSS is that process's own. ``--baseline DIR``
runs the plan sizes also with the package in DIR (e.g. an older checkout:
``git archive REV pipeline | tar -x -C DIR``), side by side.

Usage:
    python benchmarks/bench_scale.py                       # about 7 minutes on 2 cores
    python benchmarks/bench_scale.py --full 1000 --plan 200,20000,100000 --baseline /tmp/old
    python benchmarks/bench_scale.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
N_M = 50  # m in 4..53; with L in {1, 2}: 100 (L, m) pairs, so blocks = 25 seeds


def tiny_spec(blocks: int) -> dict:
    """The raw spec of a sweep of ``blocks`` tiny blocks (a multiple of 100)."""
    if blocks % 100:
        raise SystemExit(f"--plan / --full: {blocks} is not a multiple of 100 blocks")
    return {"name": f"scale{blocks}", "random_seed": 3, "network": {"input_dim": 4, "output_dim": 2},
            "grid": {"L": [1, 2], "m": list(range(4, 4 + N_M)), "ratio": [0.1], "seeds": blocks // 25},
            "noise": {"draws": 4}, "execution": {"seeds_per_block": 4}}


def objects(path: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


def child(mode: str, blocks: int, workdir: Path, workers: int) -> dict:
    """One measurement, in this (fresh) process; printed as JSON."""
    import resource
    import time

    def peak() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    from pipeline import plan, store
    from pipeline.spec import Spec

    spec = Spec.from_dict(tiny_spec(blocks))
    out = {"blocks": blocks, "rss_after_imports_mb": peak()}
    path = workdir / "plan.zarr"
    t0 = time.perf_counter()
    spec, _ = store.create_or_resume(spec, str(path))
    t1 = time.perf_counter()
    todo = plan.pending_blocks(spec, store.done_mask(str(path)))
    t2 = time.perf_counter()
    assert len(todo) == blocks, (len(todo), blocks)
    out.update(create_s=t1 - t0, plan_s=t2 - t1, plan_peak_rss_mb=peak(), objects_after_creation=objects(path))
    if mode == "full":
        from pipeline import execute

        run_path = workdir / "run.zarr"
        t0 = time.perf_counter()
        with execute.local_cluster(workers) as client:
            client.wait_for_workers(workers)
            cpu0, t1 = os.times(), time.perf_counter()
            summary = execute.run_sweep(spec, str(run_path), client, progress=False)
            cpu1, t2 = os.times(), time.perf_counter()
        assert summary.ok and summary.done == blocks, str(summary)
        written = objects(run_path) - out["objects_after_creation"]
        out.update(cluster_s=t1 - t0, run_s=t2 - t1, per_block_ms=1e3 * (t2 - t1) / blocks,
                   client_cpu_per_block_ms=1e3 * (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / blocks,
                   objects_per_block=written / blocks, run_peak_rss_mb=peak(), workers=workers)
    return out


def measure(launcher, mode: str, blocks: int, workers: int, package: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as d:
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", mode, str(blocks), d, str(workers)]
        env_argv = ["env", f"PYTHONPATH={package}", *argv]
        answer = launcher.run(env_argv, cwd=d)
    out = json.loads(answer["stdout"].splitlines()[-1])
    out["process_s"], out["peak_rss_mb"] = answer["seconds"], answer["peak_rss_mb"]
    return out


def table(rows: list[dict]) -> str:
    cols = [("package", "{}"), ("blocks", "{:,}"), ("create_s", "{:.2f}"), ("plan_s", "{:.2f}"),
            ("plan_peak_rss_mb", "{:.0f}"), ("objects_after_creation", "{:,}"), ("cluster_s", "{:.1f}"), ("run_s", "{:.1f}"),
            ("per_block_ms", "{:.1f}"), ("client_cpu_per_block_ms", "{:.2f}"), ("objects_per_block", "{:.1f}"),
            ("peak_rss_mb", "{:.0f}")]
    lines = [" | ".join(name for name, _ in cols), " | ".join("---" for _ in cols)]
    for r in rows:
        lines.append(" | ".join(fmt.format(r[name]) if name in r else "-" for name, fmt in cols))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", default="1000,10000", help="grid sizes (blocks) to run in full")
    p.add_argument("--plan", default="200,20000,100000", help="grid sizes to create and plan only")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--baseline", type=Path, help="a directory holding another `pipeline` package to compare")
    p.add_argument("--baseline-max", type=int, default=20000, help="largest plan size run with --baseline")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        mode, blocks, workdir, workers = args.child
        print(json.dumps(child(mode, int(blocks), Path(workdir), int(workers))))
        return
    sys.path.insert(0, str(HERE))
    import machine

    sizes = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    here = Path(os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] or HERE.parent).resolve()
    rows = []
    with machine.Launcher() as launcher:
        info = machine.describe()
        for blocks in sizes(args.plan):
            rows.append({"package": "this", **measure(launcher, "plan", blocks, args.workers, here)})
            if args.baseline and blocks <= args.baseline_max:
                rows.append({"package": "baseline", **measure(launcher, "plan", blocks, args.workers,
                                                              args.baseline.resolve())})
        for blocks in sizes(args.full):
            rows.append({"package": "this", **measure(launcher, "full", blocks, args.workers, here)})
    result = {"machine": info, "package": str(here), "baseline": str(args.baseline or ""), "rows": rows}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"machine: {machine.summary(info)}")
    print(f"package: {here}" + (f"; baseline: {args.baseline}" if args.baseline else ""))
    print(table(rows))


if __name__ == "__main__":
    main()
