"""The report's figures of random-network stores (and the parts that apply to given networks).

Every plot reads the per-unit summaries of :func:`pipeline.analysis.summaries.load` (one pass over
the store, chunk by chunk), so a report of a large store needs no more memory than the fit. Layers
are selected and labelled by their value (the grid may list any subset of 1..max L). Each
``plot_*`` function returns its matplotlib Figure, so what a plot shows can be read back from its
lines. Theory lines (first order, arc-cosine attenuation, the finite-width spread, the He-init
looseness) are drawn only where the random-network theory applies: random ReLU networks
(:attr:`pipeline.analysis.recorded.Networks.theory_applies`). See docs/analysis.md.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from . import plotting, theory
from .fit import POSITIONS
from .intervals import t_interval
from .plotting import plt
from .recorded import label
from .summaries import Sample


def measured_layers(net: xr.Dataset, L) -> list[int]:
    """The perturbed layers i of the store that a network of depth L has (i <= L), by value."""
    return [int(i) for i in net.layer.values if i <= L]


def mean_over(da: xr.DataArray, keep: tuple[str, ...] = ()) -> xr.DataArray:
    """Mean over every dimension but ``keep`` (so new dimensions of the store are averaged too)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: layer > L, missing seeds
        return da.mean([d for d in da.dims if d not in keep])


def per_network(net: xr.Dataset, L, m, var: str = "mean", keep: tuple[str, ...] = ()) -> xr.DataArray:
    """One value per network (seed) of a per-network summary at (L, m): the mean over the measured
    layers and every other dimension but ``keep``."""
    cell = net[var].sel(L=L, m=m, layer=measured_layers(net, L))
    return mean_over(cell, keep=("seed", *keep))


def network_quantiles(net: xr.Dataset, qs=(0.1, 0.25, 0.5, 0.75, 0.9), var: str = "mean") -> xr.DataArray:
    """Quantiles over networks (seeds) of a per-network summary, dims (quantile, L, m, ratio, layer)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # cells with layer > L are NaN on every seed
        return net[var].quantile(list(qs), dim="seed", skipna=True)


def mean_theory(ratio: float, L: int, m: int, k: int, layers: list[int]) -> float:
    """Theory for E R averaged over the measured layers: attenuation times exp(s^2 / 2)."""
    after = int(L) - np.asarray(layers)
    return float(np.mean(theory.attenuation(ratio, after) * theory.mean_over_median(after, m, k)))


def looseness_theory(sample: Sample, L: int, m: int, layers: list[int]) -> float:
    """The He-init estimate of bound / ||v - v*||, averaged over the measured layers."""
    net, noise = sample.spec["network"], sample.spec["noise"]
    return float(np.mean(theory.bound_looseness(L, m, net["input_dim"], sample.k, layers, noise["norm"])))


def present(net: xr.Dataset, L, m) -> bool:
    return bool(net["mean"].sel(L=L, m=m).notnull().any())


# --- plots ----------------------------------------------------------------------
# Every plot_* function returns its Figure; labels name what a line shows, by coordinate value.

def plot_ratio(sample: Sample) -> plt.Figure:
    """E R against r (log-log), one panel per m, one line per L (mean over measured layers); R = r where
    the theory applies."""
    net = sample.net
    r = net.ratio.values
    fig, axes = plotting.panels(net.m.size)
    for ax, m in zip(axes, net.m.values):
        for color, L in zip(plotting.colors(net.L.size), net.L.values):
            if present(net, L, m):
                y = mean_over(per_network(net, L, m, keep=("ratio",)), keep=("ratio",)).values
                ax.plot(r, y, "o-", color=color, label=f"L = {L}")
        if sample.networks.theory_applies:
            ax.plot(r, r, "k--", lw=1, label="first order: R = r")
        ax.set(xscale="log", yscale="log", xlabel=plotting.RATIO_LABEL, ylabel=f"mean {plotting.R_LABEL} over layers i",
               title=f"m = {label(m)}")
        ax.legend(fontsize=8)
    return fig


def plot_depth(sample: Sample, ratio: float) -> plt.Figure:
    """E R at one ratio against L, one line per m, with 95% t-intervals over networks and theory."""
    net = sample.net.sel(ratio=ratio)
    theory_applies = sample.networks.theory_applies
    fig, axes = plotting.panels(1, width=5.6)
    ax = axes[0]
    for j, (color, m) in enumerate(zip(plotting.colors(net.m.size), net.m.values)):
        Ls = [L for L in net.L.values if measured_layers(net, L) and present(net, L, m)]
        if not Ls:
            continue
        per_net = [per_network(net, L, m).values for L in Ls]
        dodge = 1.0 + 0.025 * (j - (net.m.size - 1) / 2)  # keep the error bars of the widths apart
        x = np.array(Ls, dtype=float) * dodge
        y = np.array([np.nanmean(v) for v in per_net])
        ci = np.array([t_interval(v) or (np.nan, np.nan) for v in per_net])
        err = np.nan_to_num(np.abs(ci.T - y))
        ax.errorbar(x, y, yerr=err, fmt="o-", color=color, capsize=3,
                    label=f"m = {label(m)} (95% CI over {sample.units})")
        if theory_applies:
            th = [mean_theory(ratio, int(L), int(m), sample.k, measured_layers(net, L)) for L in Ls]
            ax.plot(x, th, "--", color=color, label=f"m = {m}: theory (arc-cosine, mean)")
    if theory_applies:
        ax.axhline(ratio, color="k", ls=":", lw=1, label=f"first order: R = r = {ratio:g}")
    ax.set(xlabel="number of weight layers L", ylabel=f"mean {plotting.R_LABEL} over layers i",
           title=f"relative change against depth, r = {ratio:g}")
    plotting.log_depth_axis(ax, net.L.values)
    ax.legend(fontsize=7)
    return fig


def plot_position(sample: Sample, ratio: float) -> plt.Figure:
    """Per-unit E R against the position i / L at one ratio: median and quantile bands over networks.

    One panel per (m, L), at most 3 widths and 5 depths, in rows of at most three panels; only the
    measured layers are drawn, and theory only where it applies.
    """
    net = sample.net.sel(ratio=ratio)
    q = network_quantiles(net)
    ms, Ls = plotting.pick(net.m.values, 3), plotting.pick(net.L.values, 5)
    pairs = [(m, L, color) for m in ms for L, color in zip(Ls, plotting.colors(len(Ls)))]
    fig, axes = plotting.panels(len(pairs), width=3.9, height=3.2)
    for ax, (m, L, color) in zip(axes, pairs):
        layers = np.array(measured_layers(net, L))
        if not layers.size or not present(net, L, m):
            plotting.blank(ax, f"L = {L}, m = {label(m)}: no finished block")
            continue
        ax.set(xlabel="position of the perturbed layer i / L", ylabel=f"per-{_unit(sample)} mean of {plotting.R_LABEL}",
               title=f"L = {L}, m = {label(m)}, r = {ratio:g}", xlim=(0, 1.05))
        plotting.bands(ax, layers / L, q.sel(L=L, m=m, layer=layers), color, "median, 25-75%, 10-90%")
        if sample.networks.theory_applies:
            ax.plot(layers / L, theory.attenuation(ratio, L - layers), "k--", lw=1.2,
                    label="theory: arc-cosine attenuation")
            ax.axhline(ratio, color="k", ls=":", lw=1, label="first order: R = r")
        ax.legend(fontsize=7)
    return fig


def _unit(sample: Sample) -> str:
    return "network" if sample.units == "networks" else "draw"


def plot_theory(sample: Sample) -> plt.Figure:
    """R / r against r for the widest m: bands over networks against the arc-cosine curve (random ReLU
    networks only: :func:`figures` leaves it out for others).

    One panel per (L, i), at most 5 depths and for each the first, a middle and the last measured
    layer, in rows of at most three panels.
    """
    net = sample.net
    m = [m for m in net.m.values if any(present(net, L, m) for L in net.L.values)][-1]
    Ls = plotting.pick([L for L in net.L.values if measured_layers(net, L) and present(net, L, m)], 5)
    r = net.ratio.values
    q = network_quantiles(net.sel(m=m))
    panels = [(L, i, color) for L, color in zip(Ls, plotting.colors(len(Ls)))
              for i in plotting.pick(measured_layers(net, L), 3)]
    fig, axes = plotting.panels(len(panels), width=3.9, height=3.2)
    for ax, (L, i, color) in zip(axes, panels):
        ax.set(xscale="log", xlabel=plotting.RATIO_LABEL, ylabel=r"per-network mean of $R$ / $r$",
               title=f"L = {L}, m = {m}, layer i = {i}")
        plotting.bands(ax, r, q.sel(L=L, layer=i) / r, color, "median, 25-75%, 10-90%")
        ax.plot(r, theory.attenuation(r, L - i) / r, "k--", lw=1.2, label="arc-cosine attenuation")
        ax.axhline(1.0, color="k", ls=":", lw=1, label="first order: R = r")
        ax.legend(fontsize=7)
    return fig


def plot_log_variance(sample: Sample, result: dict) -> plt.Figure:
    """Var log R per cell against (L - i) / m, with the fitted line and, where it applies, theory's."""
    cells = [c for c in result["cells"] if c["log_var"] is not None]
    x = np.array([(c["L"] - c["layer"]) / c["m"] for c in cells])
    y = np.array([c["log_var"] for c in cells])
    m = np.array([c["m"] for c in cells])
    fig, axes = plotting.panels(1, width=5.6)
    ax = axes[0]
    for color, mv in zip(plotting.colors(len(set(m))), sorted(set(m))):
        ax.plot(x[m == mv], y[m == mv], "o", color=color, alpha=0.6, ms=4, label=f"cells with m = {mv}")
    grid = np.linspace(0, x.max() if x.size else 1.0, 50)
    lv = result.get("log_variance", {})
    if lv.get("intercept", {}).get("value") is not None:
        slope = lv["slope"]["value"] or 0.0
        ax.plot(grid, slope * grid + lv["intercept"]["value"], "k-",
                label=f"fit: {slope:.3g} x + {lv['intercept']['value']:.3g}")
    if sample.networks.theory_applies:
        ax.plot(grid, 2 * grid + 1 / sample.k, "r--", label=f"theory: 2 x + 1/k (k = {sample.k})")
    ax.set(xlabel="(L - i) / m: layers after the perturbed one, per neuron",
           ylabel=r"Var $\log R$ over networks and draws", title="finite-width spread of log R")
    ax.legend(fontsize=8)
    return fig


def plot_bound(sample: Sample, ratio: float) -> plt.Figure:
    """How loose the worst-case bound is: mean of bound / ||v - v*|| against L, per m, and its He-init
    estimate where the random-network theory applies."""
    net = sample.net.sel(ratio=ratio)
    fig, axes = plotting.panels(1, width=5.6)
    ax = axes[0]
    for color, m in zip(plotting.colors(net.m.size), net.m.values):
        Ls = [L for L in net.L.values if measured_layers(net, L) and present(net, L, m)]
        if not Ls:
            continue
        y = [float(mean_over(per_network(net, L, m, "looseness"))) for L in Ls]
        ax.plot(Ls, y, "o-", color=color, label=f"m = {label(m)}")
        if sample.networks.theory_applies:
            th = [looseness_theory(sample, int(L), int(m), measured_layers(net, L)) for L in Ls]
            ax.plot(Ls, th, "x--", color=color, lw=1, ms=9, label=f"m = {m}: theory at He init")
    ax.set(yscale="log", xlabel="number of weight layers L",
           ylabel=r"worst-case bound / $\|v - v^*\|$ (mean over i)", title=f"looseness of the bound, r = {ratio:g}")
    plotting.log_depth_axis(ax, net.L.values)
    ax.legend(fontsize=8)
    return fig


def plot_residuals(result: dict) -> plt.Figure:
    """Residuals of the power law in log E R against the fitted value, by layer position."""
    cells = [c for c in result["cells"] if c["residual_log"] is not None]
    fig, axes = plotting.panels(1, width=5.6)
    ax = axes[0]
    for color, pos in zip(plotting.colors(3), POSITIONS):
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


def plot_nonlinearity(summary: xr.Dataset):
    """sqrt(E R^2) / linear prediction against r, one line per layer, one panel per (L, m) (up to 6,
    in rows of at most three)."""
    pairs = [(L, m) for L in summary.L.values for m in summary.m.values
             if np.isfinite(summary["nonlinearity"].sel(L=L, m=m)).any()][:6]
    fig, axes = plotting.panels(max(len(pairs), 1))
    for ax, (L, m) in zip(axes, pairs):
        layers = [i for i in summary.layer.values if i <= L]
        for color, i in zip(plotting.colors(len(layers)), layers):
            y = summary["nonlinearity"].sel(L=L, m=m, layer=i)
            ax.plot(summary.ratio.values, y.values, "o-", color=color, label=f"i = {i}")
        ax.axhline(1.0, color="k", ls=":", lw=1)
        ax.set(xscale="log", xlabel=plotting.RATIO_LABEL, ylabel=r"$\sqrt{E R^2}$ / linear prediction",
               title=f"nonlinearity, L = {L}, m = {label(m)}")
        ax.legend(fontsize=7)
    if not pairs:
        axes[0].text(0.5, 0.5, "no linear prediction (spectral scaling)", ha="center", transform=axes[0].transAxes)
    return fig


def _position(c: dict) -> str:
    return "last" if c["layer"] == c["L"] else "first" if c["layer"] == 1 else "middle"


def figures(sample: Sample, result: dict, ratio: float):
    """Each plot of the report as (file name, Figure), made one at a time.

    Random ReLU networks get every plot. Where the random-network theory does not apply the plots
    of theory alone (theory.png) are left out, and for given networks also those of the random
    networks' laws (the finite-width spread and the power-law residuals): ``fit`` fits neither.
    """
    nets = sample.networks
    makers = {"ratio.png": lambda: plot_ratio(sample), "depth.png": lambda: plot_depth(sample, ratio),
              "position.png": lambda: plot_position(sample, ratio)}
    if nets.theory_applies:
        makers["theory.png"] = lambda: plot_theory(sample)
    if not nets.given:
        makers["log_variance.png"] = lambda: plot_log_variance(sample, result)
    makers["bound.png"] = lambda: plot_bound(sample, ratio)
    if not nets.given and result.get("power_law"):
        makers["residuals.png"] = lambda: plot_residuals(result)
    for name, make in makers.items():
        yield name, make()
