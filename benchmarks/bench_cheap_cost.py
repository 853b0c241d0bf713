"""Calibrate pipeline.drawcost: the seconds per unit of the modelled cost of full and cheap draws.

The control variate chooses how many cheap draws to take from the modelled cost of a full draw of a layer
and of a cheap draw (pipeline/drawcost.py), never from timings, so that the same spec gives the same numbers
on any machine. This script measures, with BLAS on one thread, what the constants there should be on this
machine, at the shapes of issue 18's data-set question (``nnsweep estimate --L 3 --m 128 --d 64 --k 10
--n-inputs 360 --ratio 0.01,0.1,0.3 --layer all``; default float64):

- the GEMM and normal rates (benchmarks/machine.py), whose inverses are the seconds per flop and per normal;
- the kernel's seconds per full draw of each layer (pipeline.measure.measure_network with the linear
  answer, one layer at a time); what the flops and normals leave over, fitted by least squares over the
  layers against the values of the columns at and after the perturbed layer, is the seconds per element;
- the seconds per input of a cheap draw of the first-order change (pipeline.control.independent_first_order)
  at ranks r = k and r = k / 2 (the first rows of J), a straight line in r, and what the prediction
  change adds: the product U S w timed alone (per k r) and the rest a multiple of k, least squares over the
  same two shapes.

It prints the fitted constants beside those in pipeline/drawcost.py, and the modelled against the
measured seconds of both kinds of draw.

Usage:
    python benchmarks/bench_cheap_cost.py             # 64 full draws per layer, 2000 cheap draws
    python benchmarks/bench_cheap_cost.py --tiny      # seconds: what tests/test_benchmarks.py could run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import machine  # noqa: E402

machine.pin_threads(1)

import numpy as np  # noqa: E402

from pipeline import drawcost  # noqa: E402
from pipeline.control import CHEAP_BATCH_VALUES, independent_first_order  # noqa: E402
from pipeline.measure import jacobians, measure_network  # noqa: E402
from pipeline.network import build_network, make_inputs  # noqa: E402
from pipeline.noise import matrix_norm  # noqa: E402
from pipeline.spec import Spec  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full-draws", type=int, default=64, help="full draws per layer timed (default 64)")
    p.add_argument("--cheap-draws", type=int, default=2000, help="cheap draws timed per shape (default 2000)")
    p.add_argument("--repeat", type=int, default=3, help="timings of each; the best counts")
    p.add_argument("--tiny", action="store_true", help="m = 32, 40 inputs, 8 full and 200 cheap draws")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    a.m, a.inputs = (32, 40) if a.tiny else (128, 360)
    if a.tiny:
        a.full_draws, a.cheap_draws, a.repeat = 8, 200, 1
    return a


def best(fn, repeat: int) -> float:
    out = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t0)
    return out


def full_draws(net, x, ratios, a) -> list[dict]:
    """Measured and modelled work of one full draw of each layer."""
    rows = []
    for i in range(1, net.depth + 1):
        def run(layer=i):
            return measure_network(net, x, ratios, (layer,), a.full_draws, "gaussian", "frobenius",
                                   lambda j: np.random.default_rng([5, j]), with_bound=False)
        seconds = best(run, a.repeat) / a.full_draws
        work = drawcost.full_draw_work(net.shapes, i, len(x), len(ratios))
        rows.append({"layer": i, "seconds": seconds, "flops": work.flops, "normals": work.normals,
                     "elements": work.elements, "modelled_seconds": work.seconds})
    return rows


def cheap_draws(net, x, ratios, a) -> list[dict]:
    """Measured seconds per input of one cheap draw of layer 1, at two ranks, without and with the crossings."""
    fwd = net.forward(x.T)
    J = dict(jacobians(net, fwd, [1]))[1]
    size = matrix_norm(net.weights[0], "frobenius")
    n, k = J.shape[:2]
    weights = np.full(n, 1.0 / n)
    rows, rng = [], np.random.default_rng(8)
    for kk in (k, k // 2):
        Jk, v = J[:, :kk], fwd.output[:kk].astype(np.float64)

        def run(with_ratios):
            return independent_first_order(Jk, fwd.post[0], size, a.cheap_draws, np.random.default_rng(7),
                                           weights, v, ratios if with_ratios else ())
        change = best(lambda: run(False), a.repeat) / (a.cheap_draws * n)  # noqa: B023
        both = best(lambda: run(True), a.repeat) / (a.cheap_draws * n)  # noqa: B023
        r = min(kk, J.shape[2])
        b = max(1, CHEAP_BATCH_VALUES // (n * max(r, kk * len(ratios))))  # the product U S w of one batch
        US, w = rng.standard_normal((n, kk, r)), rng.standard_normal((b, n, r)).astype(np.float32)
        product = best(lambda: np.matmul(US, w.transpose(1, 2, 0)), a.repeat) / (b * n)  # noqa: B023
        rows.append({"k": kk, "r": r, "change_seconds": change, "crossing_seconds": both - change,
                     "product_seconds": product})
    return rows


def fit(full: list[dict], cheap: list[dict], gemm: float, normal: float) -> dict:
    """The constants of pipeline.drawcost from the measurements."""
    rest = np.array([r["seconds"] - r["flops"] / gemm - r["normals"] / normal for r in full])
    elements = np.array([r["elements"] for r in full])
    per_element = float(rest @ elements / (elements @ elements))
    a, b = cheap
    # the change: a straight line in r through the two shapes; the prediction change: the product U S w timed
    # alone (per k r), and the rest (the threshold's passes) a multiple of k, least squares over the shapes
    rank = (a["change_seconds"] - b["change_seconds"]) / (a["r"] - b["r"])
    product = max(row["product_seconds"] / (row["k"] * row["r"]) for row in cheap)
    rest = np.array([row["crossing_seconds"] - product * row["k"] * row["r"] for row in cheap])
    ks = np.array([row["k"] for row in cheap], dtype=np.float64)
    per_class = max(0.0, float(rest @ ks / (ks @ ks)))
    return {"GEMM_FLOP_SECONDS": 1 / gemm, "NORMAL_SECONDS": 1 / normal, "ELEMENT_SECONDS": per_element,
            "CHEAP_RANK_SECONDS": rank, "CHEAP_INPUT_SECONDS": a["change_seconds"] - rank * a["r"],
            "CROSSING_PRODUCT_SECONDS": float(product), "CROSSING_CLASS_SECONDS": float(per_class)}


def main(argv=None) -> dict:
    a = parse_args(argv)
    spec = Spec.from_dict({"network": {"input_dim": 64, "output_dim": 10, "init": "he", "n_inputs": a.inputs},
                           "grid": {"L": 3, "m": a.m, "seeds": 1, "ratio": [0.01, 0.1, 0.3], "layer": "all"}})
    net, x = build_network(spec, 3, a.m, 0), make_inputs(spec)
    ratios = np.asarray(spec.grid.ratio)
    with machine.bracket(lambda: machine.gemm_rate(a.m, 1024, str(net.dtype))) as gemm, \
            machine.bracket(lambda: machine.normal_rate(str(net.dtype))) as normal:
        full, cheap = full_draws(net, x, ratios, a), cheap_draws(net, x, ratios, a)
    fitted = fit(full, cheap, gemm.best, normal.best)
    used = {name: getattr(drawcost, name) for name in fitted}
    shapes = net.shapes
    for r in cheap:
        r["modelled_change_seconds"] = r["r"] * used["CHEAP_RANK_SECONDS"] + used["CHEAP_INPUT_SECONDS"]
        r["modelled_crossing_seconds"] = (r["k"] * r["r"] * used["CROSSING_PRODUCT_SECONDS"]
                                          + r["k"] * used["CROSSING_CLASS_SECONDS"])
    result = {"machine": machine.describe(), "shapes": shapes, "inputs": len(x), "precision": str(net.dtype),
              "gemm_rate": gemm.as_dict(), "normal_rate": normal.as_dict(), "full": full, "cheap": cheap,
              "fitted": fitted, "in_drawcost": used}
    if a.json:
        print(json.dumps(result, indent=1, default=float))
        return result
    print(f"L=3 m={a.m} d=64 k=10, {len(x)} inputs, 3 ratios, {net.dtype}; best of {a.repeat}; "
          f"{machine.summary(result['machine'])}")
    print(f"GEMM {gemm.best / 1e9:.1f} GFlop/s, normals {normal.best / 1e6:.0f} M/s")
    print(f"{'layer':>5} {'ms per full draw':>17} {'modelled':>9}")
    for r in full:
        print(f"{r['layer']:>5} {r['seconds'] * 1e3:>17.3f} {r['modelled_seconds'] * 1e3:>9.3f}")
    print(f"{'k':>5} {'r':>3} {'ns change':>10} {'modelled':>9} {'ns crossing':>12} {'modelled':>9}  (per input)")
    for r in cheap:
        print(f"{r['k']:>5} {r['r']:>3} {r['change_seconds'] * 1e9:>10.1f} {r['modelled_change_seconds'] * 1e9:>9.1f} "
              f"{r['crossing_seconds'] * 1e9:>12.1f} {r['modelled_crossing_seconds'] * 1e9:>9.1f}")
    print(f"{'constant':<26} {'fitted':>10} {'in drawcost':>12}")
    for name, value in fitted.items():
        print(f"{name:<26} {value:>10.3g} {used[name]:>12.3g}")
    return result


if __name__ == "__main__":
    main()
