"""The ``nnsweep`` command line: each command parses its options and calls the API."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import click

from .cliopts import dumps
from .cliopts import storage_option as _storage_option
from .errors import ClusterLost, Interrupted, UserError
from .schema import TOGETHER, layer_name


class _Cli(click.Group):
    """Reports a UserError as one paragraph on stderr with exit status 2, no traceback;
    a lost cluster with exit status 1; an interrupted run as one line with 128 + the signal."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(2)
        except ClusterLost as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(1)
        except Interrupted as e:  # SIGINT / SIGTERM: one line, exit 130 / 143
            click.echo(str(e), err=True)
            ctx.exit(e.exit_status)
        except KeyboardInterrupt:  # Ctrl-C outside a run: nothing to resume
            click.echo("interrupted (SIGINT)", err=True)
            ctx.exit(130)


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


class _Ratios(click.ParamType):
    """One ratio or several, comma-separated: 0.01,0.1,0.3."""

    name = "RATIO[,RATIO...]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        return tuple(_Ratio().convert(v.strip(), param, ctx) for v in str(value).split(","))


class _Layer(click.ParamType):
    """'all', 'together', a layer i >= 1, or several of these comma-separated (returned as a list)."""

    name = "LAYER|all|together"

    def convert(self, value, param, ctx):
        if isinstance(value, list) or value == "all":
            return value
        out = []
        for part in str(value).split(","):
            part = part.strip()
            if part in ("all", "together"):
                out.append(part)
                continue
            try:
                i = int(part)
            except (TypeError, ValueError):
                i = 0
            if i < 1:
                self.fail(f"{part!r} is not allowed; expected 'all', 'together' (noise in every layer at once) or "
                          "an integer layer >= 1, or several of these comma-separated (all,together).", param, ctx)
            out.append(i)
        return out


@click.group(cls=_Cli)
@click.version_option(package_name="nnsweep")
def main():
    """Measure how weight noise in one layer of a ReLU network changes its output.

    Start with `nnsweep estimate` for one configuration, or `nnsweep run
    sweeps/quickstart.yaml` for a sweep on the embedded local cluster.
    """


# spec fields as `nnsweep estimate` names them, so its errors speak in options
ESTIMATE_OPTIONS = {
    "grid.L": "--L", "grid.m": "--m", "network.input_dim": "--d", "network.output_dim": "--k",
    "grid.ratio": "--ratio", "grid.layer": "--layer", "grid.seeds": "--seeds", "noise.draws": "--draws",
    "network.init": "--init", "network.bias_std": "--bias-std", "noise.distribution": "--noise",
    "noise.norm": "--norm", "random_seed": "--random-seed", "network.input": "--input",
    "network.n_inputs": "--n-inputs", "network.labels": "--labels", "compute.precision": "--precision",
    "network.activation": "--activation", "network.layer_order": "--layer-order",
    "network.clean_outputs": "--clean-outputs", "network.clean_outputs_tolerance": "--clean-outputs-tolerance",
    "noise.biases": "--biases",
}


def reading_lines(spec) -> list[str]:
    """How every network file of ``spec`` was read (at most 3 shown, then a count), for stderr."""
    read = spec.network.read
    lines = [f"network: {r.text()}" for r in read[:3]]
    if len(read) > 3:
        lines.append(f"network: ... and {len(read) - 3} more files, read alike (`nnsweep status` lists them all)")
    return lines


@main.command()
@click.option("--L", "L", type=click.IntRange(min=1), default=None,
              help="Number of weight layers (L - 1 hidden ReLU layers and a linear read-out). "
                   "Default: 8, or read from a network file.")
@click.option("--m", "m", type=click.IntRange(min=1), default=None,
              help="Neurons per hidden layer. Default: 256, or read from a network file.")
@click.option("--d", "d", type=click.IntRange(min=1), default=None,
              help="Input dimension. Default: 784, or read from a network file.")
@click.option("--k", "k", type=click.IntRange(min=1), default=None,
              help="Output dimension. Default: 10, or read from a network file.")
@click.option("--ratio", "ratios", type=_Ratios(), multiple=True,
              help="Noise ratio r = ||eta|| / ||W_i||; several as 0.01,0.1,0.3 or repeated --ratio. [default: 0.1]")
@click.option("--layer", type=_Layer(), default="all", show_default=True,
              help="Perturbed layer i (1..L), 'all' for one row per layer, 'together' for noise in every layer at "
                   "once (each W_j its own eta_j), or several comma-separated: all,together.")
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help="Number of networks (independent weight draws). Default: 32; 1 with a network file.")
@click.option("--draws", type=click.IntRange(min=1), default=64, show_default=True,
              help="Noise draws per network and layer; each draw perturbs every input with the same eta.")
@click.option("--init", default="he", show_default=True,
              help="he, xavier, orthogonal, or a network file (.npz or .safetensors, e.g. a PyTorch "
                   "state dict of Linear layers); L, m, d and k are then read from it.")
@click.option("--input", "input_", default="gaussian", show_default=True,
              help="gaussian, or a .npy of inputs x* of shape (n, d) or (d,), e.g. a test set.")
@click.option("--n-inputs", type=click.IntRange(min=1), default=None,
              help="Number of Gaussian inputs (with --input gaussian). [default: 1]")
@click.option("--labels", default=None, help="A .npy of n class indices: adds accuracy to the output.")
@click.option("--bias-std", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Standard deviation of the biases (0: no biases).")
@click.option("--noise", type=click.Choice(["gaussian", "rademacher", "sphere"]), default="gaussian",
              show_default=True, help="Noise distribution.")
@click.option("--norm", type=click.Choice(["frobenius", "spectral"]), default="frobenius",
              show_default=True, help="The norm in which ||eta|| = r ||W_i||.")
@click.option("--random-seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Root entropy of every random stream.")
@click.option("--precision", type=click.Choice(["float64", "float32"]), default="float64", show_default=True,
              help="Precision of weights, noise and matrix products; float32 is about twice as fast and "
                   "changes ||v - v*|| by less than 1e-3 relative (norms and sums stay float64).")
@click.option("--activation", default=None,
              help="Activation of every hidden layer: relu, leaky_relu(ALPHA), tanh, sigmoid, gelu, gelu_tanh, "
                   "silu; or one per hidden layer, comma-separated. Default: relu, or what an ONNX file applies "
                   "(a state dict does not say: give it).")
@click.option("--layer-order", default=None,
              help="A state dict's module names in forward order, comma-separated (e.g. stem,body,top), "
                   "where the file does not say it.")
@click.option("--clean-outputs", default=None,
              help="A .npy of your own network's outputs on --input, shape (n, k) (model(x).detach().numpy()): "
                   "compared with the tool's clean pass before any work; a mismatch is an error.")
@click.option("--clean-outputs-tolerance", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Allowed difference, relative to the largest output. [default: 1e-4]")
@click.option("--biases", is_flag=True,
              help="With --layer together: perturb every bias b_j too, by its own eta of norm r ||b_j||.")
@click.option("--control-variate/--no-control-variate", default=True, show_default=True,
              help="For one network, estimate E R and the prediction-change rate with the network's first-order "
                   "change as control variate (extra cheap draws of it; a narrower interval at small r).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table (--format json).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default=None,
              help="table, csv (one row per cell, columns named as the store's variables) or json (the summary; "
                   "with --rows, the rows as records). [default: table]")
@click.option("--rows", type=click.Choice(["cell", "draw"]), default=None,
              help="One row per cell (ratio, layer) or per noise draw, columns named as the store's variables, "
                   "for pandas or seaborn. [default with --format csv: cell]")
@click.option("--find-ratio", "find", default=None, metavar="CRITERION[=AMOUNT]",
              help="Find the largest ratio whose accuracy drop (accuracy-drop=0.01, needs --labels) or share of "
                   "changed predictions (pred-change=0.05) stays within the amount, by bisection in log r, "
                   "for one --layer; --draws is each level's first number of draws.")
@click.option("--find-precision", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), default=None,
              help="With --find-ratio: the largest half-width of each level's 95% interval; draws double until "
                   "it is reached. [default: a quarter of the amount]")
def estimate(L, m, d, k, ratios, layer, seeds, draws, init, input_, n_inputs, labels, bias_std, noise, norm,
             random_seed, precision, activation, layer_order, clean_outputs, clean_outputs_tolerance, biases,
             control_variate, as_json, fmt, rows, find, find_precision):
    """Estimate E||v - v*|| for one configuration, with a 95% CI.

    The CI is over networks, or over noise draws when there is one network
    (a network file, or --seeds 1); for one network E R and its CI are the
    control-variate estimate (the network's first-order change as control,
    docs/linear-answer.md), with plain Monte Carlo's printed below.

    Examples:

      nnsweep estimate --L 8 --m 256 --d 784 --k 10 --ratio 0.1 --layer 3

      nnsweep estimate --init model.safetensors --input x_test.npy --labels y_test.npy --ratio 0.01,0.1
    """
    from .estimation import estimate as run_estimate
    from .spec import INITS, Spec

    if as_json and fmt not in (None, "json"):
        raise UserError(f"--json and --format {fmt} ask for two formats; give one (--json is --format json).")
    fmt = "json" if as_json else fmt or "table"
    if find and (ratios or layer == "all"):
        raise UserError("--find-ratio searches the ratio for one layer: give --layer I (1..L) and no --ratio.")
    if find and (rows or fmt == "csv"):
        raise UserError("--find-ratio prints its answer as a table or JSON; leave out --rows and --format csv.")
    ratios = sorted({r for group in ratios for r in group}) or [0.1]
    file_net = init not in INITS
    given = {key: v for key, v in (("L", L), ("m", m), ("seeds", seeds)) if v is not None}
    dims = {key: v for key, v in (("input_dim", d), ("output_dim", k)) if v is not None}
    if not file_net:
        given = {"L": 8, "m": 256, "seeds": 32, **given}
        dims = {"input_dim": 784, "output_dim": 10, **dims}
        _check_layers(layer, given["L"])
    network = {**dims, "init": init, "bias_std": bias_std, "input": input_, "labels": labels}
    if n_inputs is not None:
        network["n_inputs"] = n_inputs
    if activation is not None:
        names = [a.strip() for a in re.split(r",(?![^()]*\))", activation)]  # commas outside leaky_relu(...)
        network["activation"] = names[0] if len(names) == 1 else names
    for key, value in (("layer_order", layer_order), ("clean_outputs", clean_outputs),
                       ("clean_outputs_tolerance", clean_outputs_tolerance)):
        if value is not None:
            network[key] = value
    spec = Spec.from_dict({
        "network": network,
        "grid": {**given, "ratio": ratios, "layer": layer},
        "noise": {"distribution": noise, "norm": norm, "draws": draws, **({"biases": True} if biases else {})},
        "random_seed": random_seed,
        "compute": {"precision": precision},
        "execution": {"seeds_per_block": given.get("seeds", 1)},  # estimate measures every network in one block
    }, source="nnsweep estimate", names=ESTIMATE_OPTIONS)
    _check_layers(layer, spec.grid.L[0])
    from .sizes import check_fits, machine_memory

    check_fits(spec, machine_memory(), "this machine")
    import numpy as np

    for line in reading_lines(spec):
        click.echo(line, err=True)
    if find:
        from .tolerance import find_ratio, lines, parse_criterion

        found = find_ratio(spec, *parse_criterion(find), half_width=find_precision)
        click.echo(dumps(found, indent=2) if fmt == "json" else "\n".join(lines(found)))
        return
    if rows or fmt == "csv":  # the tidy rows, from the results as a store would hold them
        from .api import results
        from .tidy import render, table

        click.echo(render(table(results(spec), rows or "cell"), fmt))
        return
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, in one line
        result = run_estimate(spec, control_variate)
    if fmt == "json":
        click.echo(dumps(result, indent=2))
        return
    for line in _estimate_table(spec, result):
        click.echo(line)


def _check_layers(layer, L: int) -> None:
    """Refuse a layer beyond the network's depth, in the option's words."""
    for i in [] if layer == "all" else layer:
        if isinstance(i, int) and i > L:
            raise click.BadParameter(f"{i} is beyond the network's depth; expected 'all', 'together' or 1..{L}.",
                                     param_hint="'--layer'")


def _pooled_layers(layers) -> str:
    """What the pooled row of several layers pools: the single layers (never the together cells)."""
    single = [i for i in layers if i != TOGETHER]
    return "all" if len(single) > 1 else layer_name(single[0])


def _estimate_table(spec, result: dict) -> list[str]:
    """The estimate as a table: one row per (ratio, layer), then the pooled row."""
    net, g = spec.network, spec.grid
    what = (f"1 network x {spec.noise.draws} draws" if result["n_networks"] == 1 and net.one_network
            else f"{result['n_networks']} network{'s' if result['n_networks'] > 1 else ''} x {spec.noise.draws} draws")
    lines = [f"L={g.L[0]} m={g.m[0]} d={net.input_dim} k={net.output_dim} r={','.join(map(str, g.ratio))} "
             f"init={Path(net.init).name} noise={spec.noise.distribution}/{spec.noise.norm}: {what} x "
             f"{net.n_inputs} input{'s' if net.n_inputs > 1 else ''}; 95% CI over {result['ci95_over']}"]
    random_init = "theory_first_order" in result  # random-network theory: random ReLU networks only
    cols = [("E|v-v*|", "mean_abs_change", 11), ("E R", "mean_rel_change", 9), ("median R", "median_rel_change", 9)]
    if random_init:
        cols.append(("theory R", None, 9))
    cols += [("bound", "bound", 10), ("pred chg", "pred_change_rate", 9)]
    if "accuracy" in result:
        cols.append(("accuracy", "accuracy", 9))
    lines.append(f"{'ratio':>7} {'layer':>8} " + " ".join(f"{h:>{w}}" for h, _, w in cols[:2])
                 + f" {'95% CI':>21} " + " ".join(f"{h:>{w}}" for h, _, w in cols[2:]))
    by_ratio = result.get("by_ratio", {repr(g.ratio[0]): result})
    rows = []
    for r, sr in by_ratio.items():
        rows += [(r, i, s) for i, s in sr.get("by_layer", {}).items()]
        rows.append((r, _pooled_layers(g.layer) if "by_layer" in sr else layer_name(g.layer[0]), sr))
    if len(by_ratio) > 1:
        rows.append(("all", _pooled_layers(g.layer) if len(g.layer) > 1 else layer_name(g.layer[0]), result))
    for r, i, s in rows:
        s = {**s, **(s.get("control_variate") or {})} if s.get("printed") == "control_variate" else s
        lo, hi = s["ci95"] or (float("nan"), float("nan"))
        vals = []
        for _, key, w in cols:
            v = s.get(key) if key else s.get("theory_attenuation", s.get("theory_first_order"))
            vals.append(_cell(v, w))
        lines.append(f"{r:>7} {i:>8} " + " ".join(vals[:2]) + f" [{_cell(lo, 9)}, {_cell(hi, 9)}] "
                     + " ".join(vals[2:]))
    lines.append("R = ||v - v*|| / ||v||; pred chg: share of (input, draw) whose predicted class changed; "
                 "bound: worst-case Lipschitz bound on ||v - v*||"
                 + ("; theory R: infinite-width arc-cosine prediction for random networks." if random_init else "."))
    lines += _printed_note(result)
    if any(not isinstance(s.get(k), (int, float)) or not math.isfinite(s[k]) for _, _, s in rows
           for k in ("mean_abs_change", "mean_rel_change")):
        lines.append("-: the change is not finite: the perturbed outputs overflow float64 (about 1.8e308); "
                     "lower --ratio or the weights' scale.")
    return lines


def _printed_note(result: dict) -> list[str]:
    """Which estimate of E R the table shows, and why (docs/linear-answer.md)."""
    if result.get("printed") != "control_variate":
        return []
    cv, plain = result["control_variate"], result["plain"]
    lo, hi = plain["ci95"] or (float("nan"), float("nan"))
    together = [] if "together" not in result.get("by_layer", {}) else [
        "The together rows (noise in every layer at once) are plain Monte Carlo: no single layer's first-order "
        "change serves as their control variate."]
    return together + [f"E R and its 95% CI: the control-variate estimate, {result['printed_why']}.",
            f"Plain Monte Carlo on the same draws (all cells): {_cell(plain['mean_rel_change'], 0).strip()} "
            f"[{_cell(lo, 0).strip()}, {_cell(hi, 0).strip()}], an interval {_cell(cv['width_ratio'], 0).strip()}x "
            "as wide; both in --json."] + _pred_note(plain, cv)


def _pred_note(plain: dict, cv: dict) -> list[str]:
    """The prediction-change rate of all cells with the first-order crossing as control, when it has one."""
    if cv.get("pred_change_ci95") is None or plain.get("pred_change_ci95") is None:
        return []
    (lo, hi), (clo, chi) = plain["pred_change_ci95"], cv["pred_change_ci95"]
    return [f"Prediction changes (all cells): {_cell(cv['pred_change_rate'], 0).strip()} "
            f"[{_cell(clo, 0).strip()}, {_cell(chi, 0).strip()}] with the first-order crossing as control variate; "
            f"plain [{_cell(lo, 0).strip()}, {_cell(hi, 0).strip()}]."]


def _cell(x: float | None, width: int) -> str:
    """A number for the estimate table; 'overflow' for an infinity, '-' for an undefined value."""
    if x is None or isinstance(x, float) and math.isnan(x):
        return f"{'-':>{width}}"
    return f"{'overflow':>{width}}" if math.isinf(x) else f"{x:{width}.4g}"


@main.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--store", "store", type=str, default=None,
              help="Results store: a local path or an fsspec URL (s3://bucket/x.zarr, gcs://..., with "
                   "--storage-option). Default: results/<spec name>.zarr.")
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
    from .clusterconfig import exposure, load_cluster_config
    from .execute import quiet_dask_logs
    from .execute import run as run_sweep
    from .sizes import check_fits, machine_memory, sizes

    if not verbose:  # our own summary reports failures; Dask's reconnect tracebacks would bury it
        quiet_dask_logs()
    from .spec import load_spec

    spec = load_spec(spec_path)  # refuses a grid beyond the size limits
    for line in reading_lines(spec):
        click.echo(line, err=True)
    cluster = load_cluster_config(cluster_file) if cluster_file else None
    warning = exposure(cluster) if cluster else None
    if warning:
        click.echo(warning, err=True)
    if seeds_per_block is not None:
        spec = spec.with_execution(seeds_per_block=seeds_per_block)
    if not scheduler and not cluster:  # the embedded cluster splits this machine's memory between its workers
        n = workers or os.cpu_count() or 1
        check_fits(spec, machine_memory() / n, f"each of the {n} local workers")
    click.echo(f"sweep: {sizes(spec)}", err=True)
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
        click.echo(dumps(s, indent=2))
        return
    g = s["grid"]
    click.echo(f"store:     {s['store']}  (spec {s['name'] or '-'}, hash {s['spec_hash'][:12]})")
    click.echo(f"blocks:    {s['blocks_done']} of {s['blocks_total']} done "
               f"({s['seeds_per_block']} seeds per block, {s['compute_seconds']:.1f} s of compute)")
    layers = "[" + ", ".join(layer_name(i) for i in g["layer"]) + "]"
    click.echo(f"grid:      L={g['L']} m={g['m']} ratio={g['ratio']} layer={layers} "
               f"seeds={len(g['seeds'])}")
    n, z = s["network"], s["noise"]
    click.echo(f"network:   d={n['input_dim']} k={n['output_dim']} init={n['init']} bias_std={n['bias_std']} "
               f"norm_bound={n['weight_norm_bound']} input={n['input']} ({n['n_inputs']} inputs) "
               f"labels={n['labels']}")
    for r in n.get("read", []):  # how each network file was read (stores made before 0.4 do not say)
        click.echo(f"read:      {r['path']} ({r['format']}): widths {'-'.join(map(str, r['widths']))}, "
                   f"activations from {r['activation_source']}")
        for line in r["lines"]:
            click.echo(f"             {line}")
    biases = ", biases perturbed too (together cells)" if z.get("biases") else ""
    click.echo(f"noise:     {z['distribution']}, {z['norm']} norm, {z['draws']} draws{biases}; "
               f"random_seed={s['random_seed']}")
    click.echo(f"created:   {s['created']} with " + ", ".join(f"{k} {v}" for k, v in s["versions"].items()))
    for line in _history_lines(s):
        click.echo(line)


def _history_lines(s: dict) -> list[str]:
    """A grown store's history: the spec it was created from, then each growth in place."""
    history = s["history"]
    if not history:
        return []
    hashes = [h["spec_hash"] for h in history] + [s["spec_hash"]]
    lines = [f"history:   created {s['created']} from spec {hashes[0][:12]}"]
    for h, after in zip(history, hashes[1:]):
        grew = ", ".join(f"{field} {n} -> {m} values" for field, (n, m) in h["grown"].items())
        lines.append(f"           grown {h['time']}: {grew} (spec {after[:12]})")
    return lines


@main.command()
@click.argument("store", type=str)
@click.option("--sel", multiple=True, metavar="DIM=VALUE",
              help="Select a coordinate value; repeat for several (e.g. --sel ratio=0.1 --sel L=4).")
@click.option("--var", default="rel_change", show_default=True,
              help="Variable: rel_change, delta_norm, pred_changed, accuracy, hidden_flip_fraction, bound, output_norm, ...")
@click.option("--reduce", type=click.Choice(["mean", "median", "std", "min", "max", "count"]), default=None,
              help="Reduce over --over (default: over seed, input and draw, those the variable has).")
@click.option("--over", default="", metavar="DIMS", help="Comma-separated dimensions to reduce over.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True)
@click.option("--rows", type=click.Choice(["cell", "draw"]), default=None,
              help="Every variable as one row per cell (L, m, ratio, layer) or per noise draw, columns named as "
                   "the store's variables (means over the other dimensions), for pandas or seaborn.")
@_storage_option
def query(store, sel, var, reduce, over, fmt, rows, storage_options):
    """Select and reduce results, e.g. the mean relative change by L and m at r = 0.1:

    nnsweep query STORE --sel ratio=0.1 --reduce mean --over layer,seed,input,draw

    or every variable, one row per cell, as CSV: nnsweep query STORE --rows cell --format csv
    """
    from .query import query as run_query
    from .query import to_text

    from .store import as_location

    dims = tuple(d.strip() for d in over.split(",") if d.strip())
    loc = as_location(store, dict(storage_options))
    if rows:
        from .query import tidy_rows
        from .tidy import render

        if reduce or dims:
            raise UserError("--rows gives every variable already averaged per row; leave out --reduce and --over.")
        click.echo(render(tidy_rows(loc, sel=sel, rows=rows), fmt))
        return
    click.echo(to_text(run_query(loc, sel=sel, var=var, reduce=reduce, over=dims), fmt))


@main.command()
@click.argument("store", type=str)
@click.option("--repair", is_flag=True,
              help="Delete the chunks of damaged blocks and clear their done mark, so `nnsweep run` recomputes them.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@_storage_option
def verify(store, repair, as_json, progress, storage_options):
    """Check every done block of STORE: chunks present, checksums, finite values.

    Exit status 0 if nothing is damaged (or everything damaged was repaired), 1 if damage remains.

    Example: nnsweep verify results/quickstart.zarr --repair
    """
    from .store import as_location
    from .verify import describe, repair as repair_blocks, scan

    loc = as_location(store, dict(storage_options))
    report = scan(loc, progress=progress)
    repaired = repair_blocks(loc, report) if repair and report.damage else []
    if as_json:
        click.echo(dumps({**report.to_dict(), "repaired": len(repaired)}, indent=2))
    else:
        click.echo(f"{report.store}: {report.blocks_done} of {report.blocks_total} blocks done and checked; "
                   + (describe(report) if report.damage else "no damage found."))
        if not report.checksums:
            click.echo("note: this store's chunks carry no checksums (made by an older nnsweep): damage inside a "
                       "chunk is found only when it makes values non-finite.")
        if repaired:
            click.echo(f"repaired: {len(repaired)} blocks cleared; `nnsweep run SPEC --store {store}` computes "
                       "them again.")
        elif report.damage:
            click.echo(f"run `nnsweep verify {store} --repair` to clear them, then `nnsweep run` to recompute.")
    if report.damage and not repaired:
        raise SystemExit(1)


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
