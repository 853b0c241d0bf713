"""Benchmark every noise model against the Gaussian-Frobenius fast path, per network.

For each noise model (gaussian / sphere / rademacher x frobenius / spectral),
per network (every layer perturbed, ``--draws`` draws per layer, one input):
  (a) the kernel, pipeline.measure.measure_network with ``with_bound=False,
      with_linear=False`` (the bound and the linear answer do not depend on the
      noise's distribution; ``--full`` times them too). This includes the
      kernel's own ||W_i|| in the noise's norm, one per layer;
  (b) the sampler alone, pipeline.noise.pre_activation_noise at every layer
      with ||W_i|| given, as the kernel calls it.
Each is the best of ``--repeat`` runs per network (rounds over all models in
turn, so load changes fall on all alike), averaged over networks, and printed with its factor over gaussian+frobenius (the fast path that never
materialises eta). Target: every model at most 5x the fast path in (a).

    python benchmarks/bench_noise.py                  # L=8 m=512 d=512 k=10 draws=64, 1 BLAS thread
    python benchmarks/bench_noise.py --json
    python benchmarks/bench_noise.py --dtype float32  # the sampler's float32 mode, table (b) only
"""

from __future__ import annotations

import argparse
import os
import sys

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
MODELS = [(dist, norm) for norm in ("frobenius", "spectral") for dist in ("gaussian", "sphere", "rademacher")]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--L", type=int, default=8, help="weight layers (default 8)")
    p.add_argument("--m", type=int, default=512, help="hidden width (default 512)")
    p.add_argument("--d", type=int, default=512, help="input dimension (default 512)")
    p.add_argument("--k", type=int, default=10, help="output dimension (default 10)")
    p.add_argument("--n", type=int, default=1, help="inputs per network (default 1)")
    p.add_argument("--draws", type=int, default=64, help="draws per layer and network (default 64)")
    p.add_argument("--ratio", type=float, default=0.1, help="noise ratio r (default 0.1)")
    p.add_argument("--seeds", type=int, default=1, help="networks timed (default 1)")
    p.add_argument("--repeat", type=int, default=3, help="runs per network and model, the best is kept (default 3)")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="dtype passed to the sampler in table (b) when it accepts one (default float64)")
    p.add_argument("--full", action="store_true", help="(a) with the bound and the linear answer as well")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = p.parse_args(argv)
    if min(args.L, args.m, args.d, args.k, args.n, args.draws, args.seeds, args.repeat, args.threads) < 1 \
            or args.ratio <= 0:
        p.error("every count must be >= 1 and --ratio > 0")
    return args


ARGS = parse_args()
# Pin BLAS threads before numpy is imported; threadpoolctl enforces it again below.
for _var in THREAD_VARS:
    os.environ[_var] = str(ARGS.threads)

import inspect  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

from pipeline.measure import measure_network  # noqa: E402
from pipeline.network import build_network, make_inputs, spectral_norm  # noqa: E402
from pipeline.noise import matrix_norm, pre_activation_noise  # noqa: E402
from pipeline.spec import Spec  # noqa: E402


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int) -> dict:
    blas = [f"{p.get('internal_api')} {p.get('version')} ({p.get('num_threads')} threads)"
            for p in threadpool_info() if p.get("user_api") == "blas"]
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__, "blas": "; ".join(blas) or "unknown",
            "blas_threads": threads, "load_average": list(os.getloadavg())}


def make_spec(a) -> Spec:
    return Spec.from_dict({
        "random_seed": 12345,
        "network": {"input_dim": a.d, "output_dim": a.k},
        "grid": {"L": [a.L], "m": [a.m], "ratio": [a.ratio], "seeds": a.seeds},
        "noise": {"draws": a.draws},
    })


def noise_streams(seed: int):
    return lambda i: np.random.default_rng([seed, i])


def kernel_run(a, net, x, seed, distribution, norm):
    layers = tuple(range(1, a.L + 1))
    return lambda: measure_network(net, x, np.array([a.ratio]), layers, a.draws, distribution, norm,
                                   noise_streams(seed), with_bound=a.full, with_linear=a.full)


def sampler_run(a, net, x, seed, distribution, norm, dtype_kw: dict):
    """pre_activation_noise at every layer, ||W_i|| given (the kernel computes it, outside this timing)."""
    post = net.forward(np.atleast_2d(x).T).post
    sizes = [matrix_norm(w, norm) for w in net.weights]
    rngs = noise_streams(seed)

    def run():
        for i, w in enumerate(net.weights, 1):
            pre_activation_noise(rngs(i), w, post[i - 1], a.draws, distribution, norm, sizes[i - 1], **dtype_kw)
    return run


def best_times(a, runs: dict) -> dict:
    """Best of ``--repeat`` seconds per key; the rounds go over every key in turn, so a change in the
    machine's load mid-run falls on every model alike."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(a.repeat):
        for key, run in runs.items():
            t0 = time.perf_counter()
            run()
            best[key] = min(best[key], time.perf_counter() - t0)
    return best


def time_models(a, nets, x, make_run) -> dict:
    """Seconds per network for every model: best of ``--repeat`` per network, mean over networks."""
    per_net = [best_times(a, {f"{d}/{n}": make_run(net, seed, d, n) for d, n in MODELS})
               for seed, net in enumerate(nets)]
    return {key: float(np.mean([t[key] for t in per_net])) for key in per_net[0]}


def size_times(a, nets) -> dict:
    """Seconds per network for ||W_i||_2 of every layer: ARPACK (pipeline.network.spectral_norm)
    against the converged Lanczos of pipeline.noise.matrix_norm (same 1e-6 tolerance)."""
    runs = {"arpack": lambda net: [spectral_norm(w) for w in net.weights],
            "lanczos": lambda net: [matrix_norm(w, "spectral") for w in net.weights]}
    per_net = [best_times(a, {k: (lambda f=f, net=net: f(net)) for k, f in runs.items()}) for net in nets]
    return {key: float(np.mean([t[key] for t in per_net])) for key in runs}


def main(a) -> dict:
    spec = make_spec(a)
    x = make_inputs(spec)[:a.n]
    x = x[0] if a.n == 1 else x
    takes_dtype = "dtype" in inspect.signature(pre_activation_noise).parameters
    dtype_kw = {"dtype": np.dtype(a.dtype).type} if takes_dtype else {}
    if a.dtype != "float64" and not takes_dtype:
        sys.exit("this pre_activation_noise has no dtype keyword: run with --dtype float64")
    with threadpool_limits(limits=a.threads, user_api="blas"):
        info = machine_info(a.threads)
        nets = [build_network(spec, a.L, a.m, seed) for seed in range(a.seeds)]
        for dist, norm in MODELS:  # warm up: imports, ARPACK, allocator
            measure_network(nets[0], x, np.array([a.ratio]), (1,), 2, dist, norm, noise_streams(0),
                            with_bound=False, with_linear=False)
        kernel = time_models(a, nets, x, lambda net, s, d, n: kernel_run(a, net, x, s, d, n))
        sampler = time_models(a, nets, x, lambda net, s, d, n: sampler_run(a, net, x, s, d, n, dtype_kw))
        sizes = size_times(a, nets)
    info["load_average_after"] = list(os.getloadavg())
    base_k, base_s = kernel["gaussian/frobenius"], sampler["gaussian/frobenius"]
    return {
        "machine": info,
        "work": {"L": a.L, "m": a.m, "d": a.d, "k": a.k, "inputs": a.n, "draws_per_layer": a.draws,
                 "ratio": a.ratio, "layers": "all", "networks": a.seeds, "repeats": a.repeat,
                 "kernel_with_bound": a.full, "kernel_with_linear": a.full,
                 "sampler_dtype": a.dtype if takes_dtype else "float64 (no dtype keyword)"},
        "kernel_seconds_per_network": kernel,
        "kernel_factor_over_fast_path": {k: v / base_k for k, v in kernel.items()},
        "sampler_seconds_per_network": sampler,
        "sampler_factor_over_fast_path": {k: v / base_s for k, v in sampler.items()},
        "spectral_sizes_seconds_per_network": sizes,
        "target_kernel_factor_at_most_5": {k: v / base_k <= 5 for k, v in kernel.items()},
    }


def report(r: dict) -> str:
    m, w = r["machine"], r["work"]
    flags = ("with the bound and the linear answer" if w["kernel_with_bound"]
             else "with_bound=False, with_linear=False (no bound, no linear answer)")
    lines = [
        f"machine: {m['cpu']}, {m['cpu_count']} CPUs; numpy {m['numpy']}; BLAS {m['blas']}; "
        f"{m['blas_threads']} BLAS thread(s); load average {m['load_average']} before, "
        f"{m['load_average_after']} after",
        f"work:    L={w['L']} m={w['m']} d={w['d']} k={w['k']}, {w['inputs']} input(s), every layer, "
        f"{w['draws_per_layer']} draws per layer, r={w['ratio']}; {w['networks']} network(s), "
        f"best of {w['repeats']} runs each",
        "",
        f"{'model':<22}{'(a) kernel s/net':>18}{'x fast':>9}{'(b) sampler s/net':>20}{'x fast':>9}",
    ]
    for key, k in r["kernel_seconds_per_network"].items():
        s = r["sampler_seconds_per_network"][key]
        lines.append(f"{key:<22}{k:>18.4f}{r['kernel_factor_over_fast_path'][key]:>9.2f}"
                     f"{s:>20.4f}{r['sampler_factor_over_fast_path'][key]:>9.2f}")
    lines += [
        "",
        f"(a) measure_network {flags}; includes ||W_i|| in the noise's norm per layer",
        "||W_i||_2 of every layer, s/net: ARPACK (network.spectral_norm) "
        f"{r['spectral_sizes_seconds_per_network']['arpack']:.4f}, Lanczos (noise.matrix_norm) "
        f"{r['spectral_sizes_seconds_per_network']['lanczos']:.4f}",
        f"(b) pre_activation_noise alone at every layer, ||W_i|| given; sampler dtype {w['sampler_dtype']}",
        "target: every model's (a) at most 5x gaussian/frobenius: "
        + ("met" if all(r["target_kernel_factor_at_most_5"].values()) else "NOT met"),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    res = main(ARGS)
    print(json.dumps(res, indent=2) if ARGS.json else report(res))
