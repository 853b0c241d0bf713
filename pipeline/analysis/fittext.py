"""The fit as text: a few readable lines for ``nnsweep fit`` (its ``--json`` holds everything).

>>> format_param({"value": 0.98765, "ci95": [0.9, 1.1]}, digits=3)
'0.988 [0.9, 1.1]'
"""

from __future__ import annotations

from . import theory
from .fit import POSITIONS, SMALL_R

def format_param(p: dict | None, digits: int = 4) -> str:
    """A fitted parameter as "value [lo, hi]" (the interval left out when there is none), or "-"."""
    if not p or p.get("value") is None:
        return "-"
    lo, hi = p["ci95"]
    ci = f" [{lo:.{digits}g}, {hi:.{digits}g}]" if lo is not None and hi is not None else ""
    return f"{p['value']:.{digits}g}{ci}"


def law_rows(result: dict) -> list[tuple[str, dict]]:
    """The fitted power laws that are present, in display order, as (which cells, summary)."""
    rows = [("all cells", result.get("power_law")), (f"ratio <= {SMALL_R:g}", result.get("power_law_small_r"))]
    rows += [(f"{pos} layer", result.get("by_position", {}).get(pos)) for pos in POSITIONS]
    return [(name, s) for name, s in rows if s]


def _r2(s: dict) -> str:
    return f"{s['r2']:.4f}" if s.get("r2") is not None else "-"


def _law(s: dict) -> str:
    p = format_param
    return (f"C = {p(s['C'])}  a = {p(s['ratio'])}  b = {p(s['L'])}  c = {p(s['m'])}  R^2 = {_r2(s)}, "
            f"{s['n_cells']} cells")


def missing_text(result: dict) -> str:
    """One line saying which (L, m) and seeds are missing, or that nothing is (and whether the cells of
    noise in every layer at once were left out)."""
    miss = result["missing"]
    left_out = ("; the cells with noise in every layer at once (layer 0) are left out of this analysis, "
                "which models the position of one perturbed layer (nnsweep query --sel layer=0 reads them)"
                if result.get("together_cells_left_out") else "")
    if not miss["blocks"]:
        return f"all {result['blocks_total']} blocks done{left_out}"
    parts = [f"L={g['L']} m={g['m']} seeds {_ranges(g['seeds'])}" for g in miss["by_L_m"]]
    return (f"{result['blocks_done']} of {result['blocks_total']} blocks done; fitted on what is there{left_out}. "
            f"Missing {miss['blocks']} blocks ({miss['networks']} networks): " + "; ".join(parts))


def _ranges(seeds: list[int]) -> str:
    runs, start = [], None
    for j, s in enumerate(seeds):
        if start is None:
            start = s
        if j + 1 == len(seeds) or seeds[j + 1] != s + 1:
            runs.append(f"{start}" if start == s else f"{start}..{s}")
            start = None
    return ",".join(runs)


def _layer_laws(rows: list[dict]) -> list[str]:
    """Given networks: one law E R = C r^a per perturbed layer."""
    lines = ["E R = C r^a per perturbed layer i, least squares on the log of cell means over the ratios "
             "(no law in L and m: these are fixed networks):"]
    p = format_param
    for r in rows:
        lines.append(f"  L = {r['L']}, m = {r['m']}, i = {r['layer']}: C = {p(r['C'])}  a = {p(r['ratio'])}  "
                     f"R^2 = {_r2(r)}, {r['n_cells']} ratios")
    if not rows:
        lines.append("  (fewer than two ratios per layer: nothing to fit)")
    return lines


def _random_laws(result: dict) -> list[str]:
    """Random networks: the power law in r, L and m, the depth attenuation and the spread."""
    lines = ["E R = C r^a L^b m^c, least squares on the log of cell means (cell = L, m, ratio, layer):"]
    for name, s in law_rows(result):
        th = s.get("theory", {}).get("arccos", {})
        extra = f"   (arc-cosine theory on these cells: a = {th['ratio']:.4g})" if th.get("ratio") else ""
        lines.append(f"  {name:<15} {_law(s)}{extra}")
    a, v, p = result.get("attenuation"), result.get("log_variance"), format_param
    if a:
        lines.append("Depth attenuation, exp(E log R) = C r^a / (1 + beta (L - i) r): "
                     f"C = {p(a['C'])}  a = {p(a['ratio'])}  beta = {p(a['beta'])}  "
                     f"(theory 1, 1, {theory.ATTENUATION_BETA:.4g}); R^2 = {_r2(a)}")
        sg, sm = a.get("scale_gmean"), a.get("scale_mean")
        if sg and sm:
            lines.append(f"  against the arc-cosine curve A(r, L - i): exp(E log R) = {p(sg['scale'])} x A, "
                         f"E R = {p(sm['scale'])} x A exp(s^2 / 2)   (theory: 1 and 1)")
    if v:
        th = (" (theory 2)", f" (theory 1/k = {1 / result['k']:.4g})") if v.get("theory") else ("", "")
        lines.append(f"Var log R = slope (L - i) / m + intercept: slope = {p(v['slope'])}{th[0]}, "
                     f"intercept = {p(v['intercept'])}{th[1]}; R^2 = {_r2(v)}")
    return lines


def to_text(result: dict) -> str:
    """The fit as a few readable lines (the JSON holds everything)."""
    units = result["bootstrap_over"]
    n = result[f"{units}_per_L_m"]
    nets = f"{n['min']}" if n["min"] == n["max"] else f"{n['min']}..{n['max']}"
    what = "networks per (L, m)" if units == "networks" else "noise draws of the one network per (L, m)"
    lines = [f"store {result['store']}: {missing_text(result)}",
             f"{nets} {what}, k = {result['k']}; 95% intervals from {result['n_bootstrap']} "
             f"bootstrap resamples of the {units}"]
    theory_note = (result.get("random_network_theory") or {}).get("why_not")
    if result.get("by_layer") is not None:
        lines += _layer_laws(result["by_layer"])
    else:
        lines += _random_laws(result)
    if theory_note:
        lines.append(f"No random-network law or theory values: {theory_note}.")
    rows = [r for r in result.get("linear_answer", []) if r["nonlinearity"] is not None]
    if rows:
        lo, hi = min(rows, key=lambda r: r["nonlinearity"]), max(rows, key=lambda r: r["nonlinearity"])
        gain = [r["worst_over_rms"] for r in rows if r["worst_over_rms"]]
        lines.append(f"Each network's linear answer: sqrt(E R^2) / linear prediction from {lo['nonlinearity']:.4g} "
                     f"(r = {lo['ratio']:g}) to {hi['nonlinearity']:.4g} (r = {hi['ratio']:g}); the worst direction "
                     f"moves the output {min(gain):.3g} to {max(gain):.3g} times the RMS change (--json: "
                     "linear_answer, per cell)")
    return "\n".join(lines)
