"""Sweep-scale benchmark: where a network's time goes, against the machine's limit, and peak memory.

Per network of sweeps/scaling.yaml (its 7 ratios and 32 draws, d = 784,
k = 10, one input, every layer perturbed, 1 BLAS thread), at each (L, m) of
``--shapes`` and each ``--precision``:

- the time split {weights, clean, noise, kernel, bound, linear, other} that
  pipeline.measure.measure_network reports ("other" is the measured total
  minus the rest), and the total, of the best of ``--repeat`` networks (the
  network with the smallest total, with its own split);
- the LIMIT computed in the same run for the same work: the GEMM flops the
  measurement needs at the measured GEMM rate of that precision, plus the
  normal numbers it draws at the measured normal-sampling rate of the dtype
  they are drawn in (SAMPLING_DTYPES), each rate the best of a measurement
  before and after the case (benchmarks/machine.py);
  total / limit (target <= 1.5), and float64 / float32 per network (target
  >= 1.7 at (8, 2048));
- the peak resident memory of the process that measured it: every
  (shape, precision) runs in a fresh subprocess of this script, whose
  ru_maxrss is taken from os.wait4 (this also keeps one case's heap and
  caches out of another's timing). The subprocesses are started by a small
  helper (benchmarks/machine.py's Launcher): a child forked from this process
  would report this process's own peak as its floor.

Then the wall time and peak memory of the whole process ``nnsweep estimate
--L 32 --m 2048 --seeds 1 --draws 4 --ratio 0.1 --layer all`` (target
<= 450 MB), beside ``python -c pass``.

The work counted for the limit, with n = 1 input, R ratios, D draws, origins
every layer 1..L and W_1 (m x d), W_2..W_{L-1} (m x m), W_L (k x m):
- perturbed columns: R (D + 1) per origin (the +1 is the worst direction of
  the linear answer); at layer j = 2..L the columns of every origin i < j go
  through W_j: 2 n_out n_in (j - 1) R (D + 1) flops;
- the clean pass (2 n_out n_in per layer), the backward pass of the linear
  answer (2 k n_out n_in for j >= 2) and the bound's spectral norms (20
  Lanczos steps of two matrix-vector products per layer), all at the GEMM rate;
- normal numbers: every weight once, and n_out + 1 per (layer, draw) for
  Gaussian noise scaled by the Frobenius norm with one input.

    python benchmarks/bench_sweep.py                        # a few minutes
    python benchmarks/bench_sweep.py --shapes 8x512 --repeat 1 --estimate 8x512
    python benchmarks/bench_sweep.py --precision float32 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import machine  # noqa: E402  (benchmarks/machine.py: this script's folder is on sys.path)

THREADS = 1
machine.pin_threads(THREADS)  # before numpy is imported, here and in every child process

ROOT = Path(__file__).resolve().parent.parent
SPEC_FILE = ROOT / "sweeps" / "scaling.yaml"
DEFAULT_SHAPES = "8x2048 16x1024 32x1024"
PRECISIONS = ("float64", "float32")
SPLIT = ("weights", "clean", "noise", "kernel", "bound", "linear")  # what measure_network reports
# The dtypes the kernel DRAWS its normal numbers in: pipeline/network.py draws the weights in the compute
# precision ("compute"), pipeline/noise.py the noise in float64 in both precisions. The limit's normal-sampling
# rates are measured in these dtypes: change them with the kernel.
SAMPLING_DTYPES = {"weights": "compute", "noise": "float64"}
ESTIMATE_ARGS = ("--seeds", "1", "--draws", "4", "--ratio", "0.1", "--layer", "all")
TARGET_OVER_LIMIT, TARGET_SPEEDUP, TARGET_SPEEDUP_SHAPE, TARGET_RSS_MB = 1.5, 1.7, (8, 2048), 450.0


def shape(text: str) -> tuple[int, int]:
    """'8x2048' -> (8, 2048)."""
    try:
        L, m = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LxM, e.g. 8x2048") from None
    if L < 2 or m < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: L must be >= 2 and m >= 1")
    return L, m


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--shapes", type=shape, nargs="+", default=[shape(s) for s in DEFAULT_SHAPES.split()],
                   metavar="LxM", help=f"(L, m) of the networks (default {DEFAULT_SHAPES})")
    p.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                   help="compute precisions (default both)")
    p.add_argument("--repeat", type=int, default=2,
                   help="networks timed per case; the one with the smallest total is reported (default 2)")
    p.add_argument("--rate-repeats", type=int, default=7,
                   help="timings per rate measurement, the best is kept (default 7)")
    p.add_argument("--estimate", type=shape, default=(32, 2048), metavar="LxM",
                   help="(L, m) of the whole-process `nnsweep estimate` run (default 32x2048)")
    p.add_argument("--no-estimate", action="store_true", help="skip the whole-process `nnsweep estimate` run")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--case", type=shape, help=argparse.SUPPRESS)  # internal: measure one case in this process
    a = p.parse_args(argv)
    if a.repeat < 1 or a.rate_repeats < 1:
        p.error("--repeat and --rate-repeats must be >= 1")
    return a


# ------------------------------------------------------------------ the work, counted


def layer_shapes(L: int, m: int, d: int, k: int) -> list[tuple[int, int]]:
    """(n_out, n_in) of W_1..W_L."""
    widths = [d] + [m] * (L - 1) + [k]
    return [(widths[j + 1], widths[j]) for j in range(L)]


def work(L: int, m: int, d: int, k: int, ratios: int, draws: int) -> dict:
    """GEMM flops and normal numbers of one network, one input, every layer perturbed, linear answer on."""
    from pipeline.network import LANCZOS_STEPS  # the bound's spectral norms: a product with W and W^T per step

    shapes = layer_shapes(L, m, d, k)
    columns = ratios * (draws + 1)  # per origin; + 1: the worst direction of each ratio
    perturbed = sum(2.0 * o * i * (j - 1) * columns for j, (o, i) in enumerate(shapes, 1) if j >= 2)
    clean = sum(2.0 * o * i for o, i in shapes)
    backward = sum(2.0 * k * o * i for j, (o, i) in enumerate(shapes, 1) if j >= 2)
    lanczos = sum(LANCZOS_STEPS * 2 * 2.0 * o * i for o, i in shapes)
    weights = sum(o * i for o, i in shapes)
    noise = sum((o + 1) * draws for o, _ in shapes)
    return {"gemm_flops": perturbed + clean + backward + lanczos,
            "gemm_flops_parts": {"perturbed": perturbed, "clean": clean, "backward": backward, "lanczos": lanczos},
            "normal_numbers": weights + noise,
            "normal_numbers_parts": {"weights": weights, "noise": noise},
            "widest_batch": (L - 1) * columns}


def sampling_dtypes(precision: str) -> dict[str, str]:
    """SAMPLING_DTYPES for a network computed in ``precision``."""
    return {kind: precision if dtype == "compute" else dtype for kind, dtype in SAMPLING_DTYPES.items()}


def limit(w: dict, gemm_rate: float, normal_rates: dict[str, float]) -> dict:
    """Seconds the work needs at the given rates: GEMM flop/s, and normal numbers/s per kind (weights, noise)."""
    gemm = w["gemm_flops"] / gemm_rate
    normal = {kind: count / normal_rates[kind] for kind, count in w["normal_numbers_parts"].items()}
    return {"seconds": gemm + sum(normal.values()), "gemm_seconds": gemm, "normal_seconds": normal}


# ------------------------------------------------------------------ one case, in its own process


def load_raw() -> dict:
    from pipeline import yamlload

    return yamlload.load(SPEC_FILE.read_text())


def make_spec(L: int, m: int, precision: str):
    """sweeps/scaling.yaml at one (L, m), computed in ``precision``."""
    from pipeline.spec import Spec

    raw = load_raw()
    raw["grid"] = {**raw["grid"], "L": [L], "m": [m]}
    raw["compute"] = {"precision": precision}
    return Spec.from_dict(raw)


def time_network(spec, L: int, m: int, seed: int, x) -> dict:
    """One network, built (lazily) and measured: the split, and the total as timed here."""
    import numpy as np

    from pipeline.measure import measure_network
    from pipeline.network import NOISE_STREAM, build_network, stream

    g, nz = spec.grid, spec.noise
    timings = dict.fromkeys(SPLIT, 0.0)
    t0 = time.perf_counter()
    net = build_network(spec, L, m, seed)
    measure_network(net, x, np.array(g.ratio), tuple(range(1, L + 1)), nz.draws, nz.distribution, nz.norm,
                    lambda i: stream(spec, NOISE_STREAM, L, m, seed, i), timings=timings)
    total = time.perf_counter() - t0
    split = {key: timings[key] for key in SPLIT}
    split["other"] = total - sum(split.values())
    return {"seconds": split, "total": total}


def run_case(L: int, m: int, precision: str, repeat: int) -> dict:
    """Time ``repeat`` networks (seeds 0..repeat-1) after a warm-up network; the fastest is reported."""
    import resource

    from threadpoolctl import threadpool_limits

    from pipeline.network import make_inputs

    spec = make_spec(L, m, precision)
    x = make_inputs(spec)[0]  # one input, the question as asked
    with threadpool_limits(limits=THREADS, user_api="blas"):
        time_network(make_spec(3, 128, precision), 3, 128, 0, x)  # imports, scipy, the allocator
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        runs = [time_network(spec, L, m, seed, x) for seed in range(repeat)]
    best = min(runs, key=lambda r: r["total"])
    return {**best, "totals": [r["total"] for r in runs],
            "peak_rss_before_networks_mb": machine.rss_mb(rss_before)}


def measure_case(L: int, m: int, precision: str, a, launcher: machine.Launcher) -> dict:
    """One (shape, precision) in a fresh process, bracketed by the GEMM and normal-sampling rates."""
    spec = make_spec(L, m, "float64")
    net = spec.network
    w = work(L, m, net.input_dim, net.output_dim, len(spec.grid.ratio), spec.noise.draws)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--case", f"{L}x{m}", "--precision", precision,
           "--repeat", str(a.repeat)]
    dtypes = sampling_dtypes(precision)
    load_before = machine.load_average()
    with contextlib.ExitStack() as stack:
        gemm = stack.enter_context(
            machine.bracket(lambda: machine.gemm_rate(m, w["widest_batch"], precision, a.rate_repeats)))
        normal = {dt: stack.enter_context(machine.bracket(lambda dt=dt: machine.normal_rate(dt, repeats=a.rate_repeats)))
                  for dt in sorted(set(dtypes.values()))}
        child = launcher.run(cmd, cwd=ROOT)
    case = json.loads(child["stdout"])
    lim = limit(w, gemm.best, {kind: normal[dt].best for kind, dt in dtypes.items()})
    return {
        "L": L, "m": m, "precision": precision, **case, "peak_rss_mb": child["peak_rss_mb"],
        "limit": {**lim, "work": w,
                  "gemm_rate": {**gemm.as_dict(), "dtype": precision,
                                "shape": f"({m} x {m}) @ ({m} x {w['widest_batch']})"},
                  "normal_rates": {dt: b.as_dict() for dt, b in normal.items()}, "sampling_dtypes": dtypes},
        "total_over_limit": case["total"] / lim["seconds"],
        "load_average": {"before": load_before, "after": machine.load_average()},
    }


def nnsweep_command() -> list[str]:
    """The `nnsweep` console script of this interpreter's environment, else ``python -m pipeline``."""
    script = Path(sys.executable).with_name("nnsweep")
    found = str(script) if script.exists() else shutil.which("nnsweep")
    return [found] if found else [sys.executable, "-m", "pipeline"]


def measure_estimate(L: int, m: int, launcher: machine.Launcher) -> dict:
    """Wall time and peak RSS of a whole `nnsweep estimate` process, and of `python -c pass` beside it."""
    args = ["estimate", "--L", str(L), "--m", str(m), *ESTIMATE_ARGS]
    estimate = launcher.run([*nnsweep_command(), *args], cwd=ROOT)
    python = launcher.run([sys.executable, "-c", "pass"], cwd=ROOT)
    return {"command": " ".join(["nnsweep", *args]), "L": L, "m": m,
            "seconds": estimate["seconds"], "peak_rss_mb": estimate["peak_rss_mb"],
            "python_pass": {"seconds": python["seconds"], "peak_rss_mb": python["peak_rss_mb"]}}


# ------------------------------------------------------------------ the whole run


def speed_ratios(cases: list[dict]) -> list[dict]:
    """float64 total / float32 total per network at every shape measured in both."""
    by = {(c["L"], c["m"], c["precision"]): c["total"] for c in cases}
    return [{"L": L, "m": m, "float64_over_float32": by[L, m, "float64"] / by[L, m, "float32"]}
            for (L, m, p) in by if p == "float64" and (L, m, "float32") in by]


def targets(r: dict) -> dict:
    out = {f"{c['L']}x{c['m']} {c['precision']}: total / limit <= {TARGET_OVER_LIMIT}":
           c["total_over_limit"] <= TARGET_OVER_LIMIT for c in r["cases"]}
    for s in r["speed_ratios"]:
        if (s["L"], s["m"]) == TARGET_SPEEDUP_SHAPE:
            out[f"{s['L']}x{s['m']}: float64 / float32 >= {TARGET_SPEEDUP}"] = s["float64_over_float32"] >= TARGET_SPEEDUP
    e = r.get("estimate")
    if e and (e["L"], e["m"]) == (32, 2048):
        out[f"{e['command']}: peak RSS <= {TARGET_RSS_MB:.0f} MB"] = e["peak_rss_mb"] <= TARGET_RSS_MB
    return out


def main(a) -> dict:
    with machine.Launcher() as launcher:  # first, while this process is small
        return measure_all(a, launcher)


def measure_all(a, launcher: machine.Launcher) -> dict:
    from threadpoolctl import threadpool_limits

    raw = load_raw()
    with threadpool_limits(limits=THREADS, user_api="blas"):
        info = machine.describe()
        cases = [measure_case(L, m, p, a, launcher) for L, m in a.shapes for p in a.precision]
    result = {
        "machine": info,
        "work": {"spec": str(SPEC_FILE.relative_to(ROOT)), "ratios": raw["grid"]["ratio"],
                 "draws": raw["noise"]["draws"], "input_dim": raw["network"]["input_dim"],
                 "output_dim": raw["network"]["output_dim"], "inputs": 1, "layers": "all",
                 "noise": f"{raw['noise']['distribution']}/{raw['noise']['norm']}", "blas_threads": THREADS,
                 "networks_per_case": a.repeat, "statistic": "the network with the smallest total"},
        "cases": cases,
        "speed_ratios": speed_ratios(cases),
    }
    if not a.no_estimate:
        result["estimate"] = measure_estimate(*a.estimate, launcher)
    result["load_average_end"] = machine.load_average()
    result["targets"] = targets(result)
    return result


def report(r: dict) -> str:
    w = r["work"]
    lines = [
        f"machine: {machine.summary(r['machine'])}",
        f"work:    per network of {w['spec']}: {len(w['ratios'])} ratios, {w['draws']} draws, d={w['input_dim']}, "
        f"k={w['output_dim']}, {w['inputs']} input, every layer, {w['noise']}, {w['blas_threads']} BLAS thread; "
        f"each case in a fresh process, best of {w['networks_per_case']} network(s)",
        "limit:   GEMM flops / GEMM rate of the precision + normal numbers / normal-sampling rate of the dtype "
        f"they are drawn in ({', '.join(f'{k}: {v}' for k, v in SAMPLING_DTYPES.items())}); each rate the best "
        "of before and after the case",
        "",
        f"{'L':>3} {'m':>5} {'prec':>7} | {'weights':>7} {'clean':>6} {'noise':>6} {'kernel':>6} {'bound':>6} "
        f"{'linear':>6} {'other':>6} | {'total':>6} {'limit':>6} {'/limit':>6} | {'GEMM GFLOP/s b/a':>16} "
        f"{'normal M/s w/n':>14} | {'peak MB':>7} {'load':>5}",
    ]
    for c in r["cases"]:
        s, lim = c["seconds"], c["limit"]
        g, n = lim["gemm_rate"], {kind: lim["normal_rates"][dt]["best"] for kind, dt in lim["sampling_dtypes"].items()}
        lines.append(
            f"{c['L']:>3} {c['m']:>5} {c['precision']:>7} | "
            + " ".join(f"{s[k]:>{max(len(k), 6)}.3f}" for k in (*SPLIT, "other"))
            + f" | {c['total']:>6.3f} {lim['seconds']:>6.3f} {c['total_over_limit']:>6.2f} | "
            f"{g['before'] / 1e9:>7.1f}/{g['after'] / 1e9:<8.1f} {n['weights'] / 1e6:>6.1f}/{n['noise'] / 1e6:<7.1f} | "
            f"{c['peak_rss_mb']:>7.0f} {c['load_average']['after'][0] if c['load_average']['after'] else '?':>5}")
    lines.append("seconds per network; /limit target <= %.1f" % TARGET_OVER_LIMIT)
    for s in r["speed_ratios"]:
        lines.append(f"float64 / float32 at L={s['L']} m={s['m']}: {s['float64_over_float32']:.2f}x"
                     + (f" (target >= {TARGET_SPEEDUP})" if (s["L"], s["m"]) == TARGET_SPEEDUP_SHAPE else ""))
    e = r.get("estimate")
    if e:
        p = e["python_pass"]
        lines.append(f"{e['command']}: {e['seconds']:.2f} s, peak RSS {e['peak_rss_mb']:.0f} MB"
                     + (f" (target <= {TARGET_RSS_MB:.0f} MB)" if (e["L"], e["m"]) == (32, 2048) else "")
                     + f"; python -c pass: {p['seconds']:.2f} s, {p['peak_rss_mb']:.0f} MB")
    lines.append("load average at the end: " + "/".join(f"{x:.2f}" for x in r["load_average_end"]))
    lines += [f"target {'met   ' if ok else 'MISSED'}  {name}" for name, ok in r["targets"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    ARGS = parse_args()
    if ARGS.case:
        print(json.dumps(run_case(*ARGS.case, ARGS.precision[0], ARGS.repeat)))
    else:
        res = main(ARGS)
        print(json.dumps(res, indent=2) if ARGS.json else report(res))
