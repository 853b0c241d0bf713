"""Scaling-law fits of per-unit summaries, with 95% bootstrap intervals over networks (or draws).

The summaries come from :func:`pipeline.analysis.summaries.load`; every statistic is computed from them:

- cell = (L, m, ratio, layer), layer <= L; its statistics pool seeds, inputs and draws;
- ``mean`` = E R (the quantity the question asks about), ``gmean`` =
  exp(E log R) (the median of a log-normal R: what the arc-cosine attenuation
  predicts at finite width), ``log_var`` = Var log R over seeds, inputs and draws.

The bootstrap resamples networks (seeds) with replacement, independently for
each (L, m) and only among the seeds that are done, and refits every model on
each resample. A store of one network per (L, m) (a single network file, or
one seed) resamples its noise draws instead: they are what varies
independently there. Intervals are percentile intervals.

The models of random networks (a power law in r, L and m; the depth attenuation; the finite-width
spread) are fitted where the random-network theory applies (random ReLU networks,
:attr:`pipeline.analysis.recorded.Networks.theory_applies`). Given networks get one law per
perturbed layer instead, E R = C r^a over the ratios; random non-ReLU networks keep the power law
and the spread, without theory values. See docs/analysis.md.

>>> X = np.column_stack([np.ones(3), np.log([0.01, 0.1, 1.0])])
>>> np.round(lstsq(X, np.log([0.02, 0.2, 2.0])[:, None])[:, 0], 6)
array([0.693147, 1.      ])
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import xarray as xr
from scipy import optimize
from tqdm.auto import tqdm

from ..jsonout import num
from . import theory
from .summaries import CELL, Sample

SMALL_R = 0.1  # the "small r" fits use ratio <= SMALL_R
POSITIONS = ("first", "middle", "last")
BATCH = 100  # bootstrap resamples per vectorised batch


# --- cell statistics ------------------------------------------------------------------

def bootstrap_weights(present: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Resampling counts (n, L, m, seed): seeds drawn with replacement per (L, m) among present ones."""
    w = np.zeros((n,) + present.shape)
    for li, mi in np.ndindex(present.shape[:2]):
        idx = np.flatnonzero(present[li, mi])
        if idx.size:
            w[:, li, mi, idx] = rng.multinomial(idx.size, np.full(idx.size, 1.0 / idx.size), size=n)
    return w


def cell_stats(net: xr.Dataset, weights: np.ndarray, draws: int) -> dict[str, np.ndarray]:
    """Cell statistics (b, L, m, ratio, layer) for seed weights (b, L, m, seed).

    ``weights`` are 0/1 for the sample itself and resampling counts for a
    bootstrap; ``draws`` is the number of values of R behind each network's
    summaries (its inputs times its draws). A cell without data (layer > L, or weight 0 on every seed
    that has data) is NaN.
    """
    b, nL, nm, ns = weights.shape
    w = weights.transpose(1, 2, 0, 3)  # (L, m, b, seed): one matrix product per (L, m)

    def wsum(x: np.ndarray) -> np.ndarray:
        nr, ni = x.shape[3:]
        s = np.matmul(w, x.reshape(nL, nm, ns, nr * ni))  # (L, m, b, ratio * layer)
        return s.transpose(2, 0, 1, 3).reshape(b, nL, nm, nr, ni)

    values = {v: net[v].transpose("L", "m", "seed", "ratio", "layer").values for v in ("mean", "sq", "log", "log2")}
    n = wsum(np.isfinite(values["mean"]).astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean, sq, log, log2 = (np.where(n > 0, wsum(np.nan_to_num(x)) / n, np.nan) for x in values.values())
        pooled = n * draws
        log_var = (log2 - log**2) * pooled / (pooled - 1)
        return {"mean": mean, "rms": np.sqrt(sq), "gmean": np.exp(log), "log_var": log_var}


# --- models ---------------------------------------------------------------------------

def lstsq(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Least-squares coefficients (p, b) for every column of Y (n, b)."""
    return np.linalg.lstsq(X, Y, rcond=None)[0]


@dataclasses.dataclass
class Cells:
    """The flat list of cells with data and their coordinates."""

    L: np.ndarray
    m: np.ndarray
    ratio: np.ndarray
    layer: np.ndarray
    index: np.ndarray  # flat index into the (L, m, ratio, layer) grid

    @classmethod
    def from_grid(cls, net: xr.Dataset, valid: np.ndarray) -> Cells:
        grids = np.meshgrid(*(net[d].values for d in CELL), indexing="ij")
        index = np.flatnonzero(valid.ravel())
        return cls(*(g.ravel()[index].astype(float) for g in grids), index=index)

    @property
    def depth_after(self) -> np.ndarray:
        return self.L - self.layer

    @property
    def position(self) -> np.ndarray:
        """first (i = 1 < L), middle (1 < i < L) or last (i = L, the read-out)."""
        return np.where(self.layer == self.L, "last", np.where(self.layer == 1, "first", "middle"))

    def take(self, stat: np.ndarray) -> np.ndarray:
        """A (b, L, m, ratio, layer) statistic as (cells, b)."""
        return stat.reshape(stat.shape[0], -1)[:, self.index].T


class Model:
    """A model fitted on a selection of cells to one statistic; subclasses define solve()."""

    params: tuple[str, ...] = ()

    def __init__(self, cells: Cells, select: np.ndarray, stat: str, theory_values: dict | None = None):
        self.cells, self.select, self.stat = cells, select, stat
        self.theory = theory_values or {}

    def response(self, stats: dict) -> np.ndarray:
        """The fitted quantity for the selected cells, (n, b)."""
        return np.log(self.cells.take(stats[self.stat])[self.select])

    def solve(self, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def start_from(self, coef: np.ndarray) -> None:
        """Start later solves (the bootstrap) from the sample's solution; only iterative fits use it."""

    def predict(self, coef: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def summary(self, y: np.ndarray, point: np.ndarray, boot: np.ndarray) -> dict:
        """Point estimates with percentile intervals, R^2 and residuals (y, point for the sample)."""
        resid = y - self.predict(point)
        ss_tot = float(np.sum((y - y.mean()) ** 2))
        out = {name: _param(point[j], boot[j]) for j, name in enumerate(self.params)}
        out.update({
            "r2": num(1.0 - np.sum(resid**2) / ss_tot) if ss_tot > 0 else None,
            "rmse": num(np.sqrt(np.mean(resid**2))),
            "max_abs_residual": num(np.max(np.abs(resid))),
            "n_cells": int(self.select.sum()),
            "statistic": self.stat,
        })
        if self.theory:
            out["theory"] = self.theory
        return out


class PowerLaw(Model):
    """log stat = log C + a log r + b log L + c log m (axes with one value are left out).

    ``curve``, the infinite-width prediction of the statistic in every cell, is
    fitted by the same law: its exponents (``theory.arccos``) are what theory
    expects on this very grid, depth attenuation included.
    """

    params = ("C", "ratio", "L", "m")

    def __init__(self, cells, select, stat="mean", curve=None):
        super().__init__(cells, select, stat)
        cols = [np.ones(cells.L.size), np.log(cells.ratio), np.log(cells.L), np.log(cells.m)]
        self.X = np.column_stack(cols)[select]
        self.free = [0] + [j for j in (1, 2, 3) if np.ptp(self.X[:, j]) > 0]
        if curve is not None:
            arccos = self.solve(np.log(curve[select])[:, None])[:, 0]
            self.theory = {"first_order": {"C": 1.0, "ratio": 1.0, "L": 0.0, "m": 0.0},
                           "arccos": {p: num(v) for p, v in zip(self.params, arccos)}}

    def solve(self, y):
        coef = np.full((4, y.shape[1]), np.nan)
        coef[self.free] = lstsq(self.X[:, self.free], y)
        coef[0] = np.exp(coef[0])
        return coef

    def predict(self, coef):
        c = np.where(np.isnan(coef), 0.0, coef)
        return np.log(c[0]) + self.X[:, 1:] @ c[1:]


class Attenuation(Model):
    """log gmean = log C + a log r - log(1 + beta (L - i) r), by nonlinear least squares.

    Theory (arc-cosine kernel, closed form): C = 1, a = 1, beta = 1 / (3 pi).
    A parameter the cells cannot identify (a with a single ratio, beta
    without a layer after the perturbed one) is held at its theory value and
    reported as None.
    """

    params = ("C", "ratio", "beta")

    def __init__(self, cells, select, stat="gmean", theory_values=None):
        super().__init__(cells, select, stat, theory_values)
        self.logr = np.log(cells.ratio[select])
        self.dr = (cells.depth_after * cells.ratio)[select]
        self.x0 = np.array([0.0, 1.0, theory.ATTENUATION_BETA])
        top = self.dr.max()
        self.lower = np.array([-np.inf, -np.inf, -0.99 / top if top > 0 else -np.inf])
        jac = self._jac(self.x0)
        self.free: list[int] = []
        for j in range(3):  # keep the columns that add to the rank of the Jacobian
            if np.linalg.matrix_rank(jac[:, self.free + [j]]) == len(self.free) + 1:
                self.free.append(j)

    def _curve(self, p):
        return p[0] + p[1] * self.logr - np.log1p(p[2] * self.dr)

    def _jac(self, p):
        """Jacobian of the residual y - curve(p)."""
        return np.column_stack([-np.ones_like(self.logr), -self.logr, self.dr / (1.0 + p[2] * self.dr)])

    def start_from(self, coef):
        start = np.array([np.log(coef[0]), coef[1], coef[2]])
        self.x0 = np.where(np.isfinite(start), start, self.x0)

    def _solve_one(self, y: np.ndarray) -> np.ndarray:
        # Levenberg-Marquardt (MINPACK) is fast; if it leaves the domain 1 + beta (L - i) r > 0,
        # refit with the bound (trust region reflective).
        free, x = self.free, self.x0.copy()

        def full(q):
            x[free] = q
            return x

        fun = lambda q: y - self._curve(full(q))  # noqa: E731
        jac = lambda q: self._jac(full(q))[:, free]  # noqa: E731
        with np.errstate(invalid="ignore"):
            res = optimize.least_squares(fun, self.x0[free], jac=jac, method="lm")
        if not (res.success and np.all(np.isfinite(res.fun)) and full(res.x)[2] > self.lower[2]):
            res = optimize.least_squares(fun, self.x0[free], jac=jac, bounds=(self.lower[free], np.inf),
                                         method="trf")
        out = np.full(3, np.nan)
        out[free] = res.x
        return out

    def solve(self, y):
        coef = np.column_stack([self._solve_one(y[:, b]) for b in range(y.shape[1])])
        coef[0] = np.exp(coef[0])
        return coef

    def predict(self, coef):
        c = np.array([np.log(coef[0]), coef[1], coef[2]])
        return self._curve(np.where(np.isfinite(c), c, self.x0))


class Scale(Model):
    """log stat = log s + log(theory curve): one scale factor s against a fixed prediction."""

    params = ("scale",)

    def __init__(self, cells, select, stat, curve: np.ndarray, theory_values=None):
        super().__init__(cells, select, stat, theory_values)
        self.log_curve = np.log(curve[select])

    def solve(self, y):
        return np.exp(lstsq(np.ones((y.shape[0], 1)), y - self.log_curve[:, None]))

    def predict(self, coef):
        return np.log(coef[0]) + self.log_curve


class LogVariance(Model):
    """Var log R = slope (L - i) / m + intercept; theory: slope 2, intercept 1 / k."""

    params = ("slope", "intercept")

    def __init__(self, cells, select, stat="log_var", theory_values=None):
        super().__init__(cells, select, stat, theory_values)
        self.X = np.column_stack([(cells.depth_after / cells.m)[select], np.ones(select.sum())])

    def response(self, stats):
        return self.cells.take(stats[self.stat])[self.select]

    def solve(self, y):
        if np.ptp(self.X[:, 0]) == 0:
            coef = np.full((2, y.shape[1]), np.nan)
            coef[1] = y.mean(axis=0)
            return coef
        return lstsq(self.X, y)

    def predict(self, coef):
        return np.nan_to_num(coef[0]) * self.X[:, 0] + coef[1]


def _param(value: float, boot: np.ndarray) -> dict:
    if not np.isfinite(value):
        return {"value": None, "ci95": [None, None]}
    finite = boot[np.isfinite(boot)]
    lo, hi = np.percentile(finite, [2.5, 97.5]) if finite.size else (None, None)
    return {"value": float(value), "ci95": [num(lo), num(hi)]}


# --- the fit --------------------------------------------------------------------------

def models(sample: Sample, cells: Cells, has_var: np.ndarray) -> dict[str, Model]:
    """Every model of the fit, keyed as in the JSON output; ``has_var``: cells with a log variance.

    Random ReLU networks get the laws of the random-network theory with its values beside them;
    random networks of another activation the same power laws and spread without theory; given
    networks one law E R = C r^a per perturbed layer (``by_layer/<n>``, a list in the JSON).
    A model whose selection holds fewer than two cells is left out.
    """
    if sample.networks.given:
        return {f"by_layer/{n}": PowerLaw(cells, sel) for n, sel in enumerate(_layer_cells(cells))
                if sel.sum() >= 2}
    relu = sample.networks.theory_applies
    small = cells.ratio <= SMALL_R * (1 + 1e-9)
    everything = np.ones(cells.L.size, bool)
    att = theory.attenuation(cells.ratio, cells.depth_after.astype(int))
    mean_curve = att * theory.mean_over_median(cells.depth_after, cells.m, sample.k) if relu else None
    candidates = {
        "power_law": (everything, lambda sel: PowerLaw(cells, sel, curve=mean_curve)),
        "power_law_small_r": (small, lambda sel: PowerLaw(cells, sel, curve=mean_curve)),
        **{f"by_position/{pos}": (cells.position == pos, lambda sel: PowerLaw(cells, sel, curve=mean_curve))
           for pos in POSITIONS},
        "log_variance": (has_var, lambda sel: LogVariance(
            cells, sel, theory_values={"slope": 2.0, "intercept": 1.0 / sample.k} if relu else None)),
    }
    if relu:
        candidates.update({
            "attenuation": (everything, lambda sel: Attenuation(
                cells, sel, theory_values={"C": 1.0, "ratio": 1.0, "beta": theory.ATTENUATION_BETA})),
            "attenuation/scale_gmean": (everything, lambda sel: Scale(cells, sel, "gmean", att, {"scale": 1.0})),
            "attenuation/scale_mean": (everything, lambda sel: Scale(cells, sel, "mean", mean_curve,
                                                                     {"scale": 1.0})),
        })
    return {name: make(sel) for name, (sel, make) in candidates.items() if sel.sum() >= 2}


def _layer_cells(cells: Cells) -> list[np.ndarray]:
    """The selection of each (L, m, layer), in grid order: its cells are its ratios."""
    keys = np.column_stack([cells.L, cells.m, cells.layer])
    return [np.all(keys == k, axis=1) for k in np.unique(keys, axis=0)]


def fit(sample: Sample, n_boot: int = 1000, seed: int = 0, progress: bool = True,
        with_cells: bool = False) -> dict:
    """Fit every model to a sample, with bootstrap intervals over its units (networks, or one network's draws).

    Args:
        sample: from :func:`pipeline.analysis.summaries.load`.
        n_boot: bootstrap resamples (0: no intervals).
        seed: seed of the resampling, so a fit is reproducible.
        progress: show a progress bar on stderr when the bootstrap takes a while.
        with_cells: add ``cells``, a per-cell table of statistics, fits and residuals.

    Returns:
        The JSON-ready result (see docs/analysis.md).
    """
    point_stats = cell_stats(sample.net, sample.present[None].astype(float), sample.draws)
    valid = np.isfinite(point_stats["mean"][0])
    cells = Cells.from_grid(sample.net, valid)
    mdls = models(sample, cells, np.isfinite(cells.take(point_stats["log_var"])[:, 0]))
    ys = {name: mdl.response(point_stats) for name, mdl in mdls.items()}
    points = {name: mdl.solve(ys[name]) for name, mdl in mdls.items()}
    for name, mdl in mdls.items():
        mdl.start_from(points[name][:, 0])
    boots = _bootstrap(sample, mdls, n_boot, seed, progress)
    summaries = {name: mdl.summary(ys[name][:, 0], points[name][:, 0], boots[name])
                 for name, mdl in mdls.items()}
    out = {"store": sample.path, **sample.coverage, "k": sample.k, "n_bootstrap": n_boot,
           "bootstrap_seed": seed, "bootstrap_over": sample.units, f"{sample.units}_per_L_m": _networks(sample)}
    nets = sample.networks
    out["random_network_theory"] = {"applies": nets.theory_applies, "why_not": nets.why_no_theory or None}
    out.update(_nest(summaries))
    if nets.given:
        out["by_layer"] = _by_layer(cells, mdls, out.pop("by_layer", {}))
        out["power_law"] = None
    out.setdefault("power_law_small_r", None)
    if with_cells:
        out["cells"] = _cell_table(sample, cells, point_stats, mdls, points)
    return out


def _bootstrap(sample: Sample, mdls: dict[str, Model], n_boot: int, seed: int, progress: bool) -> dict:
    rng = np.random.default_rng(seed)
    boots = {name: [] for name in mdls}
    bar = tqdm(total=n_boot, desc="bootstrap", unit="resample", file=sys.stderr, delay=2.0,
               disable=not progress or n_boot == 0)
    with bar:
        for start in range(0, n_boot, BATCH):
            b = min(BATCH, n_boot - start)
            stats = cell_stats(sample.net, bootstrap_weights(sample.present, b, rng), sample.draws)
            for name, mdl in mdls.items():
                boots[name].append(mdl.solve(mdl.response(stats)))
            bar.update(b)
    return {name: np.concatenate(v, axis=1) if v else np.empty((len(mdls[name].params), 0))
            for name, v in boots.items()}


def _nest(summaries: dict) -> dict:
    out: dict = {}
    for name, s in summaries.items():
        head, _, tail = name.partition("/")
        if tail:
            out.setdefault(head, {})[tail] = s
        else:
            out.setdefault(head, {}).update(s)
    return out


def _by_layer(cells: Cells, mdls: dict, laws: dict) -> list[dict]:
    """The per-layer laws of given networks as rows naming their (L, m, layer)."""
    rows = []
    for n, law in sorted(laws.items(), key=lambda kv: int(kv[0])):
        j = np.flatnonzero(mdls[f"by_layer/{n}"].select)[0]
        rows.append({"L": int(cells.L[j]), "m": int(cells.m[j]), "layer": int(cells.layer[j]),
                     **{k: v for k, v in law.items() if k not in ("L", "m")}})
    return rows


def _networks(sample: Sample) -> dict:
    counts = sample.present.sum(axis=2)
    return {"min": int(counts.min()), "max": int(counts.max())}


def _cell_table(sample: Sample, cells: Cells, stats: dict, mdls: dict, points: dict) -> list[dict]:
    rows = {name: cells.take(stats[name])[:, 0] for name in ("mean", "rms", "gmean", "log_var")}
    fitted = np.full(cells.L.size, np.nan)
    if "power_law" in mdls:
        fitted = np.exp(mdls["power_law"].predict(points["power_law"][:, 0]))
    relu = sample.networks.theory_applies
    att = theory.attenuation(cells.ratio, cells.depth_after.astype(int)) if relu else fitted * np.nan
    return [{"L": int(cells.L[j]), "m": int(cells.m[j]), "ratio": float(cells.ratio[j]),
             "layer": int(cells.layer[j]), **{k: num(v[j]) for k, v in rows.items()},
             "power_law": num(fitted[j]), "residual_log": num(np.log(rows["mean"][j] / fitted[j])),
             "theory_attenuation": num(att[j])} for j in range(cells.L.size)]
