"""Interval width per second: plain Monte Carlo against the control variate, for one trained network.

A small MLP is trained on scikit-learn's bundled digits (d = 64, k = 10; its 360
test inputs share each eta), then, at each ratio, side by side in one run with
BLAS pinned to one thread and every layer perturbed:

- plain: the Monte Carlo kernel alone (pipeline.measure.measure_network without
  the linear answer), N draws, the 95% t-interval of E R over draws;
- control variate: the kernel with the linear answer (which gives each draw's
  first-order change C), the same N draws, plus the cheap draws of C
  (pipeline.control.cheap_first_order, as many as estimate's rule asks: the
  cost-aware count of cheap_draw_counts, capped by cost_capped), and
  the control-variate interval of pipeline.control.cv_estimate.

Each run's width w and seconds t (best of --repeat) give the figure of merit
w^2 t, the seconds one method needs for an interval of unit width (width falls
as 1/sqrt(time)); their ratio is the speed-up at equal precision.

Usage:
    python benchmarks/bench_control.py                  # L=3 m=128, 360 inputs, 200 draws
    python benchmarks/bench_control.py --tiny --json    # seconds; what tests/test_benchmarks.py runs
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

from pipeline.control import (CHEAP_SE_FRACTION, CheapDraws, cheap_draw_counts, cheap_first_order,  # noqa: E402
                              cost_capped, cv_estimate, layer_costs, plain_estimate)
from pipeline.measure import measure_network  # noqa: E402
from pipeline.network import Network  # noqa: E402

RATIOS = (1e-3, 1e-2, 0.1)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--L", type=int, default=3, help="weight layers (default 3)")
    p.add_argument("--m", type=int, default=128, help="hidden width (default 128)")
    p.add_argument("--inputs", type=int, default=360, help="test inputs sharing each eta (default 360, all)")
    p.add_argument("--draws", type=int, default=200, help="full draws N (default 200)")
    p.add_argument("--repeat", type=int, default=2, help="timings per method and ratio; the best counts")
    p.add_argument("--precision", default="float32", choices=["float32", "float64"])
    p.add_argument("--tiny", action="store_true", help="m = 16, 40 inputs, 20 draws, one timing")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    if a.tiny:
        a.m, a.inputs, a.draws, a.repeat = 16, 40, 20, 1
    return a


def trained_network(L: int, m: int, inputs: int, dtype) -> tuple[Network, np.ndarray, float]:
    """An MLP trained on digits (ReLU, L - 1 hidden layers of m), its first test inputs and its test accuracy."""
    import warnings

    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.2, random_state=0, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=(m,) * (L - 1), max_iter=200, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train, y_train)
    net = Network(tuple(w.T for w in clf.coefs_), tuple(clf.intercepts_), dtype)
    return net, x_test[:inputs], float(clf.score(x_test, y_test))


def samples(delta: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """Per-draw mean relative change over the inputs and every layer: (layer, input, draw) -> (draw,)."""
    return (delta / norm[None, :, None]).mean(axis=(0, 1))


def timed(fn, repeat: int):
    """(the result of the last call, the best seconds over ``repeat`` calls)."""
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def one_ratio(net: Network, x: np.ndarray, ratio: float, draws: int, repeat: int) -> dict:
    layers = tuple(range(1, net.depth + 1))
    full = lambda i: np.random.default_rng([1, i])  # noqa: E731
    cheap_streams = lambda i: np.random.default_rng([2, i])  # noqa: E731
    plain_run, plain_s = timed(lambda: measure_network(net, x, np.array([ratio]), layers, draws, "gaussian",
                                                       "frobenius", full, with_bound=False, with_linear=False),
                               repeat)
    norm = plain_run.output_norm
    plain = plain_estimate(samples(plain_run.delta_norm[0], norm))

    def control():
        res = measure_network(net, x, np.array([ratio]), layers, draws, "gaussian", "frobenius", full,
                              with_bound=False)
        weights = 1 / (len(norm) * norm)
        costs = layer_costs(net.shapes, list(layers), len(x), 1)  # estimate's rule: cost-aware, capped
        m = cheap_draw_counts(list(layers), [(res.delta_norm, res.linear_change, weights, CHEAP_SE_FRACTION)],
                              "gaussian", "frobenius", cost={i: f / c for i, (f, c, _) in costs.items()})
        m, _ = cost_capped(m, None, costs, draws)
        t0 = time.perf_counter()
        cheap = CheapDraws(cheap_first_order(net, x, m, "gaussian", "frobenius", cheap_streams, weights))
        est = cv_estimate(samples(res.delta_norm[0], norm), samples(res.linear_change[0], norm),
                          cheap.mean([ratio], list(layers)))
        return est, m, time.perf_counter() - t0
    (cv, cheap_draws, cheap_s), cv_s = timed(control, repeat)
    out = {"ratio": ratio}
    for name, est, seconds in (("plain", plain, plain_s), ("control_variate", cv, cv_s)):
        width = est.ci95[1] - est.ci95[0]
        out[name] = {"mean": est.mean, "ci95": list(est.ci95), "width": width, "seconds": seconds,
                     "width2_seconds": width**2 * seconds}
    out["control_variate"]["cheap_draws"] = {str(i): n for i, n in cheap_draws.items()}
    out["control_variate"]["cheap_seconds"] = cheap_s
    out["width_ratio"] = out["plain"]["width"] / out["control_variate"]["width"]
    out["speedup_at_equal_width"] = out["plain"]["width2_seconds"] / out["control_variate"]["width2_seconds"]
    return out


def main(argv=None) -> dict:
    a = parse_args(argv)
    info = machine.describe()
    net, x, accuracy = trained_network(a.L, a.m, a.inputs, a.precision)
    rows = [one_ratio(net, x, r, a.draws, a.repeat) for r in RATIOS]
    result = {"machine": info, "network": {"L": a.L, "m": a.m, "d": x.shape[1], "k": net.shapes[-1][0],
                                           "inputs": len(x), "test_accuracy": accuracy, "precision": a.precision},
              "draws": a.draws, "repeat": a.repeat, "rows": rows}
    if a.json:
        print(json.dumps(result, indent=1))
        return result
    print(f"digits MLP L={a.L} m={a.m} ({a.precision}, test accuracy {accuracy:.3f}), {len(x)} inputs sharing "
          f"each eta, every layer, {a.draws} full draws; best of {a.repeat}; {machine.summary(info)}")
    print(f"{'ratio':>7} {'plain width':>12} {'s':>7} {'CV width':>10} {'s':>7} {'cheap s':>8} {'cheap draws':>12} "
          f"{'narrower':>9} {'speed-up':>9}")
    for r in rows:
        p, c = r["plain"], r["control_variate"]
        print(f"{r['ratio']:>7g} {p['width']:>12.3g} {p['seconds']:>7.2f} {c['width']:>10.3g} {c['seconds']:>7.2f} "
              f"{c['cheap_seconds']:>8.2f} {max(c['cheap_draws'].values()):>12d} {r['width_ratio']:>8.2f}x "
              f"{r['speedup_at_equal_width']:>8.2f}x")
    print("width: of the 95% interval of E R; narrower: plain width / CV width at the same full draws; "
          "speed-up: plain width^2 x seconds over the CV's (the time ratio for equal widths).")
    return result


if __name__ == "__main__":
    main()
