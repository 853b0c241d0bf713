"""How much the cap on the cheap draws' cost buys: ``nnsweep estimate``'s control variate at several caps.

The control variate's cheap draws (pipeline/control.py) are the smaller of the precision rule and the
cost-optimal count, then shrunk over the layers so that their modelled cost is at most CHEAP_COST_CAP times
the full draws'. This script runs pipeline.estimation.estimate on issue 18's data-set question (by
default: L=3 m=128 d=64 k=10, 360 inputs, 2000 draws, ratios 0.01, 0.1, 0.3, every layer) once without the
control variate and once per cap, in one process with BLAS on one thread, and prints for each: the process
CPU seconds of the whole estimate and of its cheap draws, the cheap draws per layer, how many times narrower
the control-variate interval is than the plain one (pooled and by ratio), and the speed-up at equal width,
width ratio^2 x plain seconds / seconds (width falls as 1/sqrt(time)).

Usage:
    python benchmarks/bench_cheap_cap.py                       # caps 0.25, 0.5, 1, 2
    python benchmarks/bench_cheap_cap.py --tiny --json         # seconds: what a test runs
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

from pipeline import control  # noqa: E402
from pipeline.estimation import estimate  # noqa: E402
from pipeline.spec import Spec  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--network", default="3,128,64,10,360", help="L,m,d,k,inputs (default 3,128,64,10,360)")
    p.add_argument("--draws", type=int, default=2000, help="full draws (default 2000)")
    p.add_argument("--ratios", default="0.01,0.1,0.3", help="ratios (default 0.01,0.1,0.3)")
    p.add_argument("--caps", default="0.25,0.5,1,2", help="values of CHEAP_COST_CAP (default 0.25,0.5,1,2)")
    p.add_argument("--tiny", action="store_true", help="L=3 m=16 d=8 k=4, 20 inputs, 40 draws, caps 0.5,1")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    if a.tiny:
        a.network, a.draws, a.caps = "3,16,8,4,20", 40, "0.5,1"
    return a


def one_run(spec: Spec, cap: float | None) -> dict:
    """One estimate (the plain one for ``cap`` None): CPU seconds, cheap draws and their seconds, widths."""
    seen = {}
    draw = control.cheap_first_order

    def timed(*args, **kwargs):
        t0 = time.process_time()
        out = draw(*args, **kwargs)
        seen.update(seconds=time.process_time() - t0, draws=dict(args[2]))
        return out
    control.cheap_first_order, saved = timed, control.CHEAP_COST_CAP
    control.CHEAP_COST_CAP = saved if cap is None else cap
    try:
        t0 = time.process_time()
        js = estimate(spec, control_variate=cap is not None)
        seconds = time.process_time() - t0
    finally:
        control.cheap_first_order, control.CHEAP_COST_CAP = draw, saved
    groups = {"pooled": js, **js.get("by_ratio", {})}
    narrower = {g: (s["control_variate"] or {}).get("width_ratio") for g, s in groups.items()}
    return {"cap": cap, "seconds": seconds, "cheap_seconds": seen.get("seconds", 0.0),
            "cheap_draws": {str(i): n for i, n in seen.get("draws", {}).items()}, "narrower": narrower}


def main(argv=None) -> dict:
    a = parse_args(argv)
    L, m, d, k, n = (int(v) for v in a.network.split(","))
    spec = Spec.from_dict({"network": {"input_dim": d, "output_dim": k, "init": "he", "n_inputs": n},
                           "grid": {"L": L, "m": m, "seeds": 1, "ratio": [float(r) for r in a.ratios.split(",")],
                                    "layer": "all"}, "noise": {"draws": a.draws}})
    warm = Spec.from_dict({"network": {"input_dim": 4, "output_dim": 3, "n_inputs": 4},
                           "grid": {"L": 2, "m": 8, "seeds": 1, "ratio": [0.1], "layer": "all"}, "noise": {"draws": 8}})
    one_run(warm, 1.0)  # imports and first calls, outside the timings
    plain = one_run(spec, None)
    rows = [one_run(spec, float(c)) for c in a.caps.split(",")]
    for row in rows:
        row["speedup_at_equal_width"] = {g: w**2 * plain["seconds"] / row["seconds"] if w else None
                                         for g, w in row["narrower"].items()}
    result = {"machine": machine.describe(), "network": a.network, "draws": a.draws, "ratios": a.ratios,
              "plain_seconds": plain["seconds"], "rows": rows}
    if a.json:
        print(json.dumps(result, indent=1))
        return result
    print(f"L,m,d,k,inputs = {a.network}, {a.draws} draws, ratios {a.ratios}, every layer; process CPU seconds; "
          f"{machine.summary(result['machine'])}")
    print(f"plain (--no-control-variate): {plain['seconds']:.1f} s")
    groups = list(rows[0]["narrower"])
    print(f"{'cap':>5} {'s':>6} {'cheap s':>8} {'cheap draws per layer':>28}  narrower / speed-up at equal width: "
          + ", ".join(groups))
    for row in rows:
        draws = "/".join(str(v) for v in row["cheap_draws"].values())
        cells = "  ".join(f"{row['narrower'][g]:.2f}x/{row['speedup_at_equal_width'][g]:.1f}x" for g in groups)
        print(f"{row['cap']:>5g} {row['seconds']:>6.1f} {row['cheap_seconds']:>8.1f} {draws:>28}  {cells}")
    return result


if __name__ == "__main__":
    main()
