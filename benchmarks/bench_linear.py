"""What the linear answer and the bound cost, as shares of a block, per network.

For each (L, m), one He-init network at a time (BLAS pinned to one thread,
best of --repeat, all parts timed side by side in one run):

- weights: drawing the network;
- kernel: pipeline.measure.measure_network without the bound and without the
  linear answer (every layer perturbed, the sweep's ratios and draws);
- linear: the same call with the linear answer (one backward pass, every J_i,
  the worst direction's extra column per layer and ratio) minus the kernel,
  and the backward pass (J_i, norms, worst direction) timed alone;
- bound: the L spectral norms the worst-case bound needs, by the 20 Lanczos
  steps the pipeline uses, and, for comparison, by converged ARPACK.

A block's time is weights + kernel + linear + bound (Lanczos).

Usage:
    python benchmarks/bench_linear.py                   # (8, 512) and (8, 2048), scaling.yaml's ratios/draws
    python benchmarks/bench_linear.py --shape 8 512 --json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from pipeline.measure import jacobians, linear_answer, measure_network  # noqa: E402
from pipeline.network import Network, build_network, spectral_norm, spectral_norm_estimate  # noqa: E402
from pipeline.spec import Spec  # noqa: E402

RATIOS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]  # sweeps/scaling.yaml


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=int, nargs=2, action="append", metavar=("L", "M"),
                   help="(L, m) to measure; repeatable (default: 8 512 and 8 2048)")
    p.add_argument("--d", type=int, default=784)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--draws", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure_shape(L: int, m: int, a) -> dict:
    spec = Spec.from_dict({"network": {"input_dim": a.d, "output_dim": a.k},
                           "grid": {"L": [L], "m": [m], "ratio": RATIOS, "seeds": 1}, "noise": {"draws": a.draws}})
    x = np.random.default_rng(1).standard_normal(a.d)
    net = build_network(spec, L, m, 0)
    layers = tuple(range(1, L + 1))

    def run(linear: bool):
        measure_network(Network(net.weights), x, np.array(RATIOS), layers, a.draws, "gaussian", "frobenius",
                        lambda i: np.random.default_rng(i), with_bound=False, with_linear=linear)

    X = x[:, None]
    fwd = net.forward(X)

    def backward():
        for i, J in jacobians(net, fwd, layers):
            linear_answer(J, fwd.post[i - 1], float(np.linalg.norm(net.weights[i - 1])), "frobenius")

    out = {
        "backward": best(backward, a.repeat),
        "weights": best(lambda: build_network(spec, L, m, 0, keep=False).weights, a.repeat),
        "kernel": best(lambda: run(False), a.repeat),
        "kernel_with_linear": best(lambda: run(True), a.repeat),
        "bound_lanczos": best(lambda: [spectral_norm_estimate(w) for w in net.weights], a.repeat),
        "bound_arpack": best(lambda: [spectral_norm(w) for w in net.weights], 1),
    }
    out["linear"] = max(out["kernel_with_linear"] - out["kernel"], 0.0)
    block = out["weights"] + out["kernel_with_linear"] + out["bound_lanczos"]
    out["block"] = block
    out["linear_share_of_block_without_it"] = out["linear"] / (block - out["linear"])
    out["bound_share_of_block"] = out["bound_lanczos"] / block
    out["arpack_over_lanczos"] = out["bound_arpack"] / out["bound_lanczos"]
    return {"L": L, "m": m, **out}


def main(argv=None) -> dict:
    a = parse_args(argv)
    shapes = a.shape or [[8, 512], [8, 2048]]
    with threadpool_limits(limits=1, user_api="blas"):
        measure_shape(2, 256, argparse.Namespace(**{**vars(a), "repeat": 1}))  # warm up: imports, allocator
        rows = [measure_shape(L, m, a) for L, m in shapes]
    result = {"machine": platform.platform(), "ratios": RATIOS, "draws": a.draws, "d": a.d, "k": a.k, "rows": rows}
    if a.json:
        print(json.dumps(result, indent=1))
        return result
    print(f"per network, {len(RATIOS)} ratios x {a.draws} draws, every layer, d={a.d} k={a.k}; best of "
          f"{a.repeat}; one BLAS thread; {platform.platform()}")
    print(f"{'L':>3} {'m':>5} {'weights':>8} {'kernel':>8} {'linear':>8} {'backward':>8} {'bound':>8} {'ARPACK':>8} "
          f"{'linear/rest':>11} {'bound/block':>11}")
    for r in rows:
        print(f"{r['L']:3d} {r['m']:5d} {r['weights']:8.3f} {r['kernel']:8.3f} {r['linear']:8.3f} {r['backward']:8.3f} "
              f"{r['bound_lanczos']:8.3f} {r['bound_arpack']:8.3f} {r['linear_share_of_block_without_it']:11.1%} "
              f"{r['bound_share_of_block']:11.1%}")
    print("seconds; linear = backward pass + worst direction; bound = its L spectral norms (20 Lanczos steps; "
          "ARPACK converged, for comparison)")
    return result


if __name__ == "__main__":
    main()
