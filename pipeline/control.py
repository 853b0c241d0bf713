"""Control variates for one network: the first-order change C = ||J_i eta h_{i-1}|| as the control of
Y = ||v - v*||, with E[C] from many cheap draws of its own.

E[Y] = beta E[C] + E[Y - beta C] for any beta. The full draws give pairs (Y, C)
with the same eta; the cheap draws give C alone, from a random stream of their
own (:data:`CHEAP_STREAM`), and need only eta h_{i-1} and J_i of that layer:
no pass through the network. docs/linear-answer.md derives why the residual
Y - beta C has a vanishing variance as r -> 0, why beta is estimated (the
regression coefficient Cov(Y, C) / Var(C) of the full draws) rather than
fixed at 1, and the interval. The statistics (:func:`plain_estimate`,
:func:`cv_estimate`, :func:`cheap_draws_needed`, :func:`cv_summary`, the fields
``nnsweep estimate`` adds) are plain numpy on samples; how many cheap draws to take
weighs what they win against what they cost (:func:`cheap_draws_optimal`,
:func:`cost_capped`, with the costs of :mod:`pipeline.drawcost`);
:func:`cheap_first_order` draws the cheap samples of one network, :func:`cheap_draws_for` those of a
spec's network. The same idea serves ``pred_changed`` with the first-order
crossing as control.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .analysis.intervals import SERIES_MAX_DF, t_quantile
from .drawcost import cheap_draw_seconds, full_draw_work
from .jsonout import num
from .measure import crossing_threshold, first_order, jacobians, run_pass
from .network import Network
from .noise import LayerNoise, matrix_norm
from .schema import TOGETHER

# The spawn key's first entry of the cheap draws' streams: the network module's streams are 0 (inputs),
# 1 (weights) and 2 (the full draws' noise), so these never share a number with the full draws.
CHEAP_STREAM = 3
# The cheap mean's standard error is at most this share of the plain estimate's (as the full draws
# estimate both): the control-variate interval is then at most about 1 / CHEAP_SE_FRACTION = 8 times
# narrower than the plain one of the same full draws.
CHEAP_SE_FRACTION = 0.125
# The same for the prediction-change rate, whose first-order control explains less and whose cheap draws
# cost O(k r) each rather than O(r): its control-variate interval is at most about 4 times narrower.
PRED_SE_FRACTION = 0.25
# Where each cheap draw is one eta shared by every input (noise that is not rotation-invariant), it costs a
# good part of a full draw (eta H, or a spectral norm per draw): at most this many per full draw, so the
# interval narrows by up to about 2 times for at most a few times the full draws' noise.
CHEAP_SHARED_PER_FULL = 4
# Where each input's cheap draws are its own (rotation-invariant noise), the cheap draws of a layer cost at
# most this multiple of its full draws, as pipeline.drawcost models both: the default estimate then takes at
# most about 1 + CHEAP_COST_CAP times the plain one (--no-control-variate), wherever the precision rule and
# the cost-optimal count (:func:`cheap_draws_optimal`) would ask for more.
CHEAP_COST_CAP = 1.0
# values of eta h per batch of cheap draws (8 MiB in float64): the rotation-invariant draws' normals of a batch
# then stay in the cache between the passes over them, which made them 1.3-1.6 times faster than 2**22
CHEAP_BATCH_VALUES = 2**20


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A mean with its 95% interval: ``ci95`` None when undefined (fewer samples than the method needs,
    or no spread at all)."""

    mean: float
    ci95: tuple[float, float] | None
    se: float     # standard error of ``mean``
    df: float     # degrees of freedom of the t quantile


@dataclasses.dataclass(frozen=True)
class CheapMean:
    """E[C] of one selection of cells from the cheap draws: the mean, the variance of that mean,
    and the degrees of freedom of that variance (cheap draws - 1, or a Satterthwaite combination)."""

    mean: float
    var: float
    df: float


def plain_estimate(y: np.ndarray) -> Estimate:
    """The mean of independent samples with its Student-t interval (N - 1 degrees of freedom)."""
    y = np.asarray(y, dtype=np.float64)
    n = y.size
    se = float(y.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return Estimate(float(y.mean()), _interval(float(y.mean()), se, n - 1), se, n - 1)


def cv_estimate(y: np.ndarray, c: np.ndarray, cheap: CheapMean) -> Estimate | None:
    """The control-variate estimate of E[Y] from N pairs (y, c) of the same draws and E[C] from cheap draws.

    beta is the least-squares slope of y on c, so the estimate ybar + beta (mu - cbar) is the
    regression line's value at the cheap mean mu. Its variance, with s^2 the residual variance
    (N - 2 degrees of freedom) and S = sum (c - cbar)^2:

        s^2 (1/N + ((mu - cbar)^2 + Var mu) / S) + beta^2 Var mu,

    the regression's own prediction variance (which carries the error of estimating beta) plus the
    cheap mean's, through beta and through the slope's error. The t quantile's degrees of freedom
    combine the two parts (Welch-Satterthwaite).

    Returns:
        The estimate, or None with fewer than 3 full draws or no spread of c (no slope to estimate).
    """
    y, c = np.asarray(y, dtype=np.float64), np.asarray(c, dtype=np.float64)
    n = y.size
    cbar, ybar = c.mean(), y.mean()
    s_cc = float(np.sum((c - cbar) ** 2))
    if n < 3 or not s_cc > 0 or not np.isfinite(cheap.mean):
        return None
    beta = float(np.sum((c - cbar) * (y - ybar)) / s_cc)
    resid = y - ybar - beta * (c - cbar)
    s2 = float(np.sum(resid**2) / (n - 2))
    mean = float(ybar + beta * (cheap.mean - cbar))
    regression = s2 * (1 / n + ((cheap.mean - cbar) ** 2 + cheap.var) / s_cc)
    cheap_part = beta**2 * cheap.var
    var = regression + cheap_part
    den = (regression**2 / (n - 2) if regression else 0.0) + (cheap_part**2 / cheap.df if cheap_part else 0.0)
    df = var**2 / den if den > 0 else math.inf
    return Estimate(mean, _interval(mean, math.sqrt(var), df), math.sqrt(var), df)


def slope(y: np.ndarray, c: np.ndarray) -> float:
    """beta = Cov(y, c) / Var(c) of paired samples; NaN without spread in c."""
    c = np.asarray(c, dtype=np.float64)
    s_cc = float(np.sum((c - c.mean()) ** 2))
    return float(np.sum((c - c.mean()) * (y - np.mean(y))) / s_cc) if s_cc > 0 else math.nan


def cheap_draws_needed(y: np.ndarray, c: np.ndarray, per_draw_var: float,
                       fraction: float = CHEAP_SE_FRACTION, full_draws: int | None = None) -> int:
    """How many cheap draws make the cheap mean's share of the variance, beta^2 v / M (v = ``per_draw_var``,
    the variance of one cheap draw's contribution), ``fraction``^2 times the plain estimate's Var(Y) / N:
    M = N beta^2 v / (fraction^2 Var(Y)), at least 2; beta and Var(Y) from the N full draws.

    So the cheap draws cost in proportion to what they can win: many where C explains Y (small r),
    few where it does not (large r). With v = Var(C) (one eta for all inputs) M = N rho^2 / fraction^2,
    at most 64 N for the default fraction 1/8. ``full_draws``: N when ``y`` and ``c`` are only the first
    of the full draws (beta and Var(Y) estimated from them); by default their number.
    """
    y = np.asarray(y, dtype=np.float64)
    beta = slope(y, c)
    var_y = float(y.var(ddof=1)) if y.size > 1 else 0.0
    if y.size < 3 or not np.isfinite(beta) or not var_y > 0:
        return 2
    return max(2, math.ceil((full_draws or y.size) * beta**2 * per_draw_var / (fraction**2 * var_y)))


def cheap_draws_optimal(y: np.ndarray, c: np.ndarray, per_draw_var: float, cost_ratio: float,
                        full_draws: int | None = None) -> float:
    """The number of cheap draws M that minimises variance x time at N full draws: with full draws of cost
    c_f and cheap ones of cost c_c, Var = s^2 / N + beta^2 v / M and time = N c_f + M c_c, whose product is
    least at

        M* = N sqrt(beta^2 v c_f / (s^2 c_c)),

    s^2 the residual variance of Y on C (N - 2 degrees of freedom), beta and s^2 from the N full draws.
    There the cheap mean's share of the variance equals the cheap draws' share of the time.

    Args:
        per_draw_var: v, the variance of one cheap draw's contribution (as for :func:`cheap_draws_needed`).
        cost_ratio: c_f / c_c.
        full_draws: N, when ``y`` and ``c`` are only the first of the full draws.

    Returns:
        M* (not rounded); inf where the residual has no spread (C explains Y exactly), 0 where the slope
        is undefined (no spread of C, fewer than 3 draws).
    """
    y, c = np.asarray(y, dtype=np.float64), np.asarray(c, dtype=np.float64)
    beta = slope(y, c)
    if y.size < 3 or not np.isfinite(beta):
        return 0.0
    s2 = float(np.sum((y - y.mean() - beta * (c - c.mean())) ** 2) / (y.size - 2))
    gain = beta**2 * per_draw_var * cost_ratio
    if not gain > 0:
        return 0.0
    return math.sqrt(gain / s2) * (full_draws or y.size) if s2 > 0 else math.inf


def rotation_invariant(distribution: str, norm: str) -> bool:
    """Whether eta's law is that of s G / ||G||_F, G standard normal: Gaussian or sphere noise with Frobenius
    scaling. Then one input's first-order change can be drawn alone in O(k) (:func:`independent_first_order`)."""
    return distribution in ("gaussian", "sphere") and norm == "frobenius"


@dataclasses.dataclass(frozen=True)
class LayerCheap:
    """A cheap estimate of one expectation of one layer (ratio 1 for the first-order change)."""

    mean: float
    var: float    # variance of ``mean``
    draws: int    # cheap draws (per input, where the inputs' draws are their own)
    df: float     # degrees of freedom of ``var``

    @classmethod
    def of_draws(cls, sample: np.ndarray) -> LayerCheap:
        """From independent draws of the estimated quantity itself."""
        return cls(float(sample.mean()), float(sample.var(ddof=1) / sample.size), sample.size, sample.size - 1)

    @classmethod
    def of_inputs(cls, mean: np.ndarray, var: np.ndarray, weights: np.ndarray, draws: int) -> LayerCheap:
        """sum_p weights_p E[X_p] from ``draws`` independent draws per input, each input's own (sample mean and
        variance per input); the degrees of freedom combine the inputs' (Welch-Satterthwaite)."""
        parts = weights**2 * var / draws
        total = float(parts.sum())
        den = float(np.sum(parts**2)) / (draws - 1)
        return cls(float(weights @ mean), total, draws, total**2 / den if den > 0 else math.inf)


@dataclasses.dataclass(frozen=True)
class FirstOrderCheap:
    """One layer's cheap estimates: E[sum_p w_p ||J_i eta h_p||] at ratio 1 (``change``), and at each ratio
    the expected share of inputs whose first-order output v + r J_i eta h predicts another class
    (``crossings``, one per ratio)."""

    change: LayerCheap
    crossings: tuple[LayerCheap, ...] = ()


def cheap_first_order(net: Network, x: np.ndarray, draws: dict[int, int], distribution: str, norm: str,
                      rng_for_layer, weights: np.ndarray, ratios=(),
                      crossing_draws: dict[int, int] | None = None) -> dict[int, FirstOrderCheap]:
    """The cheap estimates of each layer i of ``draws``, from ``draws[i]`` cheap draws and ``rng_for_layer(i)``:
    E[sum_p weights_p ||J_i eta h_{i-1,p}||] at ratio 1 (||eta|| = ||W_i||) and, at each of ``ratios``, the
    expected share of inputs whose first-order prediction changes.

    One clean pass and one backward pass give h_{i-1} and J_i; no draw goes through the layers after
    i. For rotation-invariant noise (:func:`rotation_invariant`) each input gets draws of its own,
    O(k r) each (:func:`independent_first_order`); otherwise each eta is shared by every input as in
    the kernel, O(n_i n_{i-1}) or O(n_i n) per input (:func:`shared_eta_first_order`).

    Args:
        x: the inputs, (n, d).
        weights: one per input, (n,): 1/(n ||v_p||) gives the mean relative first-order change.
        crossing_draws: with rotation-invariant noise, how many of a layer's draws (the first ones) also give
            the prediction changes, the costlier part; all of them by default.
    """
    layers = sorted(i for i in draws if i <= net.depth)
    if not layers:
        return {}
    sizes, ratios = {}, np.asarray(ratios, dtype=np.float64)

    def norms(j: int, w: np.ndarray, h: np.ndarray) -> None:
        if j in draws:
            sizes[j] = matrix_norm(w, norm)

    fwd, _ = run_pass(net, np.atleast_2d(x).T, {}, norms)
    v = fwd.output.astype(np.float64)
    out = {}
    for i, J in jacobians(net, fwd, layers):
        h, rng = fwd.post[i - 1], rng_for_layer(i)
        if rotation_invariant(distribution, norm):
            out[i] = independent_first_order(J, h, sizes[i], draws[i], rng, weights, v, ratios,
                                             (crossing_draws or draws)[i])
            continue
        noise = LayerNoise(rng, (J.shape[2], h.shape[0]), h, distribution, norm, sizes[i], net.dtype)
        change, crossed = shared_eta_first_order(J, noise, draws[i], weights, v, ratios)
        out[i] = FirstOrderCheap(LayerCheap.of_draws(change), tuple(LayerCheap.of_draws(c) for c in crossed))
    return out


def shared_eta_first_order(J: np.ndarray, noise: LayerNoise, draws: int, weights: np.ndarray,
                           v: np.ndarray | None = None, ratios=()) -> tuple[np.ndarray, np.ndarray]:
    """``draws`` draws, one eta for every input (``noise``'s next draws, as the kernel takes them), a batch of
    eta H at a time, of sum_p weights_p ||J_p eta h_p|| (draws,) and, given the clean outputs v (k, n), of the
    share of inputs whose first-order prediction changes at each of ``ratios`` (ratio, draws)."""
    ratios = np.asarray(ratios, dtype=np.float64)
    batch = max(1, CHEAP_BATCH_VALUES // (J.shape[2] * J.shape[0]))
    changes, crossed = [], []
    for start in range(0, draws, batch):
        vec = first_order(J, noise.draw(min(batch, draws - start)))  # (n, k, b)
        changes.append(weights @ np.linalg.norm(vec, axis=1))
        if len(ratios):  # the share of inputs whose first-order prediction changes, (ratio, b)
            crossed.append((ratios[:, None, None] > crossing_threshold(v, vec)[None]).mean(axis=1))
    return np.concatenate(changes), np.concatenate(crossed, axis=1) if crossed else np.empty((0, draws))


def independent_first_order(J: np.ndarray, h: np.ndarray, size: float, draws: int, rng: np.random.Generator,
                            weights: np.ndarray, v: np.ndarray | None = None, ratios=(),
                            crossing_draws: int | None = None) -> FirstOrderCheap:
    """E[sum_p weights_p ||J_p eta h_p||] for eta = size G / ||G||_F (G standard normal, n_i x n_{i-1}), and
    the expected share of inputs whose first-order prediction changes at each of ``ratios`` (given the
    clean outputs v, (k, n)), from ``draws`` independent draws per input, each in O(k r).

    For one input, eta h = size ||h|| g / ||G||_F with g = G h / ||h|| standard normal and
    ||G||_F^2 = ||g||^2 + chi^2(n_i (n_{i-1} - 1)) independent of g. With J = U S V^T (rank r =
    min(k, n_i)), w = V^T g is standard normal in R^r and ||g||^2 = ||w||^2 + chi^2(n_i - r), so

        J eta h = size ||h|| U S w / sqrt(||w||^2 + chi^2(n_i n_{i-1} - r)),

    exactly in distribution: r normals and one chi-square per draw. The inputs' draws are
    independent (E[C] of each input is all the mean needs), so the variance of the estimate is
    sum_p weights_p^2 Var(C_p) / draws.

    Args:
        J: (n, k, n_i); h: h_{i-1} of every input, (n_{i-1}, n).
        crossing_draws: how many of the draws (the first ones) give the prediction changes; all by default.
    """
    n, k, n_i = J.shape
    J, ratios = J.astype(np.float64), np.asarray(ratios, dtype=np.float64)
    r = min(k, n_i)
    s2, U = np.linalg.eigh(J @ J.transpose(0, 2, 1))  # J J^T = U S^2 U^T, ascending
    s2, U = np.maximum(s2[:, k - r:], 0.0), U[:, :, k - r:]  # the top r: (n, r), (n, k, r)
    US = U * np.sqrt(s2)[:, None, :]
    scale = size * np.linalg.norm(h.astype(np.float64), axis=0)  # (n,)
    dof = n_i * h.shape[0] - r
    normals, chis = rng.spawn(2)
    change, crossed = _Moments(), _Moments()
    crossed_draws = max(2, min(draws, draws if crossing_draws is None else crossing_draws))
    batch = max(1, CHEAP_BATCH_VALUES // (n * max(r, k * len(ratios))))
    for start in range(0, draws, batch):
        b = min(batch, draws - start)
        w = normals.standard_normal((b, n, r), dtype=np.float32)  # faster than float64, and precise enough
        rest = chis.chisquare(dof, (b, n)) if dof > 0 else 0.0
        t = scale / np.sqrt(np.einsum("bnr,bnr->bn", w, w) + rest)  # (b, n)
        change.add(t * np.sqrt(np.einsum("bnr,nr->bn", w**2, s2)))
        crossing = min(b, crossed_draws - start)
        if len(ratios) and crossing > 0:  # J eta h = t U S w crosses at r t > the threshold of the direction U S w
            w, t = w[:crossing], t[:crossing]
            threshold = _thresholds_within(v, np.matmul(US, w.transpose(1, 2, 0)), ratios.max() * t.T)  # (n, b)
            crossed.add((ratios[None, :, None] * t[:, None, :] > threshold.T[:, None, :]).astype(np.float64))
    out = LayerCheap.of_inputs(*change.result(), weights, draws)
    if not len(ratios):
        return FirstOrderCheap(out)
    mean, var = crossed.result()
    return FirstOrderCheap(out, tuple(LayerCheap.of_inputs(mean[j], var[j], np.full(n, 1 / n), crossed_draws)
                                      for j in range(len(ratios))))


def _thresholds_within(v: np.ndarray, d: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """:func:`pipeline.measure.crossing_threshold` where it may be below ``limit`` (n, draw), inf elsewhere.

    A crossing at s needs s (d_j - d_c) > v_c - v_j for some j, so s (max_j d_j - d_c) above the
    runner-up margin: one pass over d finds the few directions that can cross at all. For those, the
    threshold is computed as crossing_threshold computes it (the same margins, rises and quotients, so the
    same numbers), from margins taken once per input rather than gathered per direction.
    """
    k, n = v.shape
    out = np.full(limit.shape, np.inf)
    if k < 2:
        return out
    clean = v.argmax(axis=0)
    margin = (v[clean, np.arange(n)][None, :] - v).T  # (n, k), >= 0
    top = np.partition(v, k - 2, axis=0)[-2:]
    runner_up = top[1] - top[0]  # (n,): the clean margin
    at_clean = d[np.arange(n), clean]  # (n, draw)
    maybe = np.nonzero(limit * (d.max(axis=1) - at_clean) > runner_up[:, None])
    if maybe[0].size:
        rise = d[maybe[0], :, maybe[1]] - at_clean[maybe][:, None]  # (maybe, k)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[maybe] = np.where(rise > 0, margin[maybe[0]] / rise, np.inf).min(axis=1)
    return out


class _Moments:
    """Sample mean and variance along the first axis of the batches added, shifted by the first draw so that
    the variance has no cancellation."""

    def __init__(self):
        self.count, self.shift, self.total, self.total_sq = 0, None, 0.0, 0.0

    def add(self, x: np.ndarray) -> None:
        self.shift = x[0] if self.shift is None else self.shift
        self.count += len(x)
        self.total = self.total + (x - self.shift).sum(axis=0)
        self.total_sq = self.total_sq + ((x - self.shift) ** 2).sum(axis=0)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        n = self.count
        return self.shift + self.total / n, np.maximum(self.total_sq - self.total**2 / n, 0.0) / (n - 1)


@dataclasses.dataclass(frozen=True)
class CheapDraws:
    """The cheap estimates of one network, by measured layer (:class:`FirstOrderCheap`), the first-order change
    relative to ||v||."""

    by_layer: dict[int, FirstOrderCheap]

    def mean(self, ratios: list[float], layers: list[int]) -> CheapMean:
        """E[C] of the per-draw mean over the cells (ratio, layer) given, each equally likely: the draws of a
        layer serve every ratio (C is linear in r), the layers' draws are independent."""
        rbar = float(np.mean(ratios))
        return _pooled([rbar * self.by_layer[i].change.mean for i in layers],
                       [rbar**2 * self.by_layer[i].change.var for i in layers],
                       [self.by_layer[i].change.df for i in layers])

    def crossing_mean(self, ratio_index: list[int], layers: list[int]) -> CheapMean:
        """E of the per-draw share of first-order prediction changes over the cells given, each equally likely.
        A layer's draws serve every ratio, so its ratios' estimates are correlated: their mean's standard
        error is taken as the mean of theirs (the largest it can be); the layers' are independent."""
        means, variances, dfs = [], [], []
        for i in layers:
            parts = [self.by_layer[i].crossings[r] for r in ratio_index]
            means.append(float(np.mean([p.mean for p in parts])))
            variances.append(float(np.mean([math.sqrt(p.var) for p in parts])) ** 2)
            dfs.append(min(p.df for p in parts))
        return _pooled(means, variances, dfs)


def _pooled(means: list[float], variances: list[float], dfs: list[float]) -> CheapMean:
    """The mean of independent estimates, its variance and Welch-Satterthwaite degrees of freedom."""
    parts = [v / len(means) ** 2 for v in variances]
    var = sum(parts)
    den = sum(p**2 / df for p, df in zip(parts, dfs) if p > 0)
    return CheapMean(float(np.mean(means)), var, var**2 / den if den > 0 else math.inf)


def cheap_draw_counts(layers: list[int], pairs, distribution: str, norm: str,
                      full_draws: int | None = None, cost: dict[int, float] | None = None) -> dict[int, int]:
    """Cheap draws per layer: for each of the layer's ratios and each of ``pairs`` the count of
    :func:`cheap_draws_needed` (the precision rule, an upper bound: no point in more) or, given ``cost``, the
    smaller cost-optimal count of :func:`cheap_draws_optimal`; the most any of them asks for, at least 2,
    and at most CHEAP_SHARED_PER_FULL per full draw where each cheap draw is a shared eta.

    Args:
        layers: the layer of each layer column of the arrays (the first ``len(layers)`` are used).
        pairs: (Y, C, weights, fraction): full draws of a quantity and of its control, (ratio, layer, input,
            draw), the inputs' weights in the per-draw mean, (n,), and the share of the plain standard error
            the cheap mean's may reach.
        full_draws: the number of full draws when the arrays hold only the first of them.
        cost: c_f / c_c by layer, the modelled cost of a full draw over that of a cheap one
            (:mod:`pipeline.drawcost`); None: the precision rule alone.
    """
    need = {i: 2 for i in layers}
    for full, control, weights, fraction in pairs:
        y = np.einsum("rlnd,n->rld", full, weights)
        c = np.einsum("rlnd,n->rld", control, weights)
        if rotation_invariant(distribution, norm):  # each input's draws are its own: v sums the inputs' variances
            per_draw_var = np.einsum("rln,n->rl", control.var(axis=3, ddof=1), weights**2)
        else:
            per_draw_var = c.var(axis=2, ddof=1)
        for col, i in enumerate(layers):
            for r in range(y.shape[0]):
                m = cheap_draws_needed(y[r, col], c[r, col], per_draw_var[r, col], fraction, full_draws)
                if cost is not None:
                    best = cheap_draws_optimal(y[r, col], c[r, col], per_draw_var[r, col], cost[i], full_draws)
                    m = min(m, math.ceil(best)) if math.isfinite(best) else m
                need[i] = max(need[i], m)
    if not rotation_invariant(distribution, norm):
        full = full_draws or pairs[0][0].shape[3]
        need = {i: min(n, max(2, CHEAP_SHARED_PER_FULL * full)) for i, n in need.items()}
    return need


def cost_capped(draws: dict[int, int], crossing: dict[int, int] | None, costs: dict[int, tuple[float, float, float]],
                full_draws: int, cap: float | None = None) -> tuple[dict[int, int], dict[int, int] | None]:
    """The cheap draws of every layer (``draws``, of which the first ``crossing`` also give the prediction
    changes) shrunk by one common factor where needed, so that their modelled cost is at most ``cap`` times
    that of the ``full_draws`` full draws of the same layers (``cap`` None: :data:`CHEAP_COST_CAP`, read when
    called, which benchmarks/bench_cheap_cap.py varies); at least 2 each.

    Args:
        costs: by layer, the modelled cost of a full draw, of a cheap draw of the first-order change and of
            what its prediction change adds (:func:`layer_costs`).

    >>> costs = {1: (1.0, 0.1, 1.0), 2: (0.5, 0.1, 1.0)}  # 100 full draws: 150 to spend
    >>> cost_capped({1: 1000, 2: 1000}, {1: 100, 2: 400}, costs, 100)  # 700 spent -> 3/14 of each count
    ({1: 214, 2: 214}, {1: 21, 2: 85})
    >>> cost_capped({1: 1000, 2: 10}, None, costs, 100)  # 101 <= 150: unchanged
    ({1: 1000, 2: 10}, None)
    """
    spent = sum(draws[i] * c + (crossing[i] * x if crossing else 0.0) for i, (_, c, x) in costs.items())
    budget = (CHEAP_COST_CAP if cap is None else cap) * full_draws * sum(f for f, _, _ in costs.values())
    if not spent > budget:
        return draws, crossing
    share = budget / spent

    def shrunk(counts: dict[int, int]) -> dict[int, int]:
        return {i: max(2, math.floor(n * share)) for i, n in counts.items()}
    return shrunk(draws), crossing and shrunk(crossing)


def layer_costs(shapes, layers: list[int], n: int, ratios: int) -> dict[int, tuple[float, float, float]]:
    """By layer, the modelled seconds (:mod:`pipeline.drawcost`) of one full draw, of one cheap draw of the
    first-order change and of what its prediction change adds, for ``n`` inputs and ``ratios`` ratios."""
    return {i: (full_draw_work(shapes, i, n, ratios).seconds, *cheap_draw_seconds(shapes, i, n)) for i in layers}


def cheap_draws_for(spec, L: int, m: int, seed: int, delta: np.ndarray, change: np.ndarray,
                    output_norm: np.ndarray, pred: np.ndarray | None = None,
                    linear_pred: np.ndarray | None = None, full_draws: int | None = None,
                    layers: list[int] | None = None) -> CheapDraws:
    """The cheap estimates for the network (L, m, seed) of ``spec``, as many draws per layer as
    :func:`cheap_draw_counts` asks for: for rotation-invariant noise the cost-aware count (the smaller of the
    precision rule and :func:`cheap_draws_optimal`, with the costs that :mod:`pipeline.drawcost` models from
    the network's shapes), then :func:`cost_capped` over the layers, so that the cheap draws cost at most
    CHEAP_COST_CAP times the full draws.

    Args:
        delta, change: the full draws' ||v - v*|| and first-order change, (ratio, layer, input, draw), for
            the layers of ``spec.grid.layer``; ``pred`` and ``linear_pred`` the same draws' prediction changes
            and first-order prediction changes (then the cheap draws estimate those too).
            Their layer columns are those of ``spec.grid.layer``; the together cells (layer 0) and layers
            beyond L are left out (no single layer's first-order term).
        output_norm: ||v|| of every input, (n,).
        full_draws: the number of full draws, when the arrays hold only the first of them.
        layers: the layer of each of the arrays' layer columns; by default ``spec.grid.layer``.
    """
    from threadpoolctl import threadpool_limits

    from .network import build_network, make_inputs, stream

    n = len(output_norm)
    weights = 1 / (n * np.asarray(output_norm, dtype=np.float64))
    columns = list(spec.grid.layer if layers is None else layers)
    cols = [c for c, i in enumerate(columns) if 1 <= i <= L]
    layers = [columns[c] for c in cols]
    delta, change = delta[:, cols], change[:, cols]
    noise = spec.noise.distribution, spec.noise.norm
    net = build_network(spec, L, m, seed)
    costs = layer_costs(net.shapes, layers, n, len(spec.grid.ratio)) if rotation_invariant(*noise) else None
    draws = cheap_draw_counts(layers, [(delta, change, weights, CHEAP_SE_FRACTION)], *noise, full_draws,
                              costs and {i: f / c for i, (f, c, _) in costs.items()})
    crossing = None
    if pred is not None:  # the prediction changes from the first of the draws, as many as they need
        pred, linear_pred = pred[:, cols], linear_pred[:, cols]
        # a draw that gives the prediction change gives the first-order change too: it costs both parts
        crossing = cheap_draw_counts(layers, [(pred, linear_pred, np.full(n, 1 / n), PRED_SE_FRACTION)], *noise,
                                     full_draws, costs and {i: f / (c + x) for i, (f, c, x) in costs.items()})
        draws = {i: max(draws[i], crossing[i]) for i in layers}
    if costs:
        draws, crossing = cost_capped(draws, crossing, costs, full_draws or delta.shape[3])
    with threadpool_limits(limits=1, user_api="blas"):  # the kernel's rule: the same numbers on any machine
        by_layer = cheap_first_order(net, make_inputs(spec), draws,
                                     spec.noise.distribution, spec.noise.norm,
                                     lambda i: stream(spec, CHEAP_STREAM, L, m, seed, i), weights,
                                     spec.grid.ratio if pred is not None else (), crossing)
    return CheapDraws(by_layer)


def cv_summary(samples: dict[str, np.ndarray] | None, cheap, ri: list[int], li: list[int], ratios, layers,
               plain: dict) -> dict:
    """E R of the cells given by plain Monte Carlo (``plain``: a summary's ``mean_rel_change`` and ``ci95``)
    and with the first-order change as control variate, the prediction-change rate likewise, and which
    estimate is ``printed`` and why: the fields ``nnsweep estimate`` adds to each summary.

    Args:
        samples: the per-draw means over inputs, (ratio, layer, draw), of ``delta_norm`` and ``linear_change``
            (relative to ||v||), ``pred_changed`` and ``linear_pred_changed``; None with ``cheap`` a reason.
        cheap: the network's :class:`CheapDraws`, or why the control variate does not apply (several
            networks: their spread, which no first-order term of one network explains, dominates the interval).
        ri, li: the indices of the cells' ratios and layers; ``ratios``, ``layers``: their values.
    """
    out = {"plain": {"mean_rel_change": plain["mean_rel_change"], "ci95": plain["ci95"]}}
    if not isinstance(cheap, str) and any(layers[i] == TOGETHER for i in li):
        cheap = "noise in every layer at once: no single layer's first-order change to use as control variate"
    if isinstance(cheap, str):
        return {**out, "control_variate": None, "printed": "plain", "printed_why": cheap}
    y, c, pred, crossed = (samples[k][np.ix_(ri, li)].mean(axis=(0, 1))
                           for k in ("delta_norm", "linear_change", "pred_changed", "linear_pred_changed"))
    out["plain"]["pred_change_ci95"] = _listed(plain_estimate(pred).ci95)  # one network: over its draws
    cv = cv_estimate(y, c, cheap.mean([ratios[r] for r in ri], [layers[i] for i in li]))
    if cv is None:
        return {**out, "control_variate": None, "printed": "plain",
                "printed_why": "fewer than 3 draws, or no spread in the first-order change: no slope to fit"}
    ci = plain["ci95"]
    pred_cv = cv_estimate(pred, crossed, cheap.crossing_mean(ri, [layers[i] for i in li]))
    draws = int(min(cheap.by_layer[layers[i]].change.draws for i in li))
    out["control_variate"] = {
        "mean_rel_change": num(cv.mean), "ci95": _listed(cv.ci95), "beta": num(slope(y, c)), "cheap_draws": draws,
        "width_ratio": num((ci[1] - ci[0]) / (cv.ci95[1] - cv.ci95[0]) if ci and cv.ci95 else None),
        # the first-order crossing as control of pred_changed; None where no prediction (or none to first
        # order) changed in any draw, which leaves no slope to fit
        "pred_change_rate": None if pred_cv is None else num(pred_cv.mean),
        "pred_change_ci95": None if pred_cv is None else _listed(pred_cv.ci95)}
    return {**out, "printed": "control_variate",
            "printed_why": f"one network whose first-order change is known: cheap draws of it alone ({draws} per "
                           "layer) give its mean, the full draws only the rest (docs/linear-answer.md)"}


def _listed(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else [float(ci[0]), float(ci[1])]


def _interval(mean: float, se: float, df: float) -> tuple[float, float] | None:
    if not (df >= 1 and se > 0 and math.isfinite(se)):
        return None
    # the integer below df, and at most SERIES_MAX_DF (whose quantile exceeds the normal one by 0.013%): a
    # slightly wider interval, and no scipy import on the way to an answer
    half = t_quantile(0.95, int(min(df, SERIES_MAX_DF))) * se
    return mean - half, mean + half
