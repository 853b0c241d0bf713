"""The tolerance question: the largest noise ratio r that a network tolerates, by bisection in log r.

Given a network, a data set and one perturbed layer, find the largest r at which

- ``accuracy-drop``: the clean accuracy minus the mean accuracy of the perturbed networks stays at most
  the tolerance (default 0.01, one point), or
- ``pred-change``: the mean share of inputs whose predicted class changes stays at most the tolerance
  (default 0.05).

Each level r is one ``nnsweep estimate`` at that ratio: every draw is one perturbed network applied to
every input, so the per-draw metric values are independent samples, and the level's mean gets a 95%
Student-t interval over them. The draws of a level are doubled (from ``draws`` up to :data:`MAX_DRAWS`)
until that interval's half-width is at most ``half_width`` (default a quarter of the tolerance), or the
interval lies wholly on one side of the tolerance (the comparison is then settled). Every
level uses the same random seed, so its noise directions are the same at every r, scaled (common random
numbers): the metric then changes with r only through r, which keeps the bisection's comparisons far
less noisy than independent draws would.

The bracket starts at [1e-3, 1] and widens by factors of 10 (down to 1e-8, up to 1e3) until the metric
is within the tolerance at its low end and beyond it at its high end; bisection in log r on the mean
then halves it until high / low <= 1 + ``rtol`` (default 0.02). The answer is the bracket's low end.

The interval of the answer, ``ratio_interval`` = [low, high], comes from every level evaluated: low is
the largest r whose upper 95% bound is within the tolerance, high the smallest r whose lower 95% bound
exceeds it. It assumes that the metric grows with r (true in expectation for small r, where it grows
like r^2 or faster, not guaranteed beyond) and its 95% is per level, not simultaneous over the levels;
an end is None when no level qualifies (the search range did not reach it).

This is the quantity flatness (sharpness) measures report: Keskar et al. 2017 perturb the weights
within a box of size proportional to |w| and report the largest loss increase; Jiang et al. 2019
("Fantastic generalization measures and where to find them") define their sharpness and PAC-Bayes
flatness measures through the largest sigma (magnitude-aware: noise proportional to each weight's
size) whose perturbation keeps the training loss or accuracy within a tolerance, found by bisection,
as here. Here the noise is scaled by the whole matrix's norm (||eta|| = r ||W_i||), and one layer is
perturbed at a time.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .analysis.intervals import t_interval
from .errors import UserError
from .measure import measure_block
from .spec import Spec

CRITERIA = {"accuracy-drop": 0.01, "pred-change": 0.05}  # criterion -> default tolerance
MAX_DRAWS = 4096  # draws of one level at most, however wide its interval
RANGE = (1e-8, 1e3)  # the bracket never widens beyond these ratios (spec.MIN_RATIO is below)


def parse_criterion(text: str) -> tuple[str, float]:
    """``accuracy-drop=0.01`` -> ("accuracy-drop", 0.01); the amount defaults per criterion.

    >>> parse_criterion("pred-change"), parse_criterion("accuracy-drop=0.02")
    (('pred-change', 0.05), ('accuracy-drop', 0.02))
    """
    name, sep, amount = text.partition("=")
    allowed = ("accuracy-drop[=AMOUNT] (default 0.01) or pred-change[=SHARE] (default 0.05), an amount "
               "between 0 and 1, e.g. accuracy-drop=0.01")
    try:
        value = float(amount) if sep else CRITERIA[name]
    except (KeyError, ValueError):
        value = math.nan
    if name not in CRITERIA or not 0 < value < 1:
        raise UserError(f"--find-ratio: {text!r} is not allowed; expected {allowed}.")
    return name, value


@dataclasses.dataclass(frozen=True)
class Level:
    """The metric at one ratio: its mean over the draws and the 95% interval of that mean."""

    ratio: float
    draws: int
    value: float
    low: float
    high: float

    def to_dict(self) -> dict:
        return {"ratio": self.ratio, "draws": self.draws, "value": self.value, "ci95": [self.low, self.high]}


def _per_draw(spec: Spec, criterion: str) -> tuple[np.ndarray, float]:
    """The metric of every (seed, draw) at the spec's one ratio and layer, and the clean accuracy."""
    (L,), (m,) = spec.grid.L, spec.grid.m
    with np.errstate(over="ignore", invalid="ignore"):
        block = measure_block(spec, L, m, spec.grid.seeds)
    clean = block.clean_accuracy  # (seed,)
    if criterion == "accuracy-drop":
        values = clean[:, None] - block.accuracy[0, 0]  # (seed, draw)
    else:
        values = block.pred_changed[0, 0].mean(axis=1)  # (seed, draw): share of inputs changed
    return values.ravel(), float(np.mean(clean))


class _Search:
    """The levels evaluated so far, each once."""

    def __init__(self, spec: Spec, criterion: str, tolerance: float, half_width: float):
        self.spec, self.criterion, self.tolerance, self.half_width = spec, criterion, tolerance, half_width
        self.levels: dict[float, Level] = {}
        self.clean_accuracy = math.nan

    def level(self, r: float) -> Level:
        if r not in self.levels:
            draws = self.spec.noise.draws
            while True:
                spec = dataclasses.replace(self.spec, grid=dataclasses.replace(self.spec.grid, ratio=(r,)),
                                           noise=dataclasses.replace(self.spec.noise, draws=draws))
                values, self.clean_accuracy = _per_draw(spec, self.criterion)
                mean = float(values.mean())
                ci = t_interval(values) or (mean, mean)  # all draws equal: no spread to bound
                settled = ci[0] > self.tolerance or ci[1] <= self.tolerance  # wholly on one side
                if (ci[1] - ci[0]) / 2 <= self.half_width or settled or draws >= MAX_DRAWS:
                    break
                draws = min(2 * draws, MAX_DRAWS)
            self.levels[r] = Level(r, draws, mean, *ci)
        return self.levels[r]

    def within(self, r: float) -> bool:
        return self.level(r).value <= self.tolerance


def find_ratio(spec: Spec, criterion: str = "accuracy-drop", tolerance: float | None = None,
               half_width: float | None = None, rtol: float = 0.02) -> dict:
    """The largest ratio within the tolerance, for the one perturbed layer of ``spec``.

    Args:
        spec: one network size and one layer; ``noise.draws`` is the first number of draws per level.
        criterion: ``accuracy-drop`` (needs labels) or ``pred-change``.
        tolerance: the largest allowed metric (default :data:`CRITERIA`).
        half_width: the largest half-width of a level's 95% interval (default tolerance / 4).
        rtol: the bisection stops when the bracket's high / low <= 1 + rtol.

    Returns:
        ``ratio`` (the answer), ``ratio_interval``, ``bracket``, the ``levels`` evaluated (sorted by
        ratio), the criterion, tolerance, half-width, layer and clean accuracy.

    Raises:
        UserError: several layers or network sizes, accuracy-drop without labels, a bad tolerance.
    """
    tolerance = CRITERIA[criterion] if tolerance is None else tolerance
    half_width = tolerance / 4 if half_width is None else half_width
    _check(spec, criterion, tolerance, half_width)
    search = _Search(spec, criterion, tolerance, half_width)
    lo, hi = 1e-3, 1.0
    while not search.within(lo) and lo / 10 >= RANGE[0] * (1 - 1e-9):
        lo, hi = lo / 10, lo
    while search.within(hi) and hi * 10 <= RANGE[1] * (1 + 1e-9):
        lo, hi = hi, hi * 10
    bracketed = search.within(lo) and not search.within(hi)
    while bracketed and hi / lo > 1 + rtol:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if search.within(mid) else (lo, mid)
    levels = sorted(search.levels.values(), key=lambda v: v.ratio)
    inside = [v.ratio for v in levels if v.high <= tolerance]
    beyond = [v.ratio for v in levels if v.low > tolerance]
    return {
        "criterion": criterion, "tolerance": tolerance, "half_width": half_width, "layer": spec.grid.layer[0],
        "ratio": lo if bracketed else None,
        "ratio_interval": [max(inside) if inside else None, min(beyond) if beyond else None],
        "bracket": [lo, hi] if bracketed else None,
        "clean_accuracy": search.clean_accuracy if criterion == "accuracy-drop" else None,
        "levels": [v.to_dict() for v in levels],
        "note": None if bracketed else (f"the metric stays within the tolerance up to r = {RANGE[1]:g}"
                                        if search.within(hi) else
                                        f"the metric exceeds the tolerance already at r = {lo:g}"),
    }


def _check(spec: Spec, criterion: str, tolerance: float, half_width: float) -> None:
    if criterion not in CRITERIA:
        raise UserError(f"criterion: {criterion!r} is not allowed; expected one of {', '.join(CRITERIA)}.")
    if not 0 < tolerance < 1 or not 0 < half_width < 1:
        raise UserError(f"tolerance {tolerance!r} and half_width {half_width!r}: expected numbers between 0 and 1.")
    if len(spec.grid.L) != 1 or len(spec.grid.m) != 1:
        raise UserError("find_ratio answers for one network size; the spec lists L = "
                        f"{list(spec.grid.L)} and m = {list(spec.grid.m)}.")
    if len(spec.grid.layer) != 1:
        raise UserError(f"layer: {list(spec.grid.layer)} is not allowed with --find-ratio; expected one layer "
                        "(the largest tolerated noise is a property of the layer perturbed), e.g. --layer 1.")
    if criterion == "accuracy-drop" and spec.network.labels is None:
        raise UserError("--find-ratio accuracy-drop needs labels (--labels, or labels= in Python); "
                        "without them, use pred-change (the share of predictions that change).")


def lines(found: dict) -> list[str]:
    """The answer of :func:`find_ratio` as text: the levels evaluated, then the answer and its interval."""
    what = "accuracy drop" if found["criterion"] == "accuracy-drop" else "share of predictions changed"
    out = [f"largest r with {what} <= {found['tolerance']:g} (layer {found['layer']}; each level's 95% interval "
           f"narrowed to +-{found['half_width']:g} or {MAX_DRAWS} draws)",
           f"{'ratio':>12} {'draws':>6} {what:>28} {'95% CI':>21}"]
    for v in found["levels"]:
        lo, hi = v["ci95"]
        out.append(f"{v['ratio']:12.5g} {v['draws']:6d} {v['value']:28.4g} [{lo:9.4g}, {hi:9.4g}]")
    low, high = (f"{x:.4g}" if x is not None else "-" for x in found["ratio_interval"])
    answer = f"{found['ratio']:.4g}" if found["ratio"] is not None else f"none ({found['note']})"
    out.append(f"r = {answer}; interval [{low}, {high}] (largest r whose upper bound is within, smallest whose "
               "lower bound is beyond)")
    return out
