"""Report sections on each network's own answer: the linear answer, the worst direction, and given
networks on their data (prediction changes, accuracy, the random networks of the same shapes).

Every number here is a direct reduction of the store's variables over the blocks that are done,
so tests can recompute it with xarray. Relative quantities divide by ||v|| of the same input.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import xarray as xr

from ..spec import INITS, Spec
from ..store import open_results

LINEAR_VARS = ("linear_rms", "worst_linear", "worst_realised", "bound")


def is_given(spec: dict) -> bool:
    """Whether the store's networks were read from files (one file, or a template)."""
    return spec["network"]["init"] not in INITS


def done_dataset(store: str) -> xr.Dataset:
    """The store with every block that is not done masked to NaN (so means run over done blocks only)."""
    ds = open_results(store)
    return ds.where(ds["done"].astype(bool))


def _mean(da: xr.DataArray, keep) -> xr.DataArray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells: layer > L
        return da.mean([d for d in da.dims if d not in keep]).compute()


def linear_summary(ds: xr.Dataset) -> xr.Dataset:
    """Per (L, m, ratio, layer): the Monte Carlo E R and sqrt(E R^2), and beside them, relative to ||v||,
    the linear prediction (RMS over inputs and networks of linear_rms / ||v||), the worst direction
    (linear and realised, means) and the global bound (mean), and the nonlinearity
    sqrt(E R^2) / linear prediction."""
    keep = ("L", "m", "ratio", "layer")
    rel = ds["delta_norm"] / ds["output_norm"]
    out = xr.Dataset({
        "mean": _mean(rel, keep),
        "rms": np.sqrt(_mean(rel**2, keep)),
        "linear_rms": np.sqrt(_mean((ds["linear_rms"] / ds["output_norm"]) ** 2, keep)),
        "worst_linear": _mean(ds["worst_linear"] / ds["output_norm"], keep),
        "worst_realised": _mean(ds["worst_realised"] / ds["output_norm"], keep),
        "bound": _mean(ds["bound"] / ds["output_norm"], keep),
    })
    out["nonlinearity"] = out["rms"] / out["linear_rms"]
    return out


def linear_table(summary: xr.Dataset, ratio: float) -> list[dict]:
    """One row per (L, m, layer) with data at ``ratio``, with the ratios between the columns."""
    s = summary.sel(ratio=ratio)
    rows = []
    for L in s.L.values:
        for m in s.m.values:
            for i in s.layer.values:
                c = s.sel(L=L, m=m, layer=i)
                if i > L or not np.isfinite(float(c["mean"])):
                    continue
                row = {"L": int(L), "m": int(m), "layer": int(i),
                       **{v: _num(c[v]) for v in ("mean", "rms", "linear_rms", "worst_linear", "worst_realised",
                                                   "bound", "nonlinearity")}}
                row["worst_over_rms"] = _ratio(row["worst_realised"], row["rms"])
                row["bound_over_worst"] = _ratio(row["bound"], row["worst_realised"])
                rows.append(row)
    return rows


def _num(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def _cell(x: float | None) -> str:
    return f"{x:.3g}" if x is not None else "-"


def linear_lines(rows: list[dict], ratio: float) -> list[str]:
    """The markdown table of :func:`linear_table`."""
    lines = [f"At r = {ratio:g}, per perturbed layer, all relative to ||v||: the Monte Carlo mean and root mean "
             "square of R; the network's own first-order prediction of that RMS (linear_rms, exact as r -> 0; "
             "'-' for spectral scaling, which has no closed form); the worst noise direction of the same size, "
             "to first order and applied through the network; the global Lipschitz bound; and the gains: "
             "worst / RMS (what an adversary gains over random noise) and bound / worst.", "",
             "| L | m | i | E R | RMS R | linear RMS | worst (linear) | worst (realised) | bound | worst / RMS "
             "| bound / worst |", "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['L']} | {r['m']} | {r['layer']} | " + " | ".join(
            _cell(r[k]) for k in ("mean", "rms", "linear_rms", "worst_linear", "worst_realised", "bound",
                                  "worst_over_rms", "bound_over_worst")) + " |")
    return lines


def plot_nonlinearity(summary: xr.Dataset):
    """sqrt(E R^2) / linear prediction against r, one line per layer, one panel per (L, m) (up to 6)."""
    from .report import RATIO_LABEL, _colors, _panels

    pairs = [(L, m) for L in summary.L.values for m in summary.m.values
             if np.isfinite(summary["nonlinearity"].sel(L=L, m=m)).any()][:6]
    fig, axes = _panels(max(len(pairs), 1))
    for ax, (L, m) in zip(axes, pairs):
        layers = [i for i in summary.layer.values if i <= L]
        for color, i in zip(_colors(len(layers)), layers):
            y = summary["nonlinearity"].sel(L=L, m=m, layer=i)
            ax.plot(summary.ratio.values, y.values, "o-", color=color, label=f"i = {i}")
        ax.axhline(1.0, color="k", ls=":", lw=1)
        ax.set(xscale="log", xlabel=RATIO_LABEL, ylabel=r"$\sqrt{E R^2}$ / linear prediction",
               title=f"nonlinearity, L = {L}, m = {m}")
        ax.legend(fontsize=7)
    if not pairs:
        axes[0].text(0.5, 0.5, "no linear prediction (spectral scaling)", ha="center", transform=axes[0].transAxes)
    return fig


# --- given networks -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Given:
    """Per (L, m, ratio, layer) of the given networks and of random He networks of the same shapes."""

    given: xr.Dataset          # mean R, pred_change_rate, accuracy (NaN without labels)
    random: xr.Dataset | None  # mean R, pred_change_rate of random networks (None if it cannot be built)
    clean_accuracy: xr.DataArray  # per (L, m), mean over the networks
    note: str = ""


def given_summary(ds: xr.Dataset, mean: xr.DataArray) -> xr.Dataset:
    """E R (``mean``, the cell means of :func:`linear_summary`), predictions changed and accuracy per cell."""
    keep = ("L", "m", "ratio", "layer")
    return xr.Dataset({"mean": mean, "pred_change_rate": _mean(ds["pred_changed"], keep),
                       "accuracy": _mean(ds["accuracy"], keep)})


def random_reference(spec: dict, seeds: int = 4, draws: int = 16) -> Spec:
    """The spec of random He networks with the shapes, inputs, ratios and layers of a given-network store."""
    net = {k: v for k, v in spec["network"].items() if k not in ("files", "init", "labels")}
    if net["input"] != "gaussian":
        net.pop("n_inputs")
    return Spec.from_dict({"random_seed": spec["random_seed"], "network": {**net, "init": "he", "bias_std": 0.0},
                           "grid": {**spec["grid"], "seeds": seeds},
                           "noise": {**spec["noise"], "draws": min(draws, spec["noise"]["draws"])}})


def given_networks(ds: xr.Dataset, summary: xr.Dataset) -> Given:
    """The given networks' numbers, and random He networks of the same shapes on the same inputs
    (measured here, in this process: a few networks and draws, enough for a reference line).
    ``summary`` is :func:`linear_summary` of ``ds``, whose E R is reused."""
    from ..measure import measure_block
    from ..errors import UserError

    spec = json.loads(ds.attrs["spec"])
    given = given_summary(ds, summary["mean"])
    clean = _mean(ds["clean_accuracy"], ("L", "m"))
    try:
        ref = random_reference(spec)
    except UserError as e:  # the input file moved since the sweep
        return Given(given, None, clean, f"No random reference: {e}")
    recorded = {role: digest for role, _, digest in spec["network"]["files"]}
    if "input" in recorded and ref.network.file("input")[1] != recorded["input"]:
        return Given(given, None, clean, "No random reference: the input file changed since the sweep")
    mean = xr.full_like(given["mean"], np.nan)
    rate = xr.full_like(given["pred_change_rate"], np.nan)
    for L in ref.grid.L:
        for m in ref.grid.m:
            b = measure_block(ref, L, m, ref.grid.seeds)
            rel = b.delta_norm / b.output_norm[None, None, :, :, None]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean.loc[{"L": L, "m": m}] = np.nanmean(rel, axis=(2, 3, 4))
                rate.loc[{"L": L, "m": m}] = np.nanmean(b.pred_changed, axis=(2, 3, 4))
    note = (f"Random reference: He-init networks of the same shapes, no biases, on the same inputs, "
            f"{len(ref.grid.seeds)} networks x {ref.noise.draws} draws, computed for this report")
    return Given(given, xr.Dataset({"mean": mean, "pred_change_rate": rate}), clean, note)


def most_sensitive(g: Given, L, m, ratio: float) -> int:
    """The layer whose noise changes predictions most often at ``ratio`` (ties: the larger E R)."""
    c = g.given.sel(L=L, m=m, ratio=ratio)
    layers = [int(i) for i in c.layer.values if i <= L]
    key = [(float(np.nan_to_num(c["pred_change_rate"].sel(layer=i))), float(np.nan_to_num(c["mean"].sel(layer=i))))
           for i in layers]
    return layers[max(range(len(layers)), key=lambda j: key[j])]


def given_lines(g: Given, ratio: float) -> list[str]:
    has_acc = bool(np.isfinite(g.given["accuracy"]).any())
    lines = [f"The networks were read from files: each is one fixed, trained network. At r = {ratio:g}, per "
             "perturbed layer: E R of the given networks and of random He networks of the same shapes on the "
             "same inputs, the share of (input, draw) whose predicted class changed"
             + (", and the accuracy of the perturbed networks (one per draw) next to the clean accuracy" if has_acc
                else "") + f". {g.note}.", "",
             "| L | m | i | E R given | E R random | predictions changed | predictions changed (random) "
             + ("| accuracy | clean accuracy " if has_acc else "") + "|",
             "|" + "---|" * (9 if has_acc else 7)]
    s = g.given.sel(ratio=ratio)
    for L in s.L.values:
        for m in s.m.values:
            for i in [i for i in s.layer.values if i <= L]:
                c = s.sel(L=L, m=m, layer=i)
                if not np.isfinite(float(c["mean"])):
                    continue
                rnd = g.random.sel(L=L, m=m, layer=i, ratio=ratio) if g.random is not None else None
                cells = [_cell(_num(c["mean"])), _cell(_num(rnd["mean"])) if rnd is not None else "-",
                         _cell(_num(c["pred_change_rate"])),
                         _cell(_num(rnd["pred_change_rate"])) if rnd is not None else "-"]
                if has_acc:
                    cells += [_cell(_num(c["accuracy"])), _cell(_num(g.clean_accuracy.sel(L=L, m=m)))]
                lines.append(f"| {int(L)} | {int(m)} | {int(i)} | " + " | ".join(cells) + " |")
    lines.append("")
    for L in s.L.values:
        for m in s.m.values:
            if np.isfinite(s["mean"].sel(L=L, m=m)).any():
                lines.append(f"- L = {int(L)}, m = {int(m)}: the most sensitive layer at r = {ratio:g} is "
                             f"i = {most_sensitive(g, L, m, ratio)} (most predictions changed).")
    return lines


def plot_given(g: Given):
    """Top: E R against r per layer, given (solid) and random (dashed); bottom: predictions changed and
    accuracy against r. One column per (L, m), up to 4."""
    import matplotlib.pyplot as plt

    from .report import RATIO_LABEL, R_LABEL, _colors

    pairs = [(L, m) for L in g.given.L.values for m in g.given.m.values
             if np.isfinite(g.given["mean"].sel(L=L, m=m)).any()][:4]
    fig, axes = plt.subplots(2, max(len(pairs), 1), figsize=(4.6 * max(len(pairs), 1), 7.4), squeeze=False)
    r = g.given.ratio.values
    for col, (L, m) in enumerate(pairs):
        top, bottom = axes[0, col], axes[1, col]
        layers = [i for i in g.given.layer.values if i <= L]
        for color, i in zip(_colors(len(layers)), layers):
            c = g.given.sel(L=L, m=m, layer=i)
            top.plot(r, c["mean"].values, "o-", color=color, label=f"i = {i} given")
            if g.random is not None:
                top.plot(r, g.random["mean"].sel(L=L, m=m, layer=i).values, "x--", color=color, lw=1,
                         label=f"i = {i} random")
            bottom.plot(r, c["pred_change_rate"].values, "o-", color=color, label=f"i = {i} predictions changed")
            if np.isfinite(c["accuracy"]).any():
                bottom.plot(r, c["accuracy"].values, "s:", color=color, label=f"i = {i} accuracy")
        top.set(xscale="log", yscale="log", xlabel=RATIO_LABEL, ylabel=R_LABEL, title=f"L = {L}, m = {m}")
        bottom.set(xscale="log", xlabel=RATIO_LABEL, ylabel="share", ylim=(-0.02, 1.02))
        top.legend(fontsize=6)
        bottom.legend(fontsize=6)
    fig.tight_layout()
    return fig
