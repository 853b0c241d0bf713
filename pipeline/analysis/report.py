"""The report: DIR/index.md with the answer, the sections of each kind of network, the fitted laws
and the plots (made by :mod:`.figures`, :mod:`.linear` and :mod:`.given`).

:func:`make_report` opens the store once and reads it through the integrity check of
:mod:`.summaries`: a damaged block is named (exit 2), never averaged around. See docs/analysis.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..cliopts import dumps
from ..errors import UserError
from . import fit as fitting
from . import given as given_section
from . import controlvariate, linear, theory
from .figures import (figures, looseness_theory, mean_over, mean_theory, measured_layers, per_network,
                      plot_nonlinearity, present)
from .fittext import format_param, law_rows, missing_text
from .intervals import t_interval
from .plotting import plt
from .recorded import label
from .summaries import Results, Sample, load, open_store

TARGET_RATIO = 0.1  # the r of the original question


def closest_ratio(ratios, target: float = TARGET_RATIO) -> float:
    """The ratio of the store closest to ``target`` on a log scale (the smaller one on a tie)."""
    ratios = np.sort(np.asarray(ratios, dtype=float))
    return float(ratios[np.argmin(np.round(np.abs(np.log(ratios / target)), 9))])



def layers_text(layers: list[int], L) -> str:
    """``i = 1..L`` when every layer was measured, else the list, e.g. ``i in {2, 4}``."""
    if layers == list(range(1, int(L) + 1)) and len(layers) > 1:
        return f"i = 1..{int(L)}"
    return f"i = {layers[0]}" if len(layers) == 1 else "i in {" + ", ".join(map(str, layers)) + "}"


def answer(sample: Sample, ratio: float) -> list[dict]:
    """E R at ``ratio`` for every (L, m) with data: mean over the measured layers, 95% t-interval over networks.

    Returns:
        One dict per (L, m): ``layers`` (the measured i <= L), ``mean`` and ``ci95`` (None when
        undefined) over ``networks``, the extremes over layers of the mean over networks
        (``min`` at ``layer_min``, ``max`` at ``layer_max``, by value), ``abs_change`` (E||v - v*||),
        ``looseness`` (mean of bound / ||v - v*||) with ``looseness_theory`` (its He-init
        estimate) and ``theory`` (the same average of the infinite-width prediction for the mean);
        both None where the random-network theory does not apply.
    """
    net = sample.net.sel(ratio=ratio)
    applies = sample.networks.theory_applies
    rows = []
    for L in net.L.values:
        layers = measured_layers(net, L)
        for m in net.m.values:
            if not layers or not present(net, L, m):
                continue
            cell = net.sel(L=L, m=m, layer=layers)
            per_net = per_network(net, L, m).values
            by_layer = mean_over(cell["mean"], keep=("layer",)).values
            lo, hi = np.nanargmin(by_layer), np.nanargmax(by_layer)
            rows.append({
                "L": int(L), "m": m.item(), "ratio": ratio, "layers": layers,
                "networks": int(np.isfinite(per_net).sum()), "mean": float(np.nanmean(per_net)),
                "ci95": t_interval(per_net),
                "layer_min": layers[lo], "min": float(by_layer[lo]),
                "layer_max": layers[hi], "max": float(by_layer[hi]),
                "abs_change": float(mean_over(cell["delta"])),
                "looseness": float(mean_over(cell["looseness"])),
                "looseness_theory": looseness_theory(sample, int(L), int(m), layers) if applies else None,
                "theory": mean_theory(ratio, int(L), int(m), sample.k, layers) if applies else None,
            })
    return rows


def _laws(result: dict) -> list[str]:
    p = lambda x: format_param(x, digits=3)  # noqa: E731
    if result.get("by_layer") is not None:
        lines = ["| L | m | i | C | a (r) | R² | ratios |", "|---|---|---|---|---|---|---|"]
        for r in result["by_layer"]:
            r2 = f"{r['r2']:.4f}" if r["r2"] is not None else "-"
            lines.append(f"| {r['L']} | {label(r['m'])} | {r['layer']} | {p(r['C'])} | {p(r['ratio'])} | {r2} | "
                         f"{r['n_cells']} |")
        return lines
    lines = ["| cells | C | a (r) | b (L) | c (m) | R² | cells | a from theory on these cells |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in law_rows(result):
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
        th = (" (theory 2)", f" (theory 1/k = {1 / result['k']:.3g})") if v.get("theory") else ("", "")
        lines += ["", f"Spread: Var log R = slope (L - i)/m + intercept with slope = {p(v['slope'])}{th[0]} "
                  f"and intercept = {p(v['intercept'])}{th[1]}."]
    return lines


def _answer_line(a: dict, ratio: float, units: str = "networks") -> str:
    ci = f" [{a['ci95'][0]:.3g}, {a['ci95'][1]:.3g}]" if a["ci95"] else ""
    theory_text = f"; theory {a['theory']:.3g}" if a["theory"] is not None else ""
    he = f" (He-init estimate {a['looseness_theory']:.3g})" if a["looseness_theory"] is not None else ""
    return (f"- for L = {a['L']}, m = {label(a['m'])}, r = {ratio:g}, E||v - v*|| / ||v|| = **{a['mean']:.3g}**{ci} "
            f"({a['networks']} {units}, layers {layers_text(a['layers'], a['L'])}); by layer from "
            f"{a['min']:.3g} (i = {a['layer_min']}) to {a['max']:.3g} (i = {a['layer_max']}){theory_text}; "
            f"the worst-case bound is {a['looseness']:.3g} times larger{he}.")


def _answer_lines(rows: list[dict], ratio: float, sample: Sample) -> list[str]:
    units, nets = sample.units, sample.networks
    lines = [f"At r = {ratio:g} (the ratio in the store closest to 0.1), noise in one layer i, averaged "
             "over the measured layers (each equally likely), the inputs and the noise draws; 95% t-interval "
             f"over {units}" + ("" if units == "networks" else " (one network: its draws are the samples)")
             + ":", ""]
    lines += [_answer_line(a, ratio, units) for a in rows]
    if rows and not nets.theory_applies:
        lo, hi = min(a["mean"] for a in rows), max(a["mean"] for a in rows)
        which = "these given networks" if nets.given else "these networks"
        compare = (" The section on given networks compares them with random networks of the same widths."
                   if nets.given else "")
        lines += ["", f"In words: noise of relative size r = {ratio:g} in one layer moves the output of {which} "
                  f"by {lo:.3g} to {hi:.3g} of its norm, {lo / ratio:.3g} to {hi / ratio:.3g} times r. "
                  f"No theory is shown: {nets.why_no_theory}.{compare}"]
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


# (file, title, caption, what the theory lines are: shown only where the random-network theory applies)
PLOTS = [
    ("ratio.png", "Relative change against r",
     "E R (mean over the measured layers, networks and draws) against r, log-log, one panel per width m "
     "and one line per depth L.", "The dashed line is the first-order theory R = r."),
    ("depth.png", "Relative change against L",
     "E R at the ratio closest to 0.1 against L, one line per m, with 95% t-intervals over the units.",
     "Dashed: theory for the mean (arc-cosine attenuation times exp(s²/2)) over the same layers; "
     "dotted: R = r."),
    ("position.png", "Against the perturbed layer's position, and the spread over networks",
     "Per-unit mean of R against i / L at the ratio closest to 0.1, one panel per (m, L): "
     "median over the units with 25-75% (dark) and 10-90% (light) bands.",
     "Dashed: arc-cosine attenuation (a median, so it should sit inside the bands); dotted: R = r."),
    ("theory.png", "Empirical against theory",
     "Per-network mean of R, divided by r, against r for the widest m in the store: one panel per L and "
     "perturbed layer (the first, a middle and the last measured one); median and bands over networks.",
     "Dashed: arc-cosine attenuation; dotted: first order R = r."),
    ("log_variance.png", "Finite-width spread",
     "Var log R over networks and draws, per cell, against (L - i)/m; black: the fit.",
     "Red dashed: theory 2 (L - i)/m + 1/k."),
    ("bound.png", "Looseness of the worst-case bound",
     "Mean of bound / ||v - v*|| over the measured layers and the units against L, log scale.",
     "Dashed: the He-init estimate from the spectral norms of Gaussian matrices (theory.bound_looseness)."),
    ("residuals.png", "Residuals of the power law",
     "log E R minus the fitted power law, per cell, against the fitted value, by position of the layer.", ""),
    ("given.png", "Given networks: relative change, predictions changed and accuracy against r",
     "One row per (L, m). Left: E R of the given networks (solid) and of random He networks of the same widths "
     "on the same inputs (dashed), one line per perturbed layer. Middle: the share of (input, draw) whose "
     "predicted class changed, given (solid) and random (dashed). Right, with labels: the accuracy of the "
     "perturbed networks (dotted markers) and the clean accuracy (dotted line). Every curve is a mean with "
     "its 95% t-interval shaded: over the given networks (or the draws of the one network) and over the "
     "random networks.", ""),
    ("nonlinearity.png", "Nonlinearity: Monte Carlo against each network's linear answer",
     "sqrt(E R^2) divided by the network's own first-order prediction (RMS of linear_rms / ||v||), against r, "
     "one line per perturbed layer: 1 in the linear regime, departing from 1 when the activations' "
     "curvature (or ReLUs switching) takes over.", ""),
]


def _header(sample: Sample, result: dict) -> list[str]:
    s = sample.spec
    n, z, g = s["network"], s["noise"], s["grid"]
    lines = [f"# nnsweep report: {s.get('name') or Path(sample.path).name}", "",
             f"Store `{sample.path}`: {missing_text(result)}.", "",
             f"Networks: d = {n['input_dim']}, k = {n['output_dim']}, init {n['init']}, bias_std {n['bias_std']}, "
             f"norm bound {n['weight_norm_bound']}; noise {z['distribution']} scaled by the {z['norm']} norm, "
             f"{z['draws']} draws per network and layer; grid L = {g['L']}, m = {g['m']}, r = {g['ratio']}, "
             f"layers i = {g['layer']}, {n.get('n_inputs', 1)} input(s), "
             + (f"{len(g['seeds'])} networks per (L, m) in the grid." if sample.units == "networks" else
                "one network per (L, m): the statistical units are its noise draws.")
             + " R = ||v - v*|| / ||v||."]
    nets = sample.networks
    if nets.widths:
        lines += ["", f"The network files were read with widths {nets.widths_text()} (n_0 = d to n_L = k; the store's "
                  f"m labels the widest hidden layer) and hidden activations {', '.join(nets.activations)}."]
    if not nets.theory_applies:
        lines += ["", f"Note: no theory line, law or value of the random-network theory (first order, arc-cosine "
                  f"attenuation, finite-width spread, He-init looseness) is shown: {nets.why_no_theory}."]
    elif n["init"] not in ("he", "xavier") or n["bias_std"] or z["norm"] != "frobenius":
        lines += ["", "Note: the theory curves assume i.i.d. Gaussian weights without biases and noise scaled "
                  "by the Frobenius norm; this store differs, so read them as a reference only."]
    return lines


def _laws_intro(sample: Sample, result: dict) -> str:
    boot = f"95% intervals from {result['n_bootstrap']} bootstrap resamples of the {sample.units}"
    if result.get("by_layer") is not None:
        return (f"One law E R = C r^a per perturbed layer, least squares on the log of cell means over the ratios; "
                f"{boot}. No law in L and m, and no random-network law: "
                f"{sample.networks.why_no_theory}.")
    text = f"Least squares on the log of cell means; {boot}."
    if sample.networks.theory_applies:
        text += (" The r exponent of a pure power law sits slightly below 1 because of the depth attenuation; "
                 "the last column is what the arc-cosine theory gives when the same law is fitted to its own "
                 "prediction on the same cells.")
    return text


def write_index(out: Path, sample: Sample, result: dict, ratio: float, plots: list[str],
                sections: dict | None = None) -> Path:
    """Write DIR/index.md: the answer, the given networks, the linear answer, the fitted laws and the plots."""
    sections = sections or {}
    lines = _header(sample, result)
    lines += ["", "## The answer", ""] + _answer_lines(answer(sample, ratio), ratio, sample)
    lines += sections.get("control") or []
    if sections.get("given"):
        lines += ["", "## Given networks on their data", ""] + sections["given"]
    if sections.get("linear"):
        lines += ["", "## The linear answer and the worst direction", ""] + sections["linear"]
    lines += ["", "## Fitted laws", "", _laws_intro(sample, result), ""] + _laws(result)
    lines += ["", "## Plots"]
    applies = sample.networks.theory_applies
    for name, title, caption, theory_caption in PLOTS:
        if name in plots:
            text = f"{caption} {theory_caption}" if applies and theory_caption else caption
            lines += ["", f"### {title}", "", f"![{title}]({name})", "", text]
    lines += ["", "See docs/analysis.md for the models, the statistics and the bootstrap."]
    path = out / "index.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _control_lines(results: Results, sample: Sample, ratio: float) -> list[str]:
    """The control-variate answer, for a store of one network per (L, m) (none for several networks)."""
    if sample.units != "draws":
        return []
    rows = answer(sample, ratio)
    return controlvariate.cv_lines(rows, controlvariate.cv_answers(results, ratio, rows), ratio)


def make_report(store, out_dir: str, n_boot: int = 1000, seed: int = 0, progress: bool = True) -> Path:
    """Fit, plot and write ``out_dir/index.md``; returns its path.

    The store (a path, a StoreLocation or the :class:`~pipeline.analysis.summaries.Results` of
    :func:`~pipeline.analysis.summaries.open_store`) is opened once and read through its integrity check.

    Raises:
        UserError: the store is missing, foreign or empty, or ``out_dir`` cannot be created.
        DamagedStore: a done block that the report reads is damaged (named).
    """
    results = store if isinstance(store, Results) else open_store(store)
    sample = load(results, progress)
    result = fitting.fit(sample, n_boot=n_boot, seed=seed, progress=progress, with_cells=True)
    summary = linear.linear_summary(results, progress)
    given = given_section.given_networks(results, sample, progress) if results.networks.given else None
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out_dir!r}: cannot create the report directory ({e.strerror}); "
                        "pass a new or existing directory path.") from None
    ratio = closest_ratio(sample.net.ratio.values)
    sections = {"control": _control_lines(results, sample, ratio),
                "linear": linear.linear_lines(linear.linear_table(summary, ratio), ratio),
                "given": given_section.given_lines(given, ratio) if given is not None else None}
    plots = []
    extra = [("nonlinearity.png", lambda: plot_nonlinearity(summary))]
    if given is not None:
        extra.append(("given.png", lambda: given_section.plot_given(given)))
    for name, fig in [*figures(sample, result, ratio), *((n, make()) for n, make in extra)]:
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        plots.append(name)
    cells = result.pop("cells")
    (out / "fit.json").write_text(dumps({**result, "cells": cells}, indent=2) + "\n")
    return write_index(out, sample, result, ratio, plots, sections)
