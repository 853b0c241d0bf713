"""The ``nnsweep`` command line: each command parses its options and calls the API."""

from __future__ import annotations

import json
import math

import click

from .cliopts import storage_option as _storage_option
from .errors import ClusterLost, UserError


class _Cli(click.Group):
    """Reports a UserError as one paragraph on stderr with exit status 2, no traceback;
    a lost cluster with exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(2)
        except ClusterLost as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(1)


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
    from .estimation import estimate as run_estimate
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
        lo, hi = s["ci95"] or (float("nan"), float("nan"))
        theory = s.get("theory_attenuation", s["theory_first_order"])
        click.echo(f"{name:>6} {s['mean_abs_change']:11.4g} {s['mean_rel_change']:9.4g} "
                   f"[{lo:9.4g}, {hi:9.4g}] {s['median_rel_change']:9.4g} {theory:9.4g} {s['bound']:10.4g}")
    click.echo("R = ||v - v*|| / ||v||; theory R: infinite-width arc-cosine prediction (first order: r); "
               "bound: worst-case Lipschitz bound on ||v - v*||.")


@main.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--store", "store", type=str, default=None,
              help="Results store (a directory). Default: results/<spec name>.zarr.")
@click.option("--scheduler", type=str, default=None,
              help="Address of a running Dask scheduler (tcp://HOST:PORT). Default: an embedded local cluster.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes of the local cluster. Default: one per core.")
@click.option("--seeds-per-block", type=click.IntRange(min=1), default=None,
              help="Networks per task (the store's chunk along seed); layout only, never a number.")
@click.option("--cluster", "cluster_file", type=str, default=None,
              help="A cluster file (cluster/slurm.yaml, pbs.yaml, kubernetes.yaml, local.yaml) to start and run on.")
@_storage_option
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@click.option("-v", "--verbose", is_flag=True, help="Show Dask's own log messages (reconnects, worker events).")
def run(spec_path, store, scheduler, workers, seeds_per_block, cluster_file, storage_options, progress, verbose):
    """Run the sweep in SPEC, or resume it: blocks already done are skipped.

    Example: nnsweep run sweeps/quickstart.yaml
    """
    import logging

    from .clusterconfig import load_cluster_config

    if not verbose:  # our own summary reports failures; Dask's reconnect tracebacks would bury it
        import distributed  # noqa: F401  (configures its loggers, which we then quieten)

        for name in [n for n in logging.root.manager.loggerDict if n.startswith("distributed")] + ["distributed"]:
            logging.getLogger(name).setLevel(logging.CRITICAL)
    from .execute import run as run_sweep
    from .spec import load_spec

    spec = load_spec(spec_path)
    cluster = load_cluster_config(cluster_file) if cluster_file else None
    summary = run_sweep(spec, store=store, scheduler=scheduler, workers=workers,
                        seeds_per_block=seeds_per_block, progress=progress, cluster=cluster,
                        storage_options=dict(storage_options) if storage_options else None)
    click.echo(str(summary))
    if not summary.ok:
        raise SystemExit(1)


@main.command()
@click.argument("store", type=str)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_storage_option
def status(store, as_json, storage_options):
    """Show a store's spec, blocks done of total, and provenance."""
    from .query import status as get_status
    from .store import as_location

    s = get_status(as_location(store, dict(storage_options)))
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    g = s["grid"]
    click.echo(f"store:     {s['store']}  (spec {s['name'] or '-'}, hash {s['spec_hash'][:12]})")
    click.echo(f"blocks:    {s['blocks_done']} of {s['blocks_total']} done "
               f"({s['seeds_per_block']} seeds per block, {s['compute_seconds']:.1f} s of compute)")
    click.echo(f"grid:      L={g['L']} m={g['m']} ratio={g['ratio']} layer={g['layer']} "
               f"seeds={len(g['seeds'])}")
    n, z = s["network"], s["noise"]
    click.echo(f"network:   d={n['input_dim']} k={n['output_dim']} init={n['init']} bias_std={n['bias_std']} "
               f"norm_bound={n['weight_norm_bound']} input={n['input']}")
    click.echo(f"noise:     {z['distribution']}, {z['norm']} norm, {z['draws']} draws; "
               f"random_seed={s['random_seed']}")
    click.echo(f"created:   {s['created']} with " + ", ".join(f"{k} {v}" for k, v in s["versions"].items()))


@main.command()
@click.argument("store", type=str)
@click.option("--sel", multiple=True, metavar="DIM=VALUE",
              help="Select a coordinate value; repeat for several (e.g. --sel ratio=0.1 --sel L=4).")
@click.option("--var", default="rel_change", show_default=True,
              help="Variable: rel_change, delta_norm, flip_fraction, bound, output_norm, ...")
@click.option("--reduce", type=click.Choice(["mean", "median", "std", "min", "max", "count"]), default=None,
              help="Reduce over --over (default: seed and draw).")
@click.option("--over", default="", metavar="DIMS", help="Comma-separated dimensions to reduce over.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True)
@_storage_option
def query(store, sel, var, reduce, over, fmt, storage_options):
    """Select and reduce results, e.g. the mean relative change by L and m at r = 0.1:

    nnsweep query STORE --sel ratio=0.1 --reduce mean --over layer,seed,draw
    """
    from .query import query as run_query
    from .query import to_text

    from .store import as_location

    dims = tuple(d.strip() for d in over.split(",") if d.strip())
    loc = as_location(store, dict(storage_options))
    click.echo(to_text(run_query(loc, sel=sel, var=var, reduce=reduce, over=dims), fmt))


@main.group()
def cluster():
    """Inspect cluster files (cluster/*.yaml)."""


@cluster.command("show")
@click.argument("cluster_file", metavar="FILE")
def cluster_show(cluster_file):
    """Print the job script dask-jobqueue would submit for a slurm or pbs FILE.

    The scheduler is started on 127.0.0.1 only to render the script; nothing is submitted.
    """
    from .clusterconfig import load_cluster_config
    from .execute import job_script

    click.echo(job_script(load_cluster_config(cluster_file)))


def _register_analysis() -> None:
    from .analysis.commands import fit_command, report_command

    main.add_command(fit_command)
    main.add_command(report_command)


_register_analysis()
