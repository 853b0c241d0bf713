"""Benchmark the sweep pipeline against the same work done in one process, side by side.

Measures, on one grid of >= 200 blocks (about 0.2-1 s of kernel work each):
  (a) the blocks computed in this process: the kernel alone (measure_block), and
      kernel + store write (write_block), with no Dask at all;
  (b) run_sweep on a LocalCluster with 1 worker (cluster startup and worker
      imports reported separately, not counted in the sweep time);
  (c) the same with 2 workers;
and the peak memory of the workers on a grid of N blocks versus 8 N blocks of
the same block size, each on a fresh cluster (ru_maxrss of every worker process
at the end, and its RSS sampled with psutil every 50 ms during the run).

Targets: (b) / (a) <= 1.25, (b) / (c) >= 1.6 on 2 cores, peak worker memory of
the 8x grid within 1.2x of the small one.

Usage:
    python benchmarks/bench_pipeline.py            # about 7 minutes on 2 cores
    python benchmarks/bench_pipeline.py --json     # the figures as one JSON object
    python benchmarks/bench_pipeline.py --seeds 200 --mem-seeds 24
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from threadpoolctl import threadpool_info

    blas = sorted({f"{i.get('internal_api')} {i.get('version')}" for i in threadpool_info()
                   if i.get("user_api") == "blas"})
    import psutil

    return {
        "platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
        "blas": blas, "load_average": [round(x, 2) for x in os.getloadavg()],
        "versions": {p: metadata.version(p) for p in ("nnsweep", "numpy", "dask", "distributed", "xarray", "zarr")},
    }


def make_spec(seeds: int, draws: int, seeds_per_block: int):
    from pipeline.spec import Spec

    return Spec.from_dict({
        "name": "bench", "random_seed": 2024,
        "network": {"input_dim": 64, "output_dim": 10},
        "grid": {"L": [4, 8], "m": [256, 512], "ratio": [0.01, 0.03, 0.1, 0.3], "seeds": seeds},
        "noise": {"draws": draws},
        "execution": {"seeds_per_block": seeds_per_block},
    })


def in_process(spec, path: str) -> dict:
    """(a): every block in this process, kernel timed alone and with the store write."""
    from pipeline import plan, store
    from pipeline.measure import measure_block

    spec, _ = store.create_or_resume(spec, path)
    kernel = write = 0.0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for key in plan.all_blocks(spec):
        t1 = time.perf_counter()
        result = measure_block(spec, key.L, key.m, key.seeds)
        t2 = time.perf_counter()
        store.write_block(path, key, result, t2 - t1)
        kernel += t2 - t1
        write += time.perf_counter() - t2
    return {"kernel_s": kernel, "write_s": write, "total_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - cpu0}


def _worker_warmup():
    import pipeline.execute  # noqa: F401  (what the first task would otherwise import)
    import pipeline.measure  # noqa: F401
    import pipeline.store  # noqa: F401

    return os.getpid()


def _worker_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _worker_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


class RssSampler:
    """Samples the RSS of some processes every ``interval`` seconds in a thread; keeps the peak."""

    def __init__(self, pids: list[int], interval: float = 0.05):
        import psutil

        self.procs = {pid: psutil.Process(pid) for pid in pids}
        self.peak = {pid: 0 for pid in pids}
        self.interval, self._stop = interval, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for pid, p in self.procs.items():
                try:
                    self.peak[pid] = max(self.peak[pid], p.memory_info().rss)
                except Exception:  # the process went away
                    pass
            self._stop.wait(self.interval)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()

    def peak_mb(self) -> list[float]:
        return [round(v / 2**20, 1) for v in self.peak.values()]


def on_cluster(spec, path: str, workers: int) -> dict:
    """(b), (c) and the memory runs: a fresh LocalCluster, startup timed apart from the sweep."""
    import psutil

    from pipeline.execute import local_cluster, run_sweep

    t0 = time.perf_counter()
    with local_cluster(workers) as client:
        t1 = time.perf_counter()
        pids = list(client.run(_worker_warmup).values())
        t2 = time.perf_counter()
        me = psutil.Process()
        client_rss_before = me.memory_info().rss
        with RssSampler(pids + [os.getpid()]) as sampler:
            wcpu0, ccpu0 = sum(client.run(_worker_cpu_s).values()), _worker_cpu_s()
            t3 = time.perf_counter()
            summary = run_sweep(spec, path, client, progress=False)
            t4 = time.perf_counter()
            wcpu1, ccpu1 = sum(client.run(_worker_cpu_s).values()), _worker_cpu_s()
        assert summary.ok and summary.done == summary.total, str(summary)
        maxrss = sorted(client.run(_worker_maxrss_mb).values())
        peaks = sampler.peak_mb()
    return {
        "workers": workers, "blocks": summary.total,
        "cluster_start_s": t1 - t0, "worker_import_s": t2 - t1,
        "sweep_s": t4 - t3, "task_seconds": summary.task_seconds,
        "worker_cpu_s": wcpu1 - wcpu0, "client_scheduler_cpu_s": ccpu1 - ccpu0,
        # CPU seconds the workers got per second spent in tasks: well below 1 means other
        # processes (not this pipeline) held the cores, and the wall-clock ratios are not to be trusted
        "worker_cpu_share": (wcpu1 - wcpu0) / summary.task_seconds if summary.task_seconds else float("nan"),
        "worker_peak_rss_mb_sampled": sorted(peaks[:-1]), "worker_maxrss_mb": [round(x, 1) for x in maxrss],
        "client_peak_rss_mb_sampled": peaks[-1],
        "client_rss_growth_mb": round((me.memory_info().rss - client_rss_before) / 2**20, 1),
    }


def differences(a: str, b: str) -> dict[str, int]:
    """Cells that differ (NaN equal to NaN) between two stores, per result variable."""
    import zarr

    out = {}
    for v in ("delta_norm", "hidden_flip_fraction", "bound", "output_norm"):
        x, y = zarr.open_array(a, path=v, mode="r")[...], zarr.open_array(b, path=v, mode="r")[...]
        out[v] = int(np.sum(~((x == y) | (np.isnan(x) & np.isnan(y)))))
    return out


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=200, help="seeds of the timing grid (blocks = seeds)")
    ap.add_argument("--draws", type=int, default=32, help="noise draws per cell")
    ap.add_argument("--seeds-per-block", type=int, default=4)
    ap.add_argument("--mem-seeds", type=int, default=24, help="seeds of the small memory grid; the big one has 8x")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = ap.parse_args()

    from pipeline.plan import all_blocks

    spec = make_spec(args.seeds, args.draws, args.seeds_per_block)
    out: dict = {"machine": machine(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
                 "grid": {"L": [4, 8], "m": [256, 512], "ratio": 4, "draws": args.draws, "d": 64, "k": 10,
                          "seeds": args.seeds, "seeds_per_block": args.seeds_per_block,
                          "blocks": len(all_blocks(spec))}}
    tmp = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    try:
        log(f"machine: {out['machine']}")
        log(f"grid: {out['grid']}")
        if out["grid"]["blocks"] < 200:
            log("note: fewer than 200 blocks; per-task overheads and the last blocks' imbalance weigh more")
        out["a"] = in_process(spec, str(tmp / "a.zarr"))
        log(f"(a) in one process: kernel {out['a']['kernel_s']:.2f} s, write {out['a']['write_s']:.2f} s, "
            f"kernel+write {out['a']['total_s']:.2f} s (CPU {out['a']['cpu_s']:.2f} s)")
        out["b"] = on_cluster(spec, str(tmp / "b.zarr"), 1)
        log(f"(b) 1 worker: sweep {out['b']['sweep_s']:.2f} s (cluster start {out['b']['cluster_start_s']:.2f} s, "
            f"worker imports {out['b']['worker_import_s']:.2f} s, not counted); time in tasks "
            f"{out['b']['task_seconds']:.2f} s, worker CPU {out['b']['worker_cpu_s']:.2f} s, "
            f"client+scheduler CPU {out['b']['client_scheduler_cpu_s']:.2f} s")
        out["c"] = on_cluster(spec, str(tmp / "c.zarr"), 2)
        log(f"(c) 2 workers: sweep {out['c']['sweep_s']:.2f} s (cluster start {out['c']['cluster_start_s']:.2f} s, "
            f"worker imports {out['c']['worker_import_s']:.2f} s, not counted); time in tasks "
            f"{out['c']['task_seconds']:.2f} s, worker CPU {out['c']['worker_cpu_s']:.2f} s, "
            f"client+scheduler CPU {out['c']['client_scheduler_cpu_s']:.2f} s")
        out["cells_differing_from_a"] = {k: differences(str(tmp / "a.zarr"), str(tmp / f"{k}.zarr"))
                                         for k in ("b", "c")}
        out["identical_results"] = not any(n for d in out["cells_differing_from_a"].values() for n in d.values())

        small = make_spec(args.mem_seeds, args.draws, args.seeds_per_block)
        big = make_spec(8 * args.mem_seeds, args.draws, args.seeds_per_block)
        out["mem_small"] = on_cluster(small, str(tmp / "m1.zarr"), 2)
        log(f"memory, {out['mem_small']['blocks']} blocks: worker peak RSS sampled "
            f"{out['mem_small']['worker_peak_rss_mb_sampled']} MB, ru_maxrss {out['mem_small']['worker_maxrss_mb']} MB")
        out["mem_big"] = on_cluster(big, str(tmp / "m8.zarr"), 2)
        log(f"memory, {out['mem_big']['blocks']} blocks: worker peak RSS sampled "
            f"{out['mem_big']['worker_peak_rss_mb_sampled']} MB, ru_maxrss {out['mem_big']['worker_maxrss_mb']} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    a, b, c = out["a"], out["b"], out["c"]
    mem = max(out["mem_big"]["worker_maxrss_mb"]) / max(out["mem_small"]["worker_maxrss_mb"])
    mem_sampled = max(out["mem_big"]["worker_peak_rss_mb_sampled"]) / \
        max(out["mem_small"]["worker_peak_rss_mb_sampled"])
    out["figures"] = {
        "b_over_a_kernel_plus_write": b["sweep_s"] / a["total_s"],
        "b_over_a_kernel_only": b["sweep_s"] / a["kernel_s"],
        "speedup_c_vs_b": b["sweep_s"] / c["sweep_s"],
        "b_over_a_cpu": b["worker_cpu_s"] / a["cpu_s"],
        "peak_worker_memory_8x_over_1x": mem,
        "peak_worker_memory_8x_over_1x_sampled": mem_sampled,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "worker_cpu_share": {k: round(out[k]["worker_cpu_share"], 3)
                             for k in ("b", "c")},
        "a_cpu_share": out["a"]["cpu_s"] / out["a"]["total_s"],
    }
    f = out["figures"]
    targets = [("(b)/(a) kernel+write", f["b_over_a_kernel_plus_write"], "<=", 1.25),
               ("(b)/(a) kernel only", f["b_over_a_kernel_only"], "<=", 1.25),
               ("speedup (c) vs (b)", f["speedup_c_vs_b"], ">=", 1.6),
               ("peak worker memory 8x/1x (ru_maxrss)", f["peak_worker_memory_8x_over_1x"], "<=", 1.2),
               ("peak worker memory 8x/1x (sampled)", f["peak_worker_memory_8x_over_1x_sampled"], "<=", 1.2)]
    out["targets_met"] = {name: (v <= t if op == "<=" else v >= t) for name, v, op, t in targets}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"\n{'figure':<40} {'value':>8}   target")
        for name, v, op, t in targets:
            print(f"{name:<40} {v:8.3f}   {op} {t}  {'met' if out['targets_met'][name] else 'MISSED'}")
        diagnostics = [("(b)/(a) CPU s, worker vs in-process", "b_over_a_cpu")]
        for name, key in diagnostics:
            if key in f:
                print(f"{name:<40} {f[key]:8.3f}   (diagnostic)")
        print(f"results of every run bit-identical to (a): {out['identical_results']}"
              + ("" if out["identical_results"] else f"; cells differing: {out['cells_differing_from_a']}"))
        print(f"CPU share (CPU s per wall s in tasks): in-process {f['a_cpu_share']:.2f}, workers "
              f"{f['worker_cpu_share']}" + ("" if min(f["worker_cpu_share"].values()) > 0.9 else
                                            "  <- other load on the machine: wall-clock ratios are unreliable"))
        print(f"load average at start {out['machine']['load_average']}, at end {f['load_average_end']}")
    return out


if __name__ == "__main__":
    main()
