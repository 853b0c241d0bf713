"""The report's control-variate answer for stores of one network per (L, m) (docs/linear-answer.md).

The store holds every draw's ||v - v*|| and first-order change; the cheap draws of the first-order
change alone come from the network, rebuilt from the spec the store recorded (the same files, checked
by their hashes), exactly as ``nnsweep estimate`` draws them.
"""

from __future__ import annotations

import numpy as np

from ..control import cheap_draws_for, cv_estimate
from ..errors import UserError
from ..spec import Spec, result_fields
from .summaries import Results, unit_view

CV_READS = ("delta_norm", "linear_change", "pred_changed", "linear_pred_changed", "output_norm")


def recorded_spec(recorded: dict) -> Spec | str:
    """The spec a store recorded, validated again (its files read and hashed), or why it cannot be."""
    net = {k: v for k, v in recorded["network"].items() if k not in ("files", "read") and v is not None}
    if net.get("input", "gaussian") != "gaussian":
        net.pop("n_inputs", None)  # an input file's rows are the inputs
    raw = {**{k: v for k, v in recorded.items() if k not in ("network", "execution")}, "network": net,
           "execution": {k: v for k, v in recorded["execution"].items() if k != "storage_options"}}
    try:
        spec = Spec.from_dict(raw)
    except UserError as e:
        return f"the recorded spec cannot be read again ({e})"
    if spec.result_fields != result_fields(recorded):
        return "a file the spec names has changed since the store was made"
    return spec


def cv_answers(results: Results, ratio: float, rows: list[dict]) -> list[dict | str]:
    """For each answer row (:func:`pipeline.analysis.report.answer`) of a store with one network per (L, m):
    the control-variate E R at ``ratio`` over the row's layers (``mean``, ``ci95``, ``width_ratio`` against
    the row's plain interval, ``cheap_draws``), or a sentence saying why there is none. The cheap draws
    are those ``nnsweep estimate`` takes for the same spec (their number depends on every ratio's draws)."""
    spec = recorded_spec(results.spec)
    ds, mask = unit_view(results)
    out = []
    for row in rows:
        if isinstance(spec, str):
            out.append(spec)
            continue
        if not mask.sel(L=row["L"], m=row["m"]).values.all():
            out.append("not every draw of this network is done")
            continue
        cell = ds.sel(L=row["L"], m=row["m"], layer=row["layers"])
        (vals,) = results.compute((cell[list(CV_READS)],), CV_READS)
        full = {v: vals[v].transpose("ratio", "layer", "input", "seed").values for v in CV_READS[:4]}
        out.append(_one(spec, row, list(ds.ratio.values).index(ratio), full, vals["output_norm"].values,
                        int(results.ds.seed.values[0])))
    return out


def _one(spec: Spec, row: dict, r: int, full: dict, norm: np.ndarray, seed: int) -> dict | str:
    if not np.all(np.isfinite(full["linear_change"])):
        return "the store has no first-order change for these draws"
    cheap = cheap_draws_for(spec, row["L"], row["m"], seed, full["delta_norm"], full["linear_change"], norm,
                            full["pred_changed"], full["linear_pred_changed"],
                            layers=list(row["layers"]))  # the arrays' layer columns: the row's
    y = (full["delta_norm"][r] / norm[None, :, None]).mean(axis=(0, 1))
    c = (full["linear_change"][r] / norm[None, :, None]).mean(axis=(0, 1))
    cv = cv_estimate(y, c, cheap.mean([spec.grid.ratio[r]], list(row["layers"])))
    if cv is None or cv.ci95 is None:
        return "fewer than 3 draws, or no spread in the first-order change"
    plain = row["ci95"]
    return {"mean": cv.mean, "ci95": list(cv.ci95), "cheap_draws": min(c.change.draws for c in cheap.by_layer.values()),
            "width_ratio": (plain[1] - plain[0]) / (cv.ci95[1] - cv.ci95[0]) if plain else None}


def cv_lines(rows: list[dict], answers: list[dict | str], ratio: float) -> list[str]:
    """The control-variate answer under the plain one, a line per (L, m)."""
    lines = ["", f"With the network's first-order change as control variate (the same draws, plus cheap draws of "
             "the first-order change alone; docs/linear-answer.md), at r = " + f"{ratio:g}:", ""]
    for row, a in zip(rows, answers):
        head = f"- for L = {row['L']}, m = {row['m']}"
        if isinstance(a, str):
            lines.append(f"{head}: no control-variate estimate: {a}.")
            continue
        wider = f", {a['width_ratio']:.3g} times narrower than the plain interval" if a["width_ratio"] else ""
        lines.append(f"{head}, E||v - v*|| / ||v|| = **{a['mean']:.4g}** [{a['ci95'][0]:.4g}, {a['ci95'][1]:.4g}] "
                     f"({a['cheap_draws']} cheap draws per layer{wider}).")
    return lines
