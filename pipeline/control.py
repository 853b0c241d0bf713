"""Control variates for one network: the first-order change C = ||J_i eta h_{i-1}|| as the control of
Y = ||v - v*||, with E[C] from many cheap draws of its own.

E[Y] = beta E[C] + E[Y - beta C] for any beta. The full draws give pairs (Y, C)
with the same eta; the cheap draws give C alone, from a random stream of their
own (:data:`CHEAP_STREAM`), and need only eta h_{i-1} and J_i of that layer:
no pass through the network. docs/linear-answer.md derives why the residual
Y - beta C has a vanishing variance as r -> 0, why beta is estimated (the
regression coefficient Cov(Y, C) / Var(C) of the full draws) rather than
fixed at 1, and the interval. The statistics (:func:`plain_estimate`,
:func:`cv_estimate`, :func:`cheap_draws_needed`) are plain numpy on samples;
:func:`cheap_first_order` draws the cheap samples of one network.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .analysis.intervals import t_quantile
from .measure import first_order_change, jacobians, run_pass
from .network import Network
from .noise import LayerNoise, matrix_norm

# The spawn key's first entry of the cheap draws' streams: the network module's streams are 0 (inputs),
# 1 (weights) and 2 (the full draws' noise), so these never share a number with the full draws.
CHEAP_STREAM = 3
# The cheap mean's standard error is at most this share of the plain estimate's (as the full draws
# estimate both): the control-variate interval is then at most about 1 / CHEAP_SE_FRACTION = 8 times
# narrower than the plain one of the same full draws.
CHEAP_SE_FRACTION = 0.125
CHEAP_BATCH_VALUES = 2**22  # values of eta h per batch of cheap draws (32 MiB in float64)


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


def cheap_draws_needed(y: np.ndarray, c: np.ndarray, per_draw_var: float) -> int:
    """How many cheap draws make the cheap mean's share of the variance, beta^2 v / M (v = ``per_draw_var``,
    the variance of one cheap draw's contribution), CHEAP_SE_FRACTION^2 times the plain estimate's Var(Y) / N:
    M = N beta^2 v / (CHEAP_SE_FRACTION^2 Var(Y)), at least 2; beta and Var(Y) from the N full draws.

    So the cheap draws cost in proportion to what they can win: many where C explains Y (small r),
    few where it does not (large r). With v = Var(C) (one eta for all inputs) M = N rho^2 / 0.125^2,
    at most 64 N.
    """
    y = np.asarray(y, dtype=np.float64)
    beta = slope(y, c)
    var_y = float(y.var(ddof=1)) if y.size > 1 else 0.0
    if y.size < 3 or not np.isfinite(beta) or not var_y > 0:
        return 2
    return max(2, math.ceil(y.size * beta**2 * per_draw_var / (CHEAP_SE_FRACTION**2 * var_y)))


def rotation_invariant(distribution: str, norm: str) -> bool:
    """Whether eta's law is that of s G / ||G||_F, G standard normal: Gaussian or sphere noise with Frobenius
    scaling. Then one input's first-order change can be drawn alone in O(k) (:func:`independent_first_order`)."""
    return distribution in ("gaussian", "sphere") and norm == "frobenius"


@dataclasses.dataclass(frozen=True)
class LayerCheap:
    """The cheap estimate of one layer's E[sum_p w_p ||J_i eta h_{i-1,p}||] at ratio 1."""

    mean: float
    var: float    # variance of ``mean``
    draws: int    # cheap draws per input
    df: float     # degrees of freedom of ``var``


def cheap_first_order(net: Network, x: np.ndarray, draws: dict[int, int], distribution: str, norm: str,
                      rng_for_layer, weights: np.ndarray) -> dict[int, LayerCheap]:
    """The cheap estimate of E[sum_p weights_p ||J_i eta h_{i-1,p}||] at ratio 1 (||eta|| = ||W_i||) for each
    layer i of ``draws``, from ``draws[i]`` cheap draws and ``rng_for_layer(i)``.

    One clean pass and one backward pass give h_{i-1} and J_i; no draw goes through the layers after
    i. For rotation-invariant noise (:func:`rotation_invariant`) each input gets draws of its own,
    O(k) each (:func:`independent_first_order`); otherwise each eta is shared by every input as in the
    kernel, O(n_i n_{i-1}) or O(n_i n) per input (:func:`shared_eta_first_order`).

    Args:
        x: the inputs, (n, d).
        weights: one per input, (n,): 1/(n ||v_p||) gives the mean relative first-order change.
    """
    layers = sorted(i for i in draws if i <= net.depth)
    if not layers:
        return {}
    sizes = {}

    def norms(j: int, w: np.ndarray, h: np.ndarray) -> None:
        if j in draws:
            sizes[j] = matrix_norm(w, norm)

    fwd, _ = run_pass(net, np.atleast_2d(x).T, {}, norms)
    out = {}
    for i, J in jacobians(net, fwd, layers):
        h, rng = fwd.post[i - 1], rng_for_layer(i)
        if rotation_invariant(distribution, norm):
            out[i] = independent_first_order(J, h, sizes[i], draws[i], rng, weights)
            continue
        noise = LayerNoise(rng, (J.shape[2], h.shape[0]), h, distribution, norm, sizes[i], net.dtype)
        sample = shared_eta_first_order(J, noise, draws[i], weights)
        out[i] = LayerCheap(float(sample.mean()), float(sample.var(ddof=1) / sample.size), sample.size,
                            sample.size - 1)
    return out


def shared_eta_first_order(J: np.ndarray, noise: LayerNoise, draws: int, weights: np.ndarray) -> np.ndarray:
    """``draws`` draws of sum_p weights_p ||J_p eta h_p||, one eta for every input (``noise``'s next draws,
    as the kernel takes them), a batch of eta H at a time."""
    batch = max(1, CHEAP_BATCH_VALUES // (J.shape[2] * J.shape[0]))
    return np.concatenate([weights @ first_order_change(J, noise.draw(min(batch, draws - s)))
                           for s in range(0, draws, batch)])


def independent_first_order(J: np.ndarray, h: np.ndarray, size: float, draws: int, rng: np.random.Generator,
                            weights: np.ndarray) -> LayerCheap:
    """E[sum_p weights_p ||J_p eta h_p||] for eta = size G / ||G||_F (G standard normal, n_i x n_{i-1}), from
    ``draws`` independent draws per input, each in O(k).

    For one input, eta h = size ||h|| g / ||G||_F with g = G h / ||h|| standard normal and
    ||G||_F^2 = ||g||^2 + chi^2(n_i (n_{i-1} - 1)) independent of g. With J = U S V^T (rank r =
    min(k, n_i)), w = V^T g is standard normal in R^r and ||g||^2 = ||w||^2 + chi^2(n_i - r), so

        ||J eta h|| = size ||h|| sqrt(sum_a s_a^2 w_a^2) / sqrt(||w||^2 + chi^2(n_i n_{i-1} - r)),

    exactly in distribution: r normals and one chi-square per draw. The inputs' draws are
    independent (E[C] of each input is all the mean needs), so the variance of the estimate is
    sum_p weights_p^2 Var(C_p) / draws.

    Args:
        J: (n, k, n_i); h: h_{i-1} of every input, (n_{i-1}, n).
    """
    n, k, n_i = J.shape
    J = J.astype(np.float64)
    r = min(k, n_i)
    s2 = np.maximum(np.linalg.eigvalsh(J @ J.transpose(0, 2, 1))[:, k - r:], 0.0)  # (n, r): top singular values^2
    scale = size * np.linalg.norm(h.astype(np.float64), axis=0)  # (n,)
    dof = n_i * h.shape[0] - r
    normals, chis = rng.spawn(2)
    total, total_sq = np.zeros(n), np.zeros(n)
    shift = None  # sums of C - shift: no cancellation in the variance
    batch = max(1, CHEAP_BATCH_VALUES // (n * r))
    for start in range(0, draws, batch):
        b = min(batch, draws - start)
        w2 = normals.standard_normal((b, n, r)) ** 2
        rest = chis.chisquare(dof, (b, n)) if dof > 0 else 0.0
        c = scale * np.sqrt(np.einsum("bnr,nr->bn", w2, s2) / (w2.sum(axis=2) + rest))
        shift = c[0] if shift is None else shift
        total += (c - shift).sum(axis=0)
        total_sq += ((c - shift) ** 2).sum(axis=0)
    mean_p = shift + total / draws
    var_p = np.maximum(total_sq - total**2 / draws, 0.0) / (draws - 1)
    parts = weights**2 * var_p / draws
    var = float(parts.sum())
    den = float(np.sum(parts**2)) / (draws - 1)
    return LayerCheap(float(weights @ mean_p), var, draws, var**2 / den if den > 0 else math.inf)


@dataclasses.dataclass(frozen=True)
class CheapDraws:
    """The cheap estimates of one network: per measured layer, E of the mean over inputs of
    ||J_i eta h|| / ||v|| at ratio 1."""

    by_layer: dict[int, LayerCheap]

    def mean(self, ratios: list[float], layers: list[int]) -> CheapMean:
        """E[C] of the per-draw mean over the cells (ratio, layer) given, each equally likely: the draws of a
        layer serve every ratio (C is linear in r), the layers' draws are independent."""
        rbar, parts = float(np.mean(ratios)), [self.by_layer[i] for i in layers]
        variances = [rbar**2 * p.var / len(parts) ** 2 for p in parts]
        var = sum(variances)
        den = sum(v**2 / p.df for v, p in zip(variances, parts))
        return CheapMean(float(np.mean([rbar * p.mean for p in parts])), var, var**2 / den if den > 0 else math.inf)


def cheap_draw_counts(layers: list[int], delta: np.ndarray, change: np.ndarray, weights: np.ndarray,
                      distribution: str, norm: str) -> dict[int, int]:
    """Cheap draws per layer: what :func:`cheap_draws_needed` asks for the layer's most demanding ratio.

    Args:
        layers: the layer of each column of ``delta`` and ``change`` (the first ``len(layers)`` are used).
        delta, change: the full draws' ||v - v*|| and first-order change, (ratio, layer, input, draw).
        weights: of the inputs in the per-draw mean, (n,).
    """
    y = np.einsum("rlnd,n->rld", delta, weights)
    c = np.einsum("rlnd,n->rld", change, weights)
    if rotation_invariant(distribution, norm):  # each input's draws are its own: v sums the inputs' variances
        per_draw_var = np.einsum("rln,n->rl", change.var(axis=3, ddof=1), weights**2)
    else:
        per_draw_var = c.var(axis=2, ddof=1)
    return {i: max(cheap_draws_needed(y[r, col], c[r, col], per_draw_var[r, col]) for r in range(y.shape[0]))
            for col, i in enumerate(layers)}


def cheap_draws_for(spec, L: int, m: int, seed: int, delta: np.ndarray, change: np.ndarray,
                    output_norm: np.ndarray) -> CheapDraws:
    """The cheap estimates for the network (L, m, seed) of ``spec``, as many draws per layer as
    :func:`cheap_draws_needed` asks for its most demanding ratio.

    Args:
        delta, change: the full draws' ||v - v*|| and first-order change, (ratio, layer, input, draw), for
            the layers of ``spec.grid.layer``.
        output_norm: ||v|| of every input, (n,).
    """
    from threadpoolctl import threadpool_limits

    from .network import build_network, make_inputs, stream

    weights = 1 / (len(output_norm) * np.asarray(output_norm, dtype=np.float64))
    layers = [i for i in spec.grid.layer if i <= L]
    draws = cheap_draw_counts(layers, delta, change, weights, spec.noise.distribution, spec.noise.norm)
    with threadpool_limits(limits=1, user_api="blas"):  # the kernel's rule: the same numbers on any machine
        by_layer = cheap_first_order(build_network(spec, L, m, seed), make_inputs(spec), draws,
                                     spec.noise.distribution, spec.noise.norm,
                                     lambda i: stream(spec, CHEAP_STREAM, L, m, seed, i), weights)
    return CheapDraws(by_layer)


def _interval(mean: float, se: float, df: float) -> tuple[float, float] | None:
    if not (df >= 1 and se > 0 and math.isfinite(se)):
        return None
    half = t_quantile(0.95, int(min(df, 1e9))) * se  # the integer below df: a slightly wider interval
    return mean - half, mean + half
