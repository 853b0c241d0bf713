"""Kernel cost per (input, draw): one input against a set of inputs sharing each eta; and a whole
``nnsweep estimate`` on a data set against the machine's limit.

Part 1. With n inputs, every draw is one perturbed matrix applied to all n of them:
the noise for all inputs comes from one thin QR of the layer's clean inputs
(O(n_out n) numbers per draw instead of n_out n_in), or from eta itself when
n >= n_in, and the perturbed columns of all inputs go through the remaining
layers in the same GEMMs. So the cost of one (input, draw) should not grow
with n. This times the kernel (pipeline.measure.measure_network, every layer
perturbed, one ratio) on one He-init network for several n at the same number
of (input, draw) columns, side by side in one run, BLAS pinned to one thread,
best of --repeat rounds (each round times every case once, so a busy moment
slows a round of all of them): the Monte Carlo kernel alone, and with each network's linear
answer (a backward pass of k columns per input, whose cost is per input, not
per draw: at a few draws per input it is as large as the draws themselves).

Part 2 (--estimate). The whole ``nnsweep estimate --no-control-variate`` command on a data set, run
as its own process (wall time, CPU time, peak resident memory), against the
limit of the same work measured in the same run: the GEMM flops of eta H
(2 n_out min(n, n_in) n per draw and layer) and of the layers after each
perturbed one for every column (ratio, input, draw), at this machine's
single-thread float64 GEMM rate (np.matmul of m x m by m x 1024, measured before
and after, the best of the two), plus the standard normals of eta
(n_out min(n, n_in) per draw and layer) at the machine's normal rate. Then the
same command as it runs by default, with the control variate's cheap draws,
which are work beyond that limit (they buy a narrower interval: bench_control.py).

Usage:
    python benchmarks/bench_inputs.py                       # L=4 m=256 d=784 k=10, 8192 columns
    python benchmarks/bench_inputs.py --n 1 8 64 --columns 1024 --json
    python benchmarks/bench_inputs.py --n --estimate        # part 2 alone: the command of issue 18
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import machine  # noqa: E402  (benchmarks/machine.py: imports numpy only inside its functions)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--L", type=int, default=4)
    p.add_argument("--m", type=int, default=256)
    p.add_argument("--d", type=int, default=784)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--columns", type=int, default=8192, help="inputs x draws per layer, the same for every n")
    p.add_argument("--n", type=int, nargs="*", default=[1, 4, 16, 64, 256], help="numbers of inputs to compare")
    p.add_argument("--repeat", type=int, default=5, help="rounds of every case (best taken) [5]")
    p.add_argument("--estimate", action="store_true", help="part 2: the whole estimate against the limit")
    p.add_argument("--estimate-network", default="3,128,64,10,360", metavar="L,m,d,k,n",
                   help="its network and number of inputs [3,128,64,10,360]")
    p.add_argument("--estimate-draws", type=int, default=2000)
    p.add_argument("--estimate-ratios", default="0.01,0.1,0.3")
    p.add_argument("--rate-repeats", type=int, default=7, help="timings of each rate (best taken)")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def time_one(net, x, draws: int, labels, repeat: int, linear: bool, seed: int = 0) -> float:
    import numpy as np

    from pipeline.measure import measure_network

    layers = tuple(range(1, net.depth + 1))
    best = np.inf
    for r in range(seed, seed + repeat):
        t0 = time.perf_counter()
        measure_network(net, x, np.array([0.1]), layers, draws, "gaussian", "frobenius",
                        lambda i, r=r: np.random.default_rng([r, i]), labels, with_bound=False, with_linear=linear)
        best = min(best, time.perf_counter() - t0)
    return best


def kernel_rows(a) -> list[dict]:
    """Part 1: seconds per (input, draw) for each n, side by side."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    from pipeline.network import Network, layer_shapes

    rng = np.random.default_rng(0)
    net = Network(tuple(rng.standard_normal(s) * np.sqrt(2.0 / s[1]) for s in layer_shapes(a.L, a.m, a.d, a.k)))
    cases = [(n, max(1, a.columns // n), rng.standard_normal((n, a.d)), rng.integers(0, a.k, n)) for n in a.n]
    best = {}
    with threadpool_limits(limits=1, user_api="blas"):
        time_one(net, rng.standard_normal((2, a.d)), 2, np.zeros(2, int), 1, True)  # warm up
        # round after round, every case once per round: a busy moment slows one round of all of them
        for r in range(a.repeat):
            for n, draws, x, labels in cases:
                for linear in (False, True):
                    t = time_one(net, x, draws, labels, 1, linear, seed=r)
                    best[n, linear] = min(best.get((n, linear), np.inf), t)
    rows = []
    for n, draws, _, _ in cases:
        kernel, with_linear = best[n, False], best[n, True]
        rows.append({"n_inputs": n, "draws": draws, "seconds": kernel, "seconds_with_linear": with_linear,
                     "us_per_input_draw": kernel / (n * draws) * 1e6,
                     "us_per_input_draw_with_linear": with_linear / (n * draws) * 1e6})
    for key in ("us_per_input_draw", "us_per_input_draw_with_linear"):
        for r in rows:
            r[key.replace("us_per_input_draw", "relative_to_first")] = r[key] / rows[0][key]
    return rows


def estimate_work(L: int, m: int, d: int, k: int, n: int, draws: int, ratios: int) -> dict:
    """The limit's work for ``nnsweep estimate`` perturbing every layer: GEMM flops and normals.

    >>> w = estimate_work(2, 4, 3, 2, 5, 10, 1)  # n >= n_in: eta formed; flops of eta H, then W_2 for layer 1
    >>> w["flops"] == 10 * (2 * 4 * 3 * 5 + 2 * 2 * 4 * 5 + 2 * 2 * 4 * 5), w["normals"] == 10 * (4 * 3 + 2 * 4)
    (True, True)
    """
    from pipeline.drawcost import full_draw_work
    from pipeline.network import layer_shapes

    shapes = layer_shapes(L, m, d, k)
    # a draw of each layer as the control variate's cost model counts it, without the first-order change: eta H
    # (formed, or Z R from the thin QR), and every column through the later layers
    works = [full_draw_work(shapes, i, n, ratios, linear=False) for i in range(1, len(shapes) + 1)]
    return {"flops": draws * int(sum(w.flops for w in works)), "normals": draws * int(sum(w.normals for w in works))}


def estimate_part(a, launcher) -> dict:
    """Part 2: the whole command, and its limit with the rates measured before and after it."""
    L, m, d, k, n = (int(v) for v in a.estimate_network.split(","))
    ratios = a.estimate_ratios
    command = ["nnsweep", "estimate", "--L", L, "--m", m, "--d", d, "--k", k, "--n-inputs", n, "--seeds", 1,
               "--draws", a.estimate_draws, "--ratio", ratios, "--layer", "all"]
    work = estimate_work(L, m, d, k, n, a.estimate_draws, len(ratios.split(",")))
    with machine.bracket(lambda: machine.gemm_rate(m, 1024, repeats=a.rate_repeats)) as gemm, \
            machine.bracket(lambda: machine.normal_rate(repeats=a.rate_repeats)) as normal:
        # the limit is that of the Monte Carlo work: the plain estimate; the default adds the control
        # variate's cheap draws, timed beside it
        run = launcher.run([sys.executable, "-m", "pipeline", *command[1:], "--no-control-variate"], cwd=ROOT)
        with_cv = launcher.run([sys.executable, "-m", "pipeline", *command[1:]], cwd=ROOT)
    limit = work["flops"] / gemm.best + work["normals"] / normal.best
    return {"command": " ".join(str(c) for c in command), **work, "gemm_rate": gemm.as_dict(),
            "normal_rate": normal.as_dict(), "limit_seconds": limit, "seconds": run["seconds"],
            "cpu_seconds": run["cpu_seconds"], "peak_rss_mb": run["peak_rss_mb"],
            "times_limit": run["seconds"] / limit, "cpu_times_limit": run["cpu_seconds"] / limit,
            "with_control_variate": {key: with_cv[key] for key in ("seconds", "cpu_seconds", "peak_rss_mb")}}


def main(argv=None) -> dict:
    a = parse_args(argv)
    machine.pin_threads(1)
    with machine.Launcher() as launcher:  # before numpy: the estimate's peak memory is its own
        info = machine.describe()
        result = {"machine": info, "blas_threads": 1,
                  "network": {"L": a.L, "m": a.m, "d": a.d, "k": a.k, "layers_perturbed": "all", "ratios": 1,
                              "columns": a.columns},
                  "rows": kernel_rows(a) if a.n else []}
        if a.estimate:
            result["estimate"] = estimate_part(a, launcher)
    if a.json:
        print(json.dumps(result, indent=1))
        return result
    print(machine.summary(info))
    if a.n:
        print(f"Part 1: L={a.L} m={a.m} d={a.d} k={a.k}, every layer perturbed, {a.columns} (input, draw) columns "
              f"per layer; best of {a.repeat} rounds of every case")
        print(f"{'':15} {'Monte Carlo kernel':>30}   {'with the linear answer':>30}")
        print(f"{'inputs':>7} {'draws':>6} {'us per (input, draw)':>21} {'vs n=' + str(a.n[0]):>8}   "
              f"{'us per (input, draw)':>21} {'vs n=' + str(a.n[0]):>8}")
        for r in result["rows"]:
            print(f"{r['n_inputs']:7d} {r['draws']:6d} {r['us_per_input_draw']:21.2f} {r['relative_to_first']:8.2f}   "
                  f"{r['us_per_input_draw_with_linear']:21.2f} {r['relative_to_first_with_linear']:8.2f}")
        print("The linear answer is one backward pass per input (k columns per input and layer), so its cost per "
              "(input, draw) grows as the draws per input shrink.")
    if a.estimate:
        e = result["estimate"]
        print(f"Part 2: {e['command']}")
        print(f"  {e['flops'] / 1e9:.1f} GFlop at {e['gemm_rate']['best'] / 1e9:.1f} GFlop/s and "
              f"{e['normals'] / 1e6:.1f} M normals at {e['normal_rate']['best'] / 1e6:.0f} M/s: limit "
              f"{e['limit_seconds']:.2f} s")
        print(f"  with --no-control-variate: {e['seconds']:.2f} s wall ({e['times_limit']:.2f}x the limit), "
              f"{e['cpu_seconds']:.2f} s CPU ({e['cpu_times_limit']:.2f}x), peak RSS {e['peak_rss_mb']:.0f} MB")
        cv = e["with_control_variate"]
        print(f"  as it runs by default (with the control variate's cheap draws): {cv['seconds']:.2f} s wall, "
              f"{cv['cpu_seconds']:.2f} s CPU, peak RSS {cv['peak_rss_mb']:.0f} MB")
    return result


if __name__ == "__main__":
    main()
