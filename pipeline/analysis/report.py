"""The report: PNG plots of a results store and DIR/index.md with the fitted laws and the answer.

Every plot reads the per-network summaries of :func:`pipeline.analysis.fit.load`
(one pass over the store, chunk by chunk), so a report of a large store needs
no more memory than the fit. Layers are selected and labelled by their value
(the grid may list any subset of 1..max L). Each ``plot_*`` function returns its
matplotlib Figure, so what a plot shows can be read back from its lines;
:func:`make_report` saves and closes them. See docs/analysis.md for what each
plot shows.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window; must precede the pyplot import

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from ..cliopts import dumps  # noqa: E402
from ..errors import UserError  # noqa: E402
from . import fit as fitting  # noqa: E402
from . import linear, theory  # noqa: E402
from .intervals import t_interval  # noqa: E402

TARGET_RATIO = 0.1  # the r of the original question
R_LABEL = r"$R = \|v - v^*\| \, / \, \|v\|$"
RATIO_LABEL = r"noise ratio $r = \|\eta\| \, / \, \|W_i\|$"
BANDS = ((0.1, 0.9, 0.15), (0.25, 0.75, 0.3))  # quantiles over networks and their shading


def closest_ratio(ratios, target: float = TARGET_RATIO) -> float:
    """The ratio of the store closest to ``target`` on a log scale (the smaller one on a tie)."""
    ratios = np.sort(np.asarray(ratios, dtype=float))
    return float(ratios[np.argmin(np.round(np.abs(np.log(ratios / target)), 9))])


def measured_layers(net: xr.Dataset, L) -> list[int]:
    """The perturbed layers i of the store that a network of depth L has (i <= L), by value."""
    return [int(i) for i in net.layer.values if i <= L]


def layers_text(layers: list[int], L) -> str:
    """``i = 1..L`` when every layer was measured, else the list, e.g. ``i in {2, 4}``."""
    if layers == list(range(1, int(L) + 1)) and len(layers) > 1:
        return f"i = 1..{int(L)}"
    return f"i = {layers[0]}" if len(layers) == 1 else "i in {" + ", ".join(map(str, layers)) + "}"


def _mean_over(da: xr.DataArray, keep: tuple[str, ...] = ()) -> xr.DataArray:
    """Mean over every dimension but ``keep`` (so new dimensions of the store are averaged too)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: layer > L, missing seeds
        return da.mean([d for d in da.dims if d not in keep])


def per_network(net: xr.Dataset, L, m, var: str = "mean", keep: tuple[str, ...] = ()) -> xr.DataArray:
    """One value per network (seed) of a per-network summary at (L, m): the mean over the measured
    layers and every other dimension but ``keep``."""
    cell = net[var].sel(L=L, m=m, layer=measured_layers(net, L))
    return _mean_over(cell, keep=("seed", *keep))


def network_quantiles(net: xr.Dataset, qs=(0.1, 0.25, 0.5, 0.75, 0.9), var: str = "mean") -> xr.DataArray:
    """Quantiles over networks (seeds) of a per-network summary, dims (quantile, L, m, ratio, layer)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # cells with layer > L are NaN on every seed
        return net[var].quantile(list(qs), dim="seed", skipna=True)


def mean_theory(ratio: float, L: int, m: int, k: int, layers: list[int]) -> float:
    """Theory for E R averaged over the measured layers: attenuation times exp(s^2 / 2)."""
    after = int(L) - np.asarray(layers)
    return float(np.mean(theory.attenuation(ratio, after) * theory.mean_over_median(after, m, k)))


def looseness_theory(sample: fitting.Sample, L: int, m: int, layers: list[int]) -> float:
    """The He-init estimate of bound / ||v - v*||, averaged over the measured layers."""
    net, noise = sample.spec["network"], sample.spec["noise"]
    return float(np.mean(theory.bound_looseness(L, m, net["input_dim"], sample.k, layers, noise["norm"])))


def _present(net: xr.Dataset, L, m) -> bool:
    return bool(net["mean"].sel(L=L, m=m).notnull().any())


def answer(sample: fitting.Sample, ratio: float) -> list[dict]:
    """E R at ``ratio`` for every (L, m) with data: mean over the measured layers, 95% t-interval over networks.

    Returns:
        One dict per (L, m): ``layers`` (the measured i <= L), ``mean`` and ``ci95`` (None when
        undefined) over ``networks``, the extremes over layers of the mean over networks
        (``min`` at ``layer_min``, ``max`` at ``layer_max``, by value), ``abs_change`` (E||v - v*||),
        ``looseness`` (mean of bound / ||v - v*||) with ``looseness_theory`` (its He-init
        estimate) and ``theory`` (the same average of the infinite-width prediction for the mean).
    """
    net = sample.net.sel(ratio=ratio)
    rows = []
    for L in net.L.values:
        layers = measured_layers(net, L)
        for m in net.m.values:
            if not layers or not _present(net, L, m):
                continue
            cell = net.sel(L=L, m=m, layer=layers)
            per_net = per_network(net, L, m).values
            by_layer = _mean_over(cell["mean"], keep=("layer",)).values
            lo, hi = np.nanargmin(by_layer), np.nanargmax(by_layer)
            rows.append({
                "L": int(L), "m": int(m), "ratio": ratio, "layers": layers,
                "networks": int(np.isfinite(per_net).sum()), "mean": float(np.nanmean(per_net)),
                "ci95": t_interval(per_net),
                "layer_min": layers[lo], "min": float(by_layer[lo]),
                "layer_max": layers[hi], "max": float(by_layer[hi]),
                "abs_change": float(_mean_over(cell["delta"])),
                "looseness": float(_mean_over(cell["looseness"])),
                "looseness_theory": looseness_theory(sample, int(L), int(m), layers),
                "theory": mean_theory(ratio, int(L), int(m), sample.k, layers),
            })
    return rows


# --- plots ----------------------------------------------------------------------------
# Every plot_* function returns its Figure; labels name what a line shows, by coordinate value.

def _colors(n: int):
    return plt.cm.viridis(np.linspace(0.0, 0.85, max(n, 1)))


def _panels(n: int, width: float = 4.6, height: float = 3.9):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False, layout="constrained")
    return fig, axes[0]


def _grid(nrows: int, ncols: int):
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.9 * ncols, 3.2 * nrows), squeeze=False,
                             layout="constrained")
    return fig, axes


def _log_depth_axis(ax, Ls) -> None:
    ax.set_xscale("log")
    ax.set_xticks(Ls, [str(L) for L in Ls])
    ax.minorticks_off()


def _pick(values, n: int) -> list:
    """At most n of ``values``, evenly spread and keeping both ends (for grids of panels)."""
    values = list(values)
    if len(values) <= n:
        return values
    return [values[j] for j in sorted(set(np.linspace(0, len(values) - 1, n).round().astype(int)))]


def _blank(ax, text: str) -> None:
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", transform=ax.transAxes)


def plot_ratio(sample: fitting.Sample) -> plt.Figure:
    """E R against r (log-log), one panel per m, one line per L (mean over measured layers); R = r."""
    net = sample.net
    r = net.ratio.values
    fig, axes = _panels(net.m.size)
    for ax, m in zip(axes, net.m.values):
        for color, L in zip(_colors(net.L.size), net.L.values):
            if _present(net, L, m):
                y = _mean_over(per_network(net, L, m, keep=("ratio",)), keep=("ratio",)).values
                ax.plot(r, y, "o-", color=color, label=f"L = {L}")
        ax.plot(r, r, "k--", lw=1, label="first order: R = r")
        ax.set(xscale="log", yscale="log", xlabel=RATIO_LABEL, ylabel=f"mean {R_LABEL} over layers i",
               title=f"m = {m}")
        ax.legend(fontsize=8)
    return fig


def plot_depth(sample: fitting.Sample, ratio: float) -> plt.Figure:
    """E R at one ratio against L, one line per m, with 95% t-intervals over networks and theory."""
    net = sample.net.sel(ratio=ratio)
    fig, axes = _panels(1, width=5.6)
    ax = axes[0]
    for j, (color, m) in enumerate(zip(_colors(net.m.size), net.m.values)):
        Ls = [L for L in net.L.values if measured_layers(net, L) and _present(net, L, m)]
        if not Ls:
            continue
        per_net = [per_network(net, L, m).values for L in Ls]
        dodge = 1.0 + 0.025 * (j - (net.m.size - 1) / 2)  # keep the error bars of the widths apart
        x = np.array(Ls, dtype=float) * dodge
        y = np.array([np.nanmean(v) for v in per_net])
        ci = np.array([t_interval(v) or (np.nan, np.nan) for v in per_net])
        err = np.nan_to_num(np.abs(ci.T - y))
        ax.errorbar(x, y, yerr=err, fmt="o-", color=color, capsize=3, label=f"m = {m} (95% CI over networks)")
        th = [mean_theory(ratio, int(L), int(m), sample.k, measured_layers(net, L)) for L in Ls]
        ax.plot(x, th, "--", color=color, label=f"m = {m}: theory (arc-cosine, mean)")
    ax.axhline(ratio, color="k", ls=":", lw=1, label=f"first order: R = r = {ratio:g}")
    ax.set(xlabel="number of weight layers L", ylabel=f"mean {R_LABEL} over layers i",
           title=f"relative change against depth, r = {ratio:g}")
    _log_depth_axis(ax, net.L.values)
    ax.legend(fontsize=7)
    return fig


def _bands(ax, x, q, color, label):
    """Quantile bands (10-90%, 25-75%) and the median of per-network values q (quantile, x)."""
    qs = list(q["quantile"].values)
    for lo, hi, alpha in BANDS:
        if lo in qs and hi in qs:
            ax.fill_between(x, q.sel(quantile=lo), q.sel(quantile=hi), color=color, alpha=alpha, lw=0)
    ax.plot(x, q.sel(quantile=0.5), "o-", color=color, ms=4, label=label)


def plot_position(sample: fitting.Sample, ratio: float) -> plt.Figure:
    """Per-network E R against the position i / L at one ratio: median and quantile bands over networks.

    One panel per (m, L), at most 3 widths and 5 depths; only the measured layers are drawn.
    """
    net = sample.net.sel(ratio=ratio)
    q = network_quantiles(net)
    ms, Ls = _pick(net.m.values, 3), _pick(net.L.values, 5)
    fig, axes = _grid(len(ms), len(Ls))
    for row, m in zip(axes, ms):
        for ax, L, color in zip(row, Ls, _colors(len(Ls))):
            layers = np.array(measured_layers(net, L))
            if not layers.size or not _present(net, L, m):
                _blank(ax, f"L = {L}, m = {m}: no finished block")
                continue
            ax.set(xlabel="position of the perturbed layer i / L", ylabel=f"per-network mean of {R_LABEL}",
                   title=f"L = {L}, m = {m}, r = {ratio:g}", xlim=(0, 1.05))
            _bands(ax, layers / L, q.sel(L=L, m=m, layer=layers), color, "median, 25-75%, 10-90%")
            ax.plot(layers / L, theory.attenuation(ratio, L - layers), "k--", lw=1.2,
                    label="theory: arc-cosine attenuation")
            ax.axhline(ratio, color="k", ls=":", lw=1, label="first order: R = r")
            ax.legend(fontsize=7)
    return fig


def plot_theory(sample: fitting.Sample) -> plt.Figure:
    """R / r against r for the widest m: bands over networks against the arc-cosine curve.

    One column per L (at most 5); one row per perturbed layer among the measured ones: the first,
    a middle one and the last.
    """
    net = sample.net
    m = [m for m in net.m.values if any(_present(net, L, m) for L in net.L.values)][-1]
    Ls = _pick([L for L in net.L.values if measured_layers(net, L) and _present(net, L, m)], 5)
    r = net.ratio.values
    q = network_quantiles(net.sel(m=m))
    picked = {L: _pick(measured_layers(net, L), 3) for L in Ls}
    fig, axes = _grid(max(len(v) for v in picked.values()), len(Ls))
    for j, row in enumerate(axes):
        for ax, L, color in zip(row, Ls, _colors(len(Ls))):
            if j >= len(picked[L]):
                _blank(ax, f"L = {L}: no further measured layer")
                continue
            i = picked[L][j]
            ax.set(xscale="log", xlabel=RATIO_LABEL, ylabel=r"per-network mean of $R$ / $r$",
                   title=f"L = {L}, m = {m}, layer i = {i}")
            _bands(ax, r, q.sel(L=L, layer=i) / r, color, "median, 25-75%, 10-90%")
            ax.plot(r, theory.attenuation(r, L - i) / r, "k--", lw=1.2, label="arc-cosine attenuation")
            ax.axhline(1.0, color="k", ls=":", lw=1, label="first order: R = r")
            ax.legend(fontsize=7)
    return fig


def plot_log_variance(sample: fitting.Sample, result: dict) -> plt.Figure:
    """Var log R per cell against (L - i) / m, with the fitted and the theoretical line."""
    cells = [c for c in result["cells"] if c["log_var"] is not None]
    x = np.array([(c["L"] - c["layer"]) / c["m"] for c in cells])
    y = np.array([c["log_var"] for c in cells])
    m = np.array([c["m"] for c in cells])
    fig, axes = _panels(1, width=5.6)
    ax = axes[0]
    for color, mv in zip(_colors(len(set(m))), sorted(set(m))):
        ax.plot(x[m == mv], y[m == mv], "o", color=color, alpha=0.6, ms=4, label=f"cells with m = {mv}")
    grid = np.linspace(0, x.max() if x.size else 1.0, 50)
    lv = result.get("log_variance", {})
    if lv.get("intercept", {}).get("value") is not None:
        slope = lv["slope"]["value"] or 0.0
        ax.plot(grid, slope * grid + lv["intercept"]["value"], "k-",
                label=f"fit: {slope:.3g} x + {lv['intercept']['value']:.3g}")
    ax.plot(grid, 2 * grid + 1 / sample.k, "r--", label=f"theory: 2 x + 1/k (k = {sample.k})")
    ax.set(xlabel="(L - i) / m: layers after the perturbed one, per neuron",
           ylabel=r"Var $\log R$ over networks and draws", title="finite-width spread of log R")
    ax.legend(fontsize=8)
    return fig


def plot_bound(sample: fitting.Sample, ratio: float) -> plt.Figure:
    """How loose the worst-case bound is: mean of bound / ||v - v*|| against L, per m, and theory."""
    net = sample.net.sel(ratio=ratio)
    fig, axes = _panels(1, width=5.6)
    ax = axes[0]
    for color, m in zip(_colors(net.m.size), net.m.values):
        Ls = [L for L in net.L.values if measured_layers(net, L) and _present(net, L, m)]
        if not Ls:
            continue
        y = [float(_mean_over(per_network(net, L, m, "looseness"))) for L in Ls]
        th = [looseness_theory(sample, int(L), int(m), measured_layers(net, L)) for L in Ls]
        ax.plot(Ls, y, "o-", color=color, label=f"m = {m}")
        ax.plot(Ls, th, "x--", color=color, lw=1, ms=9, label=f"m = {m}: theory at He init")
    ax.set(yscale="log", xlabel="number of weight layers L",
           ylabel=r"worst-case bound / $\|v - v^*\|$ (mean over i)", title=f"looseness of the bound, r = {ratio:g}")
    _log_depth_axis(ax, net.L.values)
    ax.legend(fontsize=8)
    return fig


def plot_residuals(result: dict) -> plt.Figure:
    """Residuals of the power law in log E R against the fitted value, by layer position."""
    cells = [c for c in result["cells"] if c["residual_log"] is not None]
    fig, axes = _panels(1, width=5.6)
    ax = axes[0]
    for color, pos in zip(_colors(3), fitting.POSITIONS):
        sel = [c for c in cells if _position(c) == pos]
        if sel:
            ax.plot([c["power_law"] for c in sel], [c["residual_log"] for c in sel], "o", color=color,
                    alpha=0.6, ms=4, label=f"{pos} layer")
    ax.axhline(0.0, color="k", lw=1)
    law = result.get("power_law") or {}
    r2 = f"R² = {law['r2']:.4f}" if law.get("r2") is not None else ""
    ax.set(xscale="log", xlabel=r"fitted $E\,R = C\, r^a L^b m^c$",
           ylabel=r"residual: $\log E\,R$ - $\log$ fit", title=f"power-law residuals {r2}")
    ax.legend(fontsize=8)
    return fig


def _position(c: dict) -> str:
    return "last" if c["layer"] == c["L"] else "first" if c["layer"] == 1 else "middle"


def figures(sample: fitting.Sample, result: dict, ratio: float):
    """Each plot of the report as (file name, Figure), made one at a time."""
    makers = {"ratio.png": lambda: plot_ratio(sample), "depth.png": lambda: plot_depth(sample, ratio),
              "position.png": lambda: plot_position(sample, ratio), "theory.png": lambda: plot_theory(sample),
              "log_variance.png": lambda: plot_log_variance(sample, result),
              "bound.png": lambda: plot_bound(sample, ratio), "residuals.png": lambda: plot_residuals(result)}
    for name, make in makers.items():
        yield name, make()


# --- index.md -------------------------------------------------------------------------

def _laws(result: dict) -> list[str]:
    p = lambda x: fitting.format_param(x, digits=3)  # noqa: E731
    lines = ["| cells | C | a (r) | b (L) | c (m) | R² | cells | a from theory on these cells |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in fitting.law_rows(result):
        th = s.get("theory", {}).get("arccos", {}).get("ratio")
        r2 = f"{s['r2']:.4f}" if s["r2"] is not None else "-"
        lines.append(f"| {name} | {p(s['C'])} | {p(s['ratio'])} | {p(s['L'])} | {p(s['m'])} | {r2} | "
                     f"{s['n_cells']} | {'-' if th is None else f'{th:.4f}'} |")
    a, v = result.get("attenuation"), result.get("log_variance")
    if a:
        lines += ["", f"Depth attenuation, fitted to the geometric mean exp(E log R) (the median of R): "
                  f"exp(E log R) = C r^a / (1 + beta (L - i) r) with C = {p(a['C'])}, "
                  f"a = {p(a['ratio'])}, beta = {p(a['beta'])}; theory C = 1, a = 1, "
                  f"beta = 1/(3 pi) = {theory.ATTENUATION_BETA:.3f}."]
        if a.get("scale_gmean") and a.get("scale_mean"):
            lines.append(f"Against the exact arc-cosine curve A(r, L - i): exp(E log R) = "
                         f"{p(a['scale_gmean']['scale'])} x A and E R = {p(a['scale_mean']['scale'])} "
                         "x A exp(s²/2), with s² = 2 (L - i)/m + 1/k (theory: both factors 1).")
    if v:
        lines += ["", f"Spread: Var log R = slope (L - i)/m + intercept with slope = {p(v['slope'])} "
                  f"(theory 2) and intercept = {p(v['intercept'])} (theory 1/k = {1 / result['k']:.3g})."]
    return lines


def _answer_line(a: dict, ratio: float, units: str = "networks", random: bool = True) -> str:
    ci = f" [{a['ci95'][0]:.3g}, {a['ci95'][1]:.3g}]" if a["ci95"] else ""
    theory_text = (f"; theory {a['theory']:.3g}" if random else "")
    he = f" (He-init estimate {a['looseness_theory']:.3g})" if random else ""
    return (f"- for L = {a['L']}, m = {a['m']}, r = {ratio:g}, E||v - v*|| / ||v|| = **{a['mean']:.3g}**{ci} "
            f"({a['networks']} {units}, layers {layers_text(a['layers'], a['L'])}); by layer from "
            f"{a['min']:.3g} (i = {a['layer_min']}) to {a['max']:.3g} (i = {a['layer_max']}){theory_text}; "
            f"the worst-case bound is {a['looseness']:.3g} times larger{he}.")


def _answer_lines(rows: list[dict], ratio: float, sample: fitting.Sample | None = None) -> list[str]:
    units = sample.units if sample is not None else "networks"
    random = sample is None or not linear.is_given(sample.spec)
    lines = [f"At r = {ratio:g} (the ratio in the store closest to 0.1), noise in one layer i, averaged "
             "over the measured layers (each equally likely), the inputs and the noise draws; 95% t-interval "
             f"over {units}" + ("" if units == "networks" else " (one network: its draws are the samples)")
             + ":", ""]
    lines += [_answer_line(a, ratio, units, random) for a in rows]
    if rows and not random:
        lo, hi = min(a["mean"] for a in rows), max(a["mean"] for a in rows)
        lines += ["", f"In words: noise of relative size r = {ratio:g} in one layer moves the output of these "
                  f"given networks by {lo:.3g} to {hi:.3g} of its norm, {lo / ratio:.3g} to {hi / ratio:.3g} "
                  "times r. The random-network theory does not apply to trained networks; the section on "
                  "given networks compares them with random networks of the same shapes."]
    elif rows:
        lo, hi = min(a["mean"] for a in rows), max(a["mean"] for a in rows)
        b_lo, b_hi = min(a["looseness"] for a in rows), max(a["looseness"] for a in rows)
        lines += ["", f"In words: noise of relative size r = {ratio:g} in one layer moves the output by "
                  f"{lo:.3g} to {hi:.3g} of its norm across these settings, that is {lo / ratio:.3g} to "
                  f"{hi / ratio:.3g} times r. Theory (i.i.d. Gaussian weights, no biases) says about r "
                  "whatever the depth, the width and the perturbed layer: the layers after the perturbed "
                  "one lower it by about (L - i) r / (3 pi) in relative terms, and finite width and a small "
                  "output dimension k spread it over networks and raise the mean above the median by "
                  f"exp(s²/2). The worst-case Lipschitz bound is {b_lo:.3g} to {b_hi:.3g} times the actual "
                  "change."]
    return lines


PLOTS = [
    ("ratio.png", "Relative change against r",
     "E R (mean over the measured layers, networks and draws) against r, log-log, one panel per width m "
     "and one line per depth L. The dashed line is the first-order theory R = r."),
    ("depth.png", "Relative change against L",
     "E R at the ratio closest to 0.1 against L, one line per m, with 95% t-intervals over networks; "
     "dashed: theory for the mean (arc-cosine attenuation times exp(s²/2)) over the same layers; "
     "dotted: R = r."),
    ("position.png", "Against the perturbed layer's position, and the spread over networks",
     "Per-network mean of R (over draws) against i / L at the ratio closest to 0.1, one panel per (m, L): "
     "median over networks with 25-75% (dark) and 10-90% (light) bands. Dashed: arc-cosine attenuation "
     "(a median, so it should sit inside the bands); dotted: R = r."),
    ("theory.png", "Empirical against theory",
     "Per-network mean of R, divided by r, against r for the widest m in the store: one column per L, one "
     "row per perturbed layer (the first, a middle and the last measured one); median and bands over "
     "networks; dashed: arc-cosine attenuation; dotted: first order R = r."),
    ("log_variance.png", "Finite-width spread",
     "Var log R over networks and draws, per cell, against (L - i)/m; black: the fit; red dashed: theory "
     "2 (L - i)/m + 1/k."),
    ("bound.png", "Looseness of the worst-case bound",
     "Mean of bound / ||v - v*|| over the measured layers and the networks against L, log scale; dashed: "
     "the He-init estimate from the spectral norms of Gaussian matrices (theory.bound_looseness)."),
    ("residuals.png", "Residuals of the power law",
     "log E R minus the fitted power law, per cell, against the fitted value, by position of the layer."),
    ("given.png", "Given networks: relative change, predictions changed and accuracy against r",
     "Top: E R of the given networks (solid) and of random He networks of the same shapes on the same inputs "
     "(dashed), one line per perturbed layer. Bottom: the share of (input, draw) whose predicted class changed "
     "(solid) and, with labels, the accuracy of the perturbed networks (dotted)."),
    ("nonlinearity.png", "Nonlinearity: Monte Carlo against each network's linear answer",
     "sqrt(E R^2) divided by the network's own first-order prediction (RMS of linear_rms / ||v||), against r, "
     "one line per perturbed layer: 1 in the linear regime, departing from 1 when ReLUs switch."),
]


def _header(sample: fitting.Sample, result: dict) -> list[str]:
    s = sample.spec
    n, z, g = s["network"], s["noise"], s["grid"]
    lines = [f"# nnsweep report: {s.get('name') or Path(sample.path).name}", "",
             f"Store `{sample.path}`: {fitting.missing_text(result)}.", "",
             f"Networks: d = {n['input_dim']}, k = {n['output_dim']}, init {n['init']}, bias_std {n['bias_std']}, "
             f"norm bound {n['weight_norm_bound']}; noise {z['distribution']} scaled by the {z['norm']} norm, "
             f"{z['draws']} draws per network and layer; grid L = {g['L']}, m = {g['m']}, r = {g['ratio']}, "
             f"layers i = {g['layer']}, {n.get('n_inputs', 1)} input(s), "
             + (f"{len(g['seeds'])} networks per (L, m) in the grid." if sample.units == "networks" else
                "one network per (L, m): the statistical units are its noise draws.")
             + " R = ||v - v*|| / ||v||."]
    if linear.is_given(s):
        lines += ["", "Note: these networks were read from files; the random-network theory (first order, "
                  "arc-cosine attenuation) is about random He-init networks and is not shown for them."]
    elif n["init"] not in ("he", "xavier") or n["bias_std"] or z["norm"] != "frobenius":
        lines += ["", "Note: the theory curves assume i.i.d. Gaussian weights without biases and noise scaled "
                  "by the Frobenius norm; this store differs, so read them as a reference only."]
    return lines


def write_index(out: Path, sample: fitting.Sample, result: dict, ratio: float, plots: list[str],
                sections: dict | None = None) -> Path:
    """Write DIR/index.md: the answer, the given networks, the linear answer, the fitted laws and the plots."""
    sections = sections or {}
    lines = _header(sample, result)
    lines += ["", "## The answer", ""] + _answer_lines(answer(sample, ratio), ratio, sample)
    if sections.get("given"):
        lines += ["", "## Given networks on their data", ""] + sections["given"]
    if sections.get("linear"):
        lines += ["", "## The linear answer and the worst direction", ""] + sections["linear"]
    lines += ["", "## Fitted laws", "",
              f"Least squares on the log of cell means; 95% intervals from {result['n_bootstrap']} bootstrap "
              f"resamples of the {sample.units}. The r exponent of a pure power law sits slightly below 1 because "
              "of the depth attenuation; the last column is what the arc-cosine theory gives when the same "
              "law is fitted to its own prediction on the same cells.", ""] + _laws(result)
    lines += ["", "## Plots"]
    for name, title, caption in PLOTS:
        if name in plots:
            lines += ["", f"### {title}", "", f"![{title}]({name})", "", caption]
    lines += ["", "See docs/analysis.md for the models, the statistics and the bootstrap."]
    path = out / "index.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_report(store: str, out_dir: str, n_boot: int = 1000, seed: int = 0, progress: bool = True) -> Path:
    """Fit, plot and write ``out_dir/index.md``; returns its path.

    Raises:
        UserError: the store is missing, foreign or empty, or ``out_dir`` cannot be created.
    """
    sample = fitting.load(store, progress)
    result = fitting.fit(sample, n_boot=n_boot, seed=seed, progress=progress, with_cells=True)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out_dir!r}: cannot create the report directory ({e.strerror}); "
                        "pass a new or existing directory path.") from None
    ratio = closest_ratio(sample.net.ratio.values)
    ds = linear.done_dataset(store)
    summary = linear.linear_summary(ds)
    given = linear.given_networks(ds, summary) if linear.is_given(sample.spec) else None
    sections = {"linear": linear.linear_lines(linear.linear_table(summary, ratio), ratio),
                "given": linear.given_lines(given, ratio) if given is not None else None}
    plots = []
    extra = [("nonlinearity.png", lambda: linear.plot_nonlinearity(summary))]
    if given is not None:
        extra.append(("given.png", lambda: linear.plot_given(given)))
    for name, fig in [*figures(sample, result, ratio), *((n, make()) for n, make in extra)]:
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        plots.append(name)
    cells = result.pop("cells")
    (out / "fit.json").write_text(dumps({**result, "cells": cells}, indent=2) + "\n")
    return write_index(out, sample, result, ratio, plots, sections)
