"""The report's section on given networks: on their data, beside random networks of the same widths.

Given networks (read from files, :attr:`pipeline.analysis.recorded.Networks.given`) are fixed,
trained networks: the random-network theory does not describe them, so nothing here draws it.
Instead they are compared with random He networks of the same widths on the same inputs, measured
here. Every curve carries a 95% t-interval over its independent units: the given networks, or
the noise draws of the one network per (L, m), and the random networks of the reference.

Every number is a reduction of the store's variables over the done blocks, read through the
store's integrity check (:meth:`pipeline.analysis.summaries.Results.compute`).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import xarray as xr

from ..errors import UserError
from ..jsonout import num
from ..schema import TOGETHER
from . import plotting
from .linear import cell_mean, cell_text
from .recorded import Networks, label
from .summaries import CELL, Results, Sample, over_unit, unit_view

GIVEN_READS = ("pred_changed", "accuracy", "clean_accuracy")
MAX_PAIRS = 4  # (L, m) rows of the given plot, so that it fits a page
REFERENCE_SEEDS, REFERENCE_DRAWS = 4, 16


@dataclasses.dataclass(frozen=True)
class Given:
    """Per-unit values (dims L, m, ratio, layer, seed) of the given networks and of the random reference.

    ``units`` holds ``mean`` (E R of the unit), ``pred_change_rate`` and ``accuracy`` (NaN without
    labels); its ``seed`` axis is what ``unit_name`` says (networks, or one network's draws).
    ``random`` holds ``mean`` and ``pred_change_rate`` per random network (None if it cannot be built).
    """

    units: xr.Dataset
    random: xr.Dataset | None
    clean_accuracy: xr.DataArray  # per (L, m), mean over the networks
    unit_name: str = "networks"
    note: str = ""

    @property
    def given(self) -> xr.Dataset:
        """Cell means over the units (every unit holds the same number of inputs and draws)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # cells with layer > L
            return self.units.mean("seed")

    @property
    def random_mean(self) -> xr.Dataset | None:
        if self.random is None:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return self.random.mean("seed")


def random_reference(spec: dict, seeds: int = REFERENCE_SEEDS, draws: int = REFERENCE_DRAWS):
    """The spec of random He networks with the widths, activations, inputs, ratios and layers of a
    given-network store (a :class:`pipeline.spec.Spec`).

    Raises:
        UserError: no such random networks exist (hidden widths that differ from layer to layer, or
            activations that differ between the files), or the input file moved since the sweep.
    """
    from ..spec import Spec

    nets = Networks.from_spec(spec)
    if not nets.uniform:
        raise UserError(f"random networks of the same widths ({nets.widths_text()}) cannot be drawn: random "
                        "networks have one hidden width")
    drop = ("files", "init", "labels", "layer_order", "clean_outputs", "clean_outputs_tolerance", "read")
    net = {k: v for k, v in spec["network"].items() if k not in drop}
    per_file = {tuple(r["activations"]) for r in spec["network"].get("read") or []}
    if len(nets.activations) == 1:
        net["activation"] = nets.activations[0]
    elif len(per_file) == 1 and len(spec["grid"]["L"]) == 1:
        net["activation"] = list(next(iter(per_file)))
    else:
        raise UserError("the network files differ in their activations, so no one random network matches them")
    if net["input"] != "gaussian":
        net.pop("n_inputs")
    # the analysis leaves the cells of every layer at once out (summaries.without_together): so does the reference
    layers = [i for i in spec["grid"]["layer"] if i != TOGETHER]
    noise = {k: v for k, v in spec["noise"].items() if k != "biases"}
    return Spec.from_dict({"random_seed": spec["random_seed"], "network": {**net, "init": "he", "bias_std": 0.0},
                           "grid": {**spec["grid"], "layer": layers, "seeds": seeds},
                           "noise": {**noise, "draws": min(draws, spec["noise"]["draws"])}})


def unit_values(results: Results, sample: Sample, progress: bool = False) -> tuple[xr.Dataset, xr.DataArray]:
    """Per unit: E R (from the sample's summaries), predictions changed and accuracy; and the clean
    accuracy per (L, m). One checked pass over pred_changed, accuracy and clean_accuracy."""
    ds, mask = unit_view(results)
    keep = mask & (ds.layer <= ds.L)
    lazy = xr.Dataset({"pred_change_rate": over_unit(ds["pred_changed"]).where(keep),
                       "accuracy": over_unit(ds["accuracy"]).where(keep)})
    clean = cell_mean(results.ds["clean_accuracy"].where(results.done_mark), ("L", "m"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no labels: accuracy is NaN everywhere
        units, clean = results.compute((lazy, clean), GIVEN_READS, progress)
    return units.assign(mean=sample.net["mean"]), clean


def reference_values(ref, like: xr.Dataset) -> xr.Dataset:
    """Per random network of ``ref`` (a Spec): E R and predictions changed, dims (L, m, ratio, layer, seed)."""
    from ..measure import measure_block

    seeds = list(ref.grid.seeds)
    shape = {d: like.sizes[d] for d in CELL}
    coords = {d: like[d].values for d in CELL} | {"seed": seeds}
    mean = xr.DataArray(np.full((*shape.values(), len(seeds)), np.nan), dims=(*CELL, "seed"), coords=coords)
    rate = mean.copy()
    for L in ref.grid.L:
        for m in ref.grid.m:
            b = measure_block(ref, L, m, ref.grid.seeds)
            rel = b.delta_norm / b.output_norm[None, None, :, :, None]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # layer > L
                mean.loc[{"L": L, "m": m}] = np.nanmean(rel, axis=(3, 4))
                rate.loc[{"L": L, "m": m}] = np.nanmean(b.pred_changed, axis=(3, 4))
    return xr.Dataset({"mean": mean, "pred_change_rate": rate})


def given_networks(results: Results, sample: Sample, progress: bool = False) -> Given:
    """The given networks' numbers per unit, and random He networks of the same widths on the same
    inputs (measured here, in this process: a few networks and draws, enough for a reference)."""
    units, clean = unit_values(results, sample, progress)
    spec, name = results.spec, results.networks.units
    try:
        ref = random_reference(spec)
    except UserError as e:  # no random networks of these widths, or the input file moved since the sweep
        return Given(units, None, clean, name, f"No random reference: {e}")
    recorded = {role: digest for role, _, digest in spec["network"]["files"]}
    if "input" in recorded and ref.network.file("input")[1] != recorded["input"]:
        return Given(units, None, clean, name, "No random reference: the input file changed since the sweep")
    note = (f"Random reference: He-init networks of the same widths and activation ({ref.network.activation}), "
            "no biases, on the same inputs, "
            f"{len(ref.grid.seeds)} networks x {ref.noise.draws} draws, computed for this report")
    return Given(units, reference_values(ref, units), clean, name, note)


def most_sensitive(g: Given, L, m, ratio: float) -> int:
    """The layer whose noise changes predictions most often at ``ratio`` (ties: the larger E R)."""
    c = g.given.sel(L=L, m=m, ratio=ratio)
    layers = [int(i) for i in c.layer.values if i <= L]
    key = [(float(np.nan_to_num(c["pred_change_rate"].sel(layer=i))), float(np.nan_to_num(c["mean"].sel(layer=i))))
           for i in layers]
    return layers[max(range(len(layers)), key=lambda j: key[j])]


def given_lines(g: Given, ratio: float) -> list[str]:
    """The markdown table of the given networks at ``ratio``, and the most sensitive layer per (L, m)."""
    has_acc = bool(np.isfinite(g.given["accuracy"]).any())
    lines = [f"The networks were read from files: each is one fixed, trained network. At r = {ratio:g}, per "
             "perturbed layer: E R of the given networks and of random He networks of the same widths on the "
             "same inputs, the share of (input, draw) whose predicted class changed"
             + (", and the accuracy of the perturbed networks (one per draw) next to the clean accuracy" if has_acc
                else "") + f". {g.note}.", "",
             "| L | m | i | E R given | E R random | predictions changed | predictions changed (random) "
             + ("| accuracy | clean accuracy " if has_acc else "") + "|",
             "|" + "---|" * (9 if has_acc else 7)]
    s, rnd_all = g.given.sel(ratio=ratio), g.random_mean
    for L in s.L.values:
        for m in s.m.values:
            for i in [i for i in s.layer.values if i <= L]:
                c = s.sel(L=L, m=m, layer=i)
                if not np.isfinite(float(c["mean"])):
                    continue
                rnd = rnd_all.sel(L=L, m=m, layer=i, ratio=ratio) if rnd_all is not None else None
                cells = [cell_text(num(c["mean"])), cell_text(num(rnd["mean"])) if rnd is not None else "-",
                         cell_text(num(c["pred_change_rate"])),
                         cell_text(num(rnd["pred_change_rate"])) if rnd is not None else "-"]
                if has_acc:
                    cells += [cell_text(num(c["accuracy"])), cell_text(num(g.clean_accuracy.sel(L=L, m=m)))]
                lines.append(f"| {int(L)} | {label(m)} | {int(i)} | " + " | ".join(cells) + " |")
    lines.append("")
    for L in s.L.values:
        for m in s.m.values:
            if np.isfinite(s["mean"].sel(L=L, m=m)).any():
                lines.append(f"- L = {int(L)}, m = {label(m)}: the most sensitive layer at r = {ratio:g} is "
                             f"i = {most_sensitive(g, L, m, ratio)} (most predictions changed).")
    return lines


def plot_given(g: Given):
    """One row per (L, m) (up to :data:`MAX_PAIRS`), at most three panels per row: E R against r per
    layer, given (solid) and random (dashed); predictions changed, given and random; and, with labels,
    the accuracy of the perturbed networks beside the clean one. Every curve is a mean over units
    with its 95% t-interval shaded (over the given networks or draws; over the random networks)."""
    given = g.units
    pairs = [(L, m) for L in given.L.values for m in given.m.values
             if np.isfinite(given["mean"].sel(L=L, m=m)).any()]
    pairs = plotting.pick(pairs, MAX_PAIRS)
    has_acc = bool(np.isfinite(given["accuracy"]).any())
    fig, axes = plotting.grid(max(len(pairs), 1), 3 if has_acc else 2, width=4.4, height=3.4)
    r = given.ratio.values
    over = f"95% CI over {g.unit_name}"
    for row, (L, m) in zip(axes, pairs):
        layers = [i for i in given.layer.values if i <= L]
        for color, i in zip(plotting.colors(len(layers)), layers):
            c = given.sel(L=L, m=m, layer=i).transpose("ratio", "seed")
            plotting.line_with_interval(row[0], r, c["mean"].values, "o-", color, f"i = {i} given")
            plotting.line_with_interval(row[1], r, c["pred_change_rate"].values, "o-", color,
                                        f"i = {i} predictions changed")
            if g.random is not None:
                ref = g.random.sel(L=L, m=m, layer=i).transpose("ratio", "seed")
                plotting.line_with_interval(row[0], r, ref["mean"].values, "x--", color, f"i = {i} random", lw=1)
                plotting.line_with_interval(row[1], r, ref["pred_change_rate"].values, "x--", color,
                                            f"i = {i} predictions changed (random)", lw=1)
            if has_acc:
                plotting.line_with_interval(row[2], r, c["accuracy"].values, "s:", color, f"i = {i} accuracy")
        title = f"L = {L}, m = {label(m)}"
        row[0].set(xscale="log", yscale="log", xlabel=plotting.RATIO_LABEL, ylabel=plotting.R_LABEL,
                   title=f"{title}: E R ({over})")
        row[1].set(xscale="log", xlabel=plotting.RATIO_LABEL, ylabel="share of predictions changed",
                   ylim=(-0.02, 1.02), title=f"{title}: predictions changed")
        if has_acc:
            row[2].axhline(float(g.clean_accuracy.sel(L=L, m=m)), color="k", ls=":", lw=1, label="clean accuracy")
            row[2].set(xscale="log", xlabel=plotting.RATIO_LABEL, ylabel="accuracy", ylim=(-0.02, 1.02),
                       title=f"{title}: accuracy")
        lows = [y[y > 0].min() for y in (np.asarray(ln.get_ydata(), float) for ln in row[0].get_lines())
                if (y > 0).any()]
        if lows:  # a t-interval of few units can reach below 0: the log axis cuts it at half the lowest mean
            row[0].set_ylim(bottom=min(lows) / 2)
        for ax in row:
            ax.legend(fontsize=6)
    if not pairs:
        plotting.blank(axes[0, 0], "no finished block")
    return fig
