"""Kernel cost per (input, draw): one input against a set of inputs sharing each eta.

With n inputs, every draw is one perturbed matrix applied to all n of them:
the noise for all inputs comes from one thin QR of the layer's clean inputs
(O(n_out n) numbers per draw instead of n_out n_in), and the perturbed columns
of all inputs go through the remaining layers in the same GEMMs. So the cost
of one (input, draw) should not grow with n. This times the kernel
(pipeline.measure.measure_network, every layer perturbed, one ratio) on one
He-init network for several n at the same number of (input, draw) columns,
side by side in one run, BLAS pinned to one thread, best of --repeat: the
Monte Carlo kernel alone, and with each network's linear answer (a backward
pass per input, whose cost is per input, not per draw).

Usage:
    python benchmarks/bench_inputs.py                       # L=4 m=256 d=784 k=10, 1024 columns
    python benchmarks/bench_inputs.py --n 1 8 64 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from pipeline.measure import measure_network  # noqa: E402
from pipeline.network import Network, layer_shapes  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--L", type=int, default=4)
    p.add_argument("--m", type=int, default=256)
    p.add_argument("--d", type=int, default=784)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--columns", type=int, default=1024, help="inputs x draws per layer, the same for every n")
    p.add_argument("--n", type=int, nargs="+", default=[1, 4, 16, 64, 256], help="numbers of inputs to compare")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def time_one(net: Network, x: np.ndarray, draws: int, labels: np.ndarray, repeat: int, linear: bool) -> float:
    layers = tuple(range(1, net.depth + 1))
    best = np.inf
    for r in range(repeat):
        t0 = time.perf_counter()
        measure_network(net, x, np.array([0.1]), layers, draws, "gaussian", "frobenius",
                        lambda i, r=r: np.random.default_rng([r, i]), labels, with_bound=False, with_linear=linear)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> dict:
    a = parse_args(argv)
    rng = np.random.default_rng(0)
    net = Network(tuple(rng.standard_normal(s) * np.sqrt(2.0 / s[1]) for s in layer_shapes(a.L, a.m, a.d, a.k)))
    rows = []
    with threadpool_limits(limits=1, user_api="blas"):
        time_one(net, rng.standard_normal((2, a.d)), 2, np.zeros(2, int), 1, True)  # warm up
        for n in a.n:
            draws = max(1, a.columns // n)
            x = rng.standard_normal((n, a.d))
            labels = rng.integers(0, a.k, n)
            kernel = time_one(net, x, draws, labels, a.repeat, False)
            with_linear = time_one(net, x, draws, labels, a.repeat, True)
            rows.append({"n_inputs": n, "draws": draws, "seconds": kernel, "seconds_with_linear": with_linear,
                         "us_per_input_draw": kernel / (n * draws) * 1e6,
                         "us_per_input_draw_with_linear": with_linear / (n * draws) * 1e6})
    for key in ("us_per_input_draw", "us_per_input_draw_with_linear"):
        for r in rows:
            r[key.replace("us_per_input_draw", "relative_to_first")] = r[key] / rows[0][key]
    result = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                          "numpy": np.__version__, "blas_threads": 1},
              "network": {"L": a.L, "m": a.m, "d": a.d, "k": a.k, "layers_perturbed": "all", "ratios": 1},
              "rows": rows}
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"L={a.L} m={a.m} d={a.d} k={a.k}, every layer perturbed, {a.columns} (input, draw) columns "
              f"per layer; best of {a.repeat}; {platform.platform()}")
        print(f"{'':15} {'Monte Carlo kernel':>30}   {'with the linear answer':>30}")
        print(f"{'inputs':>7} {'draws':>6} {'us per (input, draw)':>21} {'vs n=' + str(a.n[0]):>8}   "
              f"{'us per (input, draw)':>21} {'vs n=' + str(a.n[0]):>8}")
        for r in rows:
            print(f"{r['n_inputs']:7d} {r['draws']:6d} {r['us_per_input_draw']:21.2f} {r['relative_to_first']:8.2f}   "
                  f"{r['us_per_input_draw_with_linear']:21.2f} {r['relative_to_first_with_linear']:8.2f}")
        print("The linear answer is one backward pass per input (k columns per input and layer), so its cost per "
              "(input, draw) grows as the draws per input shrink.")
    return result


if __name__ == "__main__":
    main()
