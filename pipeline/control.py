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
# The cheap mean's standard error is at most this share of the plain estimate's: the control-variate
# interval is then never more than 1 / CHEAP_SE_FRACTION = 8 times narrower than the plain one, and the
# cheap draws number at most N / CHEAP_SE_FRACTION^2 = 64 N (for N full draws).
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


def cheap_draws_needed(y: np.ndarray, c: np.ndarray) -> int:
    """How many cheap draws make the cheap mean's contribution beta^2 Var(C) / M at most CHEAP_SE_FRACTION^2
    times the plain estimate's variance Var(Y) / N: M = N rho^2 / CHEAP_SE_FRACTION^2 (rho the correlation
    of Y and C over the full draws), at least 2.

    So the cheap draws cost in proportion to what they can win: at most 64 N where C explains Y
    (small r), few where it does not (large r).
    """
    y, c = np.asarray(y, dtype=np.float64), np.asarray(c, dtype=np.float64)
    if y.size < 3 or not np.ptp(c) > 0 or not np.ptp(y) > 0:
        return 2
    rho2 = float(np.corrcoef(y, c)[0, 1] ** 2)
    return max(2, math.ceil(y.size * rho2 / CHEAP_SE_FRACTION**2))


def cheap_first_order(net: Network, x: np.ndarray, draws: dict[int, int], distribution: str, norm: str,
                      rng_for_layer, weights: np.ndarray) -> dict[int, np.ndarray]:
    """Cheap draws of the first-order change of one network: for each layer i, ``draws[i]`` draws of
    sum_p weights_p ||J_i eta h_{i-1,p}|| at ratio 1 (||eta|| = ||W_i||), each eta shared by every input.

    One clean pass and one backward pass give h_{i-1} and J_i; each draw then costs eta H
    (:class:`pipeline.noise.LayerNoise`, from ``rng_for_layer(i)``) and J_i eta h, never the layers
    after i. The sum over inputs is taken draw by draw, so the memory is a batch of eta H whatever
    the number of draws.

    Args:
        x: the inputs, (n, d).
        weights: one per input, (n,): 1/(n ||v_p||) gives the draw's mean relative first-order change.

    Returns:
        layer -> array (draws[i],) at ratio 1 (the change at ratio r is r times it, for the same eta).
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
        h = fwd.post[i - 1]
        noise = LayerNoise(rng_for_layer(i), (J.shape[2], h.shape[0]), h, distribution, norm, sizes[i], net.dtype)
        batch = max(1, CHEAP_BATCH_VALUES // (J.shape[2] * h.shape[1]))
        parts = [weights @ first_order_change(J, noise.draw(min(batch, draws[i] - s)))
                 for s in range(0, draws[i], batch)]
        out[i] = np.concatenate(parts)
    return out


@dataclasses.dataclass(frozen=True)
class CheapDraws:
    """The cheap draws of one network: per measured layer, the draws of the mean over inputs of
    ||J_i eta h|| / ||v|| at ratio 1."""

    by_layer: dict[int, np.ndarray]

    def mean(self, ratios: list[float], layers: list[int]) -> CheapMean:
        """E[C] of the per-draw mean over the cells (ratio, layer) given, each equally likely: the draws of a
        layer serve every ratio (C is linear in r), the layers' draws are independent."""
        rbar = float(np.mean(ratios))
        parts = [self.by_layer[i] for i in layers]
        means = [rbar * p.mean() for p in parts]
        variances = [rbar**2 * p.var(ddof=1) / p.size for p in parts]
        var = sum(variances) / len(parts) ** 2
        den = sum(v**2 / (p.size - 1) for v, p in zip(variances, parts)) / len(parts) ** 4
        return CheapMean(float(np.mean(means)), var, var**2 / den if den > 0 else math.inf)


def cheap_draws_for(spec, L: int, m: int, seed: int, y: np.ndarray, c: np.ndarray,
                    output_norm: np.ndarray) -> CheapDraws:
    """The cheap draws of the network (L, m, seed) of ``spec``, as many per layer as
    :func:`cheap_draws_needed` asks for its most demanding ratio.

    Args:
        y, c: the full draws' per-draw mean relative change and first-order change, (ratio, layer, draw),
            for the layers of ``spec.grid.layer``.
        output_norm: ||v|| of every input, (n,).
    """
    from threadpoolctl import threadpool_limits

    from .network import build_network, make_inputs, stream

    layers = [i for i in spec.grid.layer if i <= L]
    draws = {i: max(cheap_draws_needed(y[r, col], c[r, col]) for r in range(y.shape[0]))
             for col, i in enumerate(spec.grid.layer) if i <= L}
    with threadpool_limits(limits=1, user_api="blas"):  # the kernel's rule: the same numbers on any machine
        by_layer = cheap_first_order(build_network(spec, L, m, seed), make_inputs(spec), draws,
                                     spec.noise.distribution, spec.noise.norm,
                                     lambda i: stream(spec, CHEAP_STREAM, L, m, seed, i),
                                     1 / (len(output_norm) * np.asarray(output_norm, dtype=np.float64)))
    return CheapDraws({i: by_layer[i] for i in layers})


def _interval(mean: float, se: float, df: float) -> tuple[float, float] | None:
    if not (df >= 1 and se > 0 and math.isfinite(se)):
        return None
    half = t_quantile(0.95, int(min(df, 1e9))) * se  # the integer below df: a slightly wider interval
    return mean - half, mean + half
