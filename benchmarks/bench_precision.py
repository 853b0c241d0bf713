"""How far float32 moves ||v - v*|| from float64: the same network, the same noise, both precisions.

For each (L, m) one He network is drawn in float64 and measured twice by
pipeline.measure.measure_network: as it is, and rounded to float32 (weights,
noise and matrix products in float32; norms and sums in float64). Prints,
per ratio, the largest and the median relative difference of ||v - v*|| over
every layer, input and draw. The kernel carries differences from the clean
pass, so the error should not grow as r shrinks.

    python benchmarks/bench_precision.py
    python benchmarks/bench_precision.py --shapes 8x512 32x1024 --draws 64 --json
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from threadpoolctl import threadpool_limits

from pipeline.measure import measure_network
from pipeline.network import Network, layer_shapes

RATIOS = (1e-10, 1e-6, 1e-3, 1e-2, 0.1, 0.3, 1.0)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=["8x512", "32x256"], help="L x m (default 8x512 32x256)")
    p.add_argument("--d", type=int, default=784, help="input dimension (default 784)")
    p.add_argument("--k", type=int, default=10, help="outputs (default 10)")
    p.add_argument("--draws", type=int, default=32, help="draws per layer (default 32)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    out = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for shape in args.shapes:
            L, m = map(int, shape.split("x"))
            rng = np.random.default_rng(L * 10007 + m)
            ws = tuple(rng.standard_normal(s) * np.sqrt(2 / s[1]) for s in layer_shapes(L, m, args.d, args.k))
            x = rng.standard_normal(args.d)
            res = {dtype: measure_network(Network(ws, None, dtype), x, np.array(RATIOS), tuple(range(1, L + 1)),
                                          args.draws, "gaussian", "frobenius",
                                          lambda i: np.random.default_rng([L, m, i])).delta_norm
                   for dtype in ("float64", "float32")}
            rel = np.abs(res["float32"] - res["float64"]) / res["float64"]
            out[shape] = {repr(r): {"max": float(rel[k].max()), "median": float(np.median(rel[k]))}
                          for k, r in enumerate(RATIOS)}
    if args.json:
        print(json.dumps(out, indent=2))
        return out
    print("relative difference of ||v - v*||, float32 against float64 (same network, same noise; "
          f"every layer, {args.draws} draws)")
    print(f"{'L x m':>9} {'ratio':>7} {'max':>9} {'median':>9}")
    for shape, by_ratio in out.items():
        for r, s in by_ratio.items():
            print(f"{shape:>9} {float(r):>7.0e} {s['max']:>9.1e} {s['median']:>9.1e}")
    return out


if __name__ == "__main__":
    main()
