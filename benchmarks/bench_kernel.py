"""Benchmark the measurement kernel against the naive method and the machine's GEMM rate.

One run, the same work for all three:
  (a) the kernel, pipeline.measure.measure_network: every layer of a network,
      ``--draws`` draws per layer, one ratio;
  (b) a naive reference: materialise eta, form W_i + eta, rerun the whole
      network from x for every draw (run on fewer networks and draws, then
      scaled per draw to the kernel's work, as the output says);
  (c) the machine's float64 GEMM rate: np.matmul of (m x m) by (m x n), best of
      several, with the same BLAS thread count, measured before and after the
      kernel's timings; the better of the two is the reference (one taken at a
      cold or busy moment is no ceiling: shares above 100% were reported).

Reports kernel and naive seconds per network, the speedup, the kernel's
achieved GFLOP/s (counting the GEMMs it does: at layer j = 2..L the columns of
all origins i < j go through W_j, 2 n_out n_in cols flops) against the GEMM
rate, and the fraction. Targets: >= 50x the naive method and > 50% of the GEMM
rate at m >= 512. Prints the machine and its load average (benchmarks/machine.py).

    python benchmarks/bench_kernel.py                 # L=8 m=512 d=512 k=10, 1 BLAS thread
    python benchmarks/bench_kernel.py --threads 2 --json
    python benchmarks/bench_kernel.py --profile       # where the kernel's time goes
"""

from __future__ import annotations

import argparse
import sys

import machine  # benchmarks/machine.py: benchmarks/ is sys.path[0] when run as a script


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--L", type=int, default=8, help="weight layers (default 8)")
    p.add_argument("--m", type=int, default=512, help="hidden width (default 512)")
    p.add_argument("--d", type=int, default=512, help="input dimension (default 512)")
    p.add_argument("--k", type=int, default=10, help="output dimension (default 10)")
    p.add_argument("--draws", type=int, default=64, help="draws per layer and network (default 64)")
    p.add_argument("--ratio", type=float, nargs="+", default=[0.1],
                   help="noise ratio(s) r; the kernel serves them all from the same draws (default 0.1)")
    p.add_argument("--seeds", type=int, default=4, help="networks timed with the kernel (default 4)")
    p.add_argument("--naive-seeds", type=int, default=1, help="networks timed with the naive method (default 1)")
    p.add_argument("--naive-draws", type=int, default=8,
                   help="draws per layer for the naive method, scaled to --draws (default 8)")
    p.add_argument("--repeat", type=int, default=3,
                   help="kernel runs per network, the best is kept (default 3)")
    p.add_argument("--gemm-repeats", type=int, default=7, help="GEMM timings, the best is kept (default 7)")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads for everything (default 1)")
    p.add_argument("--no-process", action="store_true",
                   help="skip timing the whole `nnsweep estimate` process on the same work")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--profile", action="store_true", help="also cProfile the kernel on one network")
    args = p.parse_args(argv)
    if min(args.L, args.m, args.d, args.k, args.draws, args.seeds, args.naive_seeds, args.naive_draws,
           args.gemm_repeats, args.threads, args.repeat) < 1 or min(args.ratio) <= 0:
        p.error("every count must be >= 1 and --ratio > 0")
    return args


ARGS = parse_args()
# Pin BLAS threads before numpy is imported; threadpoolctl enforces it again below.
machine.pin_threads(ARGS.threads)
# Started while this process is small, so a command's measured peak memory is its own.
LAUNCHER = None if ARGS.no_process else machine.Launcher()

import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from pipeline.measure import measure_network  # noqa: E402
from pipeline.network import NOISE_STREAM, Network, build_network, make_inputs, stream  # noqa: E402
from pipeline.spec import Spec  # noqa: E402


def machine_info(threads: int) -> dict:
    """benchmarks/machine.py's description (cpu, cores, load average, BLAS, numpy) and the thread pinning."""
    info = machine.describe()
    return {**info, "processor": info["cpu"], "cpu_count": info["cores"], "blas_threads_requested": threads,
            "thread_pinning": "threadpoolctl"}


def kernel_flops(L: int, m: int, d: int, k: int, draws: int, n_ratios: int = 1) -> float:
    """Flops of the GEMMs the kernel does on one network, every layer perturbed."""
    widths = [d] + [m] * (L - 1) + [k]
    flops = 0.0
    for j in range(2, L + 1):
        cols = (j - 1) * n_ratios * draws
        flops += 2.0 * widths[j] * widths[j - 1] * cols
    return flops


def make_spec(a) -> Spec:
    return Spec.from_dict({
        "random_seed": 12345,
        "network": {"input_dim": a.d, "output_dim": a.k},
        "grid": {"L": [a.L], "m": [a.m], "ratio": list(a.ratio), "seeds": max(a.seeds, a.naive_seeds)},
        "noise": {"distribution": "gaussian", "norm": "frobenius", "draws": a.draws},
    })


def run_kernel(spec: Spec, a, net, x, seed, with_bound=True):
    return measure_network(net, x, np.array(a.ratio), tuple(range(1, a.L + 1)), a.draws, "gaussian",
                           "frobenius", lambda i: stream(spec, NOISE_STREAM, a.L, a.m, seed, i),
                           with_bound=with_bound)


def time_kernel(spec: Spec, a, x) -> dict:
    """Per network, the best of ``--repeat`` runs with and without the worst-case bound
    (each on a fresh Network, so the spectral norms are recomputed); averaged over networks."""
    total = total_nobound = 0.0
    for seed in range(a.seeds):
        net = build_network(spec, a.L, a.m, seed)  # building weights is not the kernel's work
        best = best_nobound = float("inf")
        for _ in range(a.repeat):
            for flag in (True, False):
                fresh = Network(net.weights, net.biases)
                t0 = time.perf_counter()
                run_kernel(spec, a, fresh, x, seed, with_bound=flag)
                dt = time.perf_counter() - t0
                if flag:
                    best = min(best, dt)
                else:
                    best_nobound = min(best_nobound, dt)
        total += best
        total_nobound += best_nobound
    return {"seconds_per_network": total / a.seeds,
            "seconds_per_network_without_bound": total_nobound / a.seeds,
            "spectral_norm_seconds_per_network": (total - total_nobound) / a.seeds}


def naive_network(a, net, x, rng) -> list[float]:
    """The naive way on one network: per layer, the best time of one draw out of ``naive_draws``."""
    ws = net.weights

    def forward(weights):
        h = x
        for j, w in enumerate(weights):
            z = w @ h
            h = np.maximum(z, 0.0) if j < len(weights) - 1 else z
        return z

    v = forward(ws)
    per_layer = []
    for i in range(a.L):
        best = float("inf")
        for _ in range(a.naive_draws):
            t0 = time.perf_counter()
            for r in a.ratio:  # a fresh eta and a full rerun per ratio and draw
                g = rng.standard_normal(ws[i].shape)
                eta = g * (r * np.linalg.norm(ws[i]) / np.linalg.norm(g))
                noisy = list(ws)
                noisy[i] = ws[i] + eta
                _ = np.linalg.norm(forward(noisy) - v)
            best = min(best, time.perf_counter() - t0)
        per_layer.append(best)
    return per_layer


def time_naive(spec: Spec, a, x) -> dict:
    """Seconds per network: sum over layers of (best seconds per draw) x --draws; mean over networks."""
    rng = np.random.default_rng(0)
    per_net = []
    for seed in range(a.naive_seeds):
        net = build_network(spec, a.L, a.m, seed)
        per_net.append(sum(naive_network(a, net, x, rng)) * a.draws)
    seconds = float(np.mean(per_net))
    return {"seconds_per_network": seconds, "seconds_per_draw": seconds / (a.L * a.draws),
            "networks_run": a.naive_seeds, "draws_per_layer_run": a.naive_draws}


def time_process(a) -> dict:
    """The whole `nnsweep estimate` process for the kernel's networks, draws and ratios, best of 3,
    with `python -c pass` beside it: start-up, imports and the bound and linear answer included."""
    args = ["estimate", "--L", a.L, "--m", a.m, "--d", a.d, "--k", a.k, "--ratio", ",".join(map(repr, a.ratio)),
            "--seeds", a.seeds, "--draws", a.draws, "--layer", "all", "--random-seed", 12345, "--json"]
    # run from elsewhere: `python -m pipeline` then imports the package this script imports (PYTHONPATH
    # or the installed one), not a checkout that happens to be the working directory
    where = tempfile.gettempdir()
    command = [sys.executable, "-m", "pipeline", *map(str, args)]
    seconds = min(LAUNCHER.run(command, cwd=where)["seconds"] for _ in range(3))
    bare = min(LAUNCHER.run([sys.executable, "-c", "pass"], cwd=where)["seconds"] for _ in range(3))
    return {"command": "nnsweep " + " ".join(map(str, args)), "seconds": seconds, "python_pass_seconds": bare}


def gemm_batch(a) -> int:
    """Columns of the reference GEMM: the kernel's widest batch."""
    return max((a.L - 1) * a.draws * len(a.ratio), 1)


def gemm_reference(a, rate: machine.Bracket) -> dict:
    """The float64 GEMM rate measured before and after the kernel; the better one is the reference."""
    n = gemm_batch(a)
    return {"gflops": rate.best / 1e9, "gflops_before": rate.before / 1e9, "gflops_after": rate.after / 1e9,
            "shape": f"({a.m} x {a.m}) @ ({a.m} x {n})"}


def profile_kernel(spec: Spec, a, x) -> str:
    import cProfile
    import io
    import pstats

    net = build_network(spec, a.L, a.m, 0)
    prof = cProfile.Profile()
    prof.enable()
    run_kernel(spec, a, net, x, 0)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
    return buf.getvalue()


def main(a) -> dict:
    spec = make_spec(a)
    x = make_inputs(spec)[0]  # one input, the question as asked
    with threadpool_limits(limits=a.threads, user_api="blas"):
        info = machine_info(a.threads)
        net = build_network(spec, a.L, a.m, 0)
        run_kernel(spec, a, net, x, 0)  # warm up: imports, ARPACK, allocator
        with machine.bracket(lambda: machine.gemm_rate(a.m, gemm_batch(a), "float64", a.gemm_repeats)) as rate:
            kernel = time_kernel(spec, a, x)
        gemm = gemm_reference(a, rate)
        naive = time_naive(spec, a, x)
        profile = profile_kernel(spec, a, x) if a.profile else None
    process = time_process(a) if LAUNCHER else None
    flops = kernel_flops(a.L, a.m, a.d, a.k, a.draws, len(a.ratio))
    k_s = kernel["seconds_per_network"]
    k_nb = kernel["seconds_per_network_without_bound"]
    n_s = naive["seconds_per_network"]
    result = {
        "machine": info,
        "work": {"L": a.L, "m": a.m, "d": a.d, "k": a.k, "draws_per_layer": a.draws, "ratios": a.ratio,
                 "layers": "all", "noise": "gaussian/frobenius", "kernel_networks": a.seeds,
                 "kernel_repeats": a.repeat, "gemm_flops_per_network": flops},
        "kernel": {**kernel, "gflops": flops / k_s / 1e9, "gflops_without_bound": flops / k_nb / 1e9},
        "naive": naive,
        "gemm": gemm,
        "speedup": n_s / k_s,
        "speedup_without_bound": n_s / k_nb,
        "fraction_of_gemm_rate": flops / k_s / 1e9 / gemm["gflops"],
        "fraction_of_gemm_rate_without_bound": flops / k_nb / 1e9 / gemm["gflops"],
    }
    result["targets"] = {
        "speedup >= 50 (kernel without bound vs naive, which computes no bound)": result["speedup_without_bound"] >= 50,
        "fraction_of_gemm_rate > 0.5 (without bound)": result["fraction_of_gemm_rate_without_bound"] > 0.5,
        "speedup >= 50 (kernel with bound)": result["speedup"] >= 50,
        "fraction_of_gemm_rate > 0.5 (with bound)": result["fraction_of_gemm_rate"] > 0.5,
    }
    if process:
        process["speedup"] = n_s * a.seeds / process["seconds"]
        result["process"] = process
        result["targets"]["whole process >= 10x the naive loop on the same networks"] = process["speedup"] >= 10
    result["load_average_end"] = machine.load_average()
    if profile:
        result["profile"] = profile
    return result


def report(r: dict) -> str:
    m, w, k, n, g = r["machine"], r["work"], r["kernel"], r["naive"], r["gemm"]
    lines = [
        f"machine: {machine.summary(m)}; {m['blas_threads_requested']} BLAS thread(s) via {m['thread_pinning']}",
        "load:    " + " at the start, ".join("/".join(f"{x:.2f}" for x in load) or "unknown"
                                              for load in (m["load_average"], r["load_average_end"]))
        + " at the end (1/5/15 min)",
        f"work:    L={w['L']} m={w['m']} d={w['d']} k={w['k']}, every layer, {w['draws_per_layer']} draws per "
        f"layer and network, r={w['ratios']}, {w['noise']}; kernel on {w['kernel_networks']} networks, "
        f"best of {w['kernel_repeats']} runs each",
        f"kernel:  {k['seconds_per_network_without_bound'] * 1e3:9.1f} ms per network: delta and flips "
        f"(+ {k['spectral_norm_seconds_per_network'] * 1e3:.1f} ms for the spectral norms of the bound = "
        f"{k['seconds_per_network'] * 1e3:.1f} ms)",
        f"naive:   {n['seconds_per_network'] * 1e3:9.1f} ms per network: delta only (run on {n['networks_run']} "
        f"network(s) x {n['draws_per_layer_run']} draws per layer, best time per draw of each layer "
        f"x {w['draws_per_layer']} draws, {n['seconds_per_draw'] * 1e3:.2f} ms per draw on average)",
        f"speedup: {r['speedup_without_bound']:9.1f} x      kernel without bound vs naive (target >= 50); "
        f"{r['speedup']:.1f} x with the bound",
        f"GEMM:    {g['gflops']:9.2f} GFLOP/s  {g['shape']}, the better of {g['gflops_before']:.2f} before "
        f"and {g['gflops_after']:.2f} after the kernel (each the best of several)",
        f"kernel:  {k['gflops_without_bound']:9.2f} GFLOP/s  ({w['gemm_flops_per_network'] / 1e6:.0f} MFLOP of "
        f"GEMMs per network) = {100 * r['fraction_of_gemm_rate_without_bound']:.1f}% of the GEMM rate "
        f"(target > 50%); {100 * r['fraction_of_gemm_rate']:.1f}% with the bound",
    ]
    if "process" in r:
        p = r["process"]
        lines.append(f"process: {p['seconds']:9.2f} s for the whole `{p['command']}` (best of 3; python -c pass "
                     f"{p['python_pass_seconds']:.2f} s) against {n['seconds_per_network'] * w['kernel_networks']:.2f}"
                     f" s of the naive loop for its {w['kernel_networks']} networks: {p['speedup']:.1f} x "
                     "(target >= 10)")
    if "profile" in r:
        lines += ["", "cProfile of the kernel on one network (by own time):", r["profile"]]
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        res = main(ARGS)
    finally:
        if LAUNCHER:
            LAUNCHER.close()
    print(json.dumps(res, indent=2) if ARGS.json else report(res))
    sys.exit(0)
