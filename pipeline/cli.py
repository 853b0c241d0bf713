"""The ``nnsweep`` command line: each command parses its options and calls the API."""

from __future__ import annotations

import json
import math

import click

from .errors import UserError


class _Cli(click.Group):
    """Reports a UserError as one paragraph on stderr with exit status 2, no traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(2)


class _Ratio(click.ParamType):
    name = "RATIO"

    def convert(self, value, param, ctx):
        try:
            r = float(value)
        except (TypeError, ValueError):
            r = math.nan
        if not math.isfinite(r) or r <= 0:
            self.fail(f"{value!r} is not allowed; expected a finite number > 0, e.g. 0.1.", param, ctx)
        return r


class _Layer(click.ParamType):
    name = "LAYER|all"

    def convert(self, value, param, ctx):
        if value == "all":
            return value
        try:
            i = int(value)
        except (TypeError, ValueError):
            i = 0
        if i < 1:
            self.fail(f"{value!r} is not allowed; expected 'all' or an integer layer >= 1.", param, ctx)
        return i


@click.group(cls=_Cli)
@click.version_option(package_name="nnsweep")
def main():
    """Measure how weight noise in one layer of a ReLU network changes its output.

    Start with `nnsweep estimate` for one configuration, or `nnsweep run
    sweeps/quickstart.yaml` for a sweep on the embedded local cluster.
    """


@main.command()
@click.option("--L", "L", type=click.IntRange(min=1), default=8, show_default=True,
              help="Number of weight layers (L - 1 hidden ReLU layers and a linear read-out).")
@click.option("--m", "m", type=click.IntRange(min=1), default=256, show_default=True,
              help="Neurons per hidden layer.")
@click.option("--d", "d", type=click.IntRange(min=1), default=784, show_default=True, help="Input dimension.")
@click.option("--k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Output dimension.")
@click.option("--ratio", type=_Ratio(), default=0.1, show_default=True, help="Noise ratio r = ||eta|| / ||W_i||.")
@click.option("--layer", type=_Layer(), default="all", show_default=True,
              help="Perturbed layer i (1..L), or 'all' for one row per layer.")
@click.option("--seeds", type=click.IntRange(min=1), default=32, show_default=True,
              help="Number of networks (independent weight draws).")
@click.option("--draws", type=click.IntRange(min=1), default=64, show_default=True,
              help="Noise draws per network and layer.")
@click.option("--init", default="he", show_default=True,
              help="he, xavier, orthogonal, or the path of an .npz file of weights W1..WL.")
@click.option("--bias-std", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Standard deviation of the biases (0: no biases).")
@click.option("--noise", type=click.Choice(["gaussian", "rademacher", "sphere"]), default="gaussian",
              show_default=True, help="Noise distribution.")
@click.option("--norm", type=click.Choice(["frobenius", "spectral"]), default="frobenius",
              show_default=True, help="The norm in which ||eta|| = r ||W_i||.")
@click.option("--random-seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Root entropy of every random stream.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def estimate(L, m, d, k, ratio, layer, seeds, draws, init, bias_std, noise, norm, random_seed, as_json):
    """Estimate E||v - v*|| for one configuration, with a 95% CI over networks.

    Example: nnsweep estimate --L 8 --m 256 --d 784 --k 10 --ratio 0.1 --layer 3
    """
    from .estimate import estimate as run_estimate
    from .spec import Spec

    if layer != "all" and layer > L:
        raise click.BadParameter(f"{layer} is beyond the network's depth; expected 'all' or 1..{L}.",
                                 param_hint="'--layer'")
    spec = Spec.from_dict({
        "network": {"input_dim": d, "output_dim": k, "init": init, "bias_std": bias_std},
        "grid": {"L": [L], "m": [m], "ratio": [ratio], "layer": layer, "seeds": seeds},
        "noise": {"distribution": noise, "norm": norm, "draws": draws},
        "random_seed": random_seed,
    }, source="nnsweep estimate")
    result = run_estimate(spec)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"L={L} m={m} d={d} k={k} r={ratio} init={init} noise={noise}/{norm}: "
               f"{seeds} networks x {draws} draws")
    header = f"{'layer':>6} {'E|v-v*|':>11} {'E R':>9} {'95% CI':>21} {'median R':>9} " \
             f"{'theory R':>9} {'bound':>10}"
    click.echo(header)
    rows = [(str(i), s) for i, s in result.get("by_layer", {}).items()]
    rows.append(("all" if rows else str(layer), result))
    for name, s in rows:
        lo, hi = s["ci95"]
        theory = s.get("theory_attenuation", s["theory_first_order"])
        click.echo(f"{name:>6} {s['mean_abs_change']:11.4g} {s['mean_rel_change']:9.4g} "
                   f"[{lo:9.4g}, {hi:9.4g}] {s['median_rel_change']:9.4g} {theory:9.4g} {s['bound']:10.4g}")
    click.echo("R = ||v - v*|| / ||v||; theory R: infinite-width arc-cosine prediction (first order: r); "
               "bound: worst-case Lipschitz bound on ||v - v*||.")
