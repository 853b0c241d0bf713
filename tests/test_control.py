"""Control variates: the statistics against brute force, the cheap draws against the kernel, and the
estimate on a trained network against a long independent plain Monte Carlo run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.optimize
import scipy.stats

from pipeline import drawcost
from pipeline.control import (CHEAP_COST_CAP, CHEAP_SE_FRACTION, CHEAP_SHARED_PER_FULL, CheapDraws, CheapMean,
                              FirstOrderCheap, LayerCheap, cheap_draw_counts, cheap_draws_for, cheap_draws_needed,
                              cheap_draws_optimal, cheap_first_order, cost_capped, cv_estimate,
                              independent_first_order, plain_estimate, shared_eta_first_order, slope)
from pipeline.estimation import estimate
from pipeline.measure import crossing_threshold, jacobians, measure_block, measure_network
from pipeline.noise import LayerNoise, matrix_norm
from pipeline.spec import Spec

from test_measure import random_net


def correlated(rng, n, rho=0.9, mean=(1.0, 2.0)):
    """n pairs (y, c), jointly normal with correlation rho and unit variances."""
    c = rng.standard_normal(n)
    y = rho * c + np.sqrt(1 - rho**2) * rng.standard_normal(n)
    return y + mean[0], c + mean[1]


def test_known_control_mean_is_the_regression_prediction():
    """With E[C] known exactly, the estimate and its variance are the least-squares line's value at E[C]
    and its prediction variance s^2 x0 (X^T X)^-1 x0^T, t with N - 2 degrees of freedom (brute force)."""
    y, c = correlated(np.random.default_rng(1), 15)
    mu = 2.3
    est = cv_estimate(y, c, CheapMean(mu, 0.0, np.inf))
    X = np.column_stack([np.ones_like(c), c])
    coef, res, *_ = np.linalg.lstsq(X, y, rcond=None)
    s2 = res[0] / (len(y) - 2)
    x0 = np.array([1.0, mu])
    var = s2 * x0 @ np.linalg.inv(X.T @ X) @ x0
    assert est.mean == pytest.approx(coef[0] + coef[1] * mu, rel=1e-12)
    assert slope(y, c) == pytest.approx(scipy.stats.linregress(c, y).slope, rel=1e-12)
    assert est.se == pytest.approx(np.sqrt(var), rel=1e-10) and est.df == len(y) - 2
    half = scipy.stats.t.ppf(0.975, len(y) - 2) * np.sqrt(var)
    np.testing.assert_allclose(est.ci95, (est.mean - half, est.mean + half), rtol=1e-9)
    # no control: the plain interval is scipy's t interval
    lo, hi = scipy.stats.t.interval(0.95, len(y) - 1, loc=y.mean(), scale=scipy.stats.sem(y))
    np.testing.assert_allclose(plain_estimate(y).ci95, (lo, hi), rtol=1e-9)


@pytest.mark.parametrize("n, cheap, rho", [(8, 40, 0.99), (30, 30, 0.9), (30, 3000, 0.999)])
def test_interval_covers_the_mean_95_percent_of_the_time(n, cheap, rho):
    """Over 3000 independent experiments (N full pairs, M cheap draws of C), the interval holds E[Y] in
    95% of them (within the binomial spread), and its variance matches the estimate's spread: the
    cheap mean's error, the slope's and the small-sample t quantile all counted."""
    rng = np.random.default_rng(n + cheap)
    hits, means, variances = 0, [], []
    for _ in range(3000):
        y, c = correlated(rng, n, rho)
        extra = rng.standard_normal(cheap) + 2.0
        est = cv_estimate(y, c, CheapMean(extra.mean(), extra.var(ddof=1) / cheap, cheap - 1))
        hits += est.ci95[0] <= 1.0 <= est.ci95[1]
        means.append(est.mean)
        variances.append(est.se**2)
    assert abs(hits / 3000 - 0.95) < 3.5 * np.sqrt(0.95 * 0.05 / 3000)
    assert np.mean(variances) == pytest.approx(np.var(means), rel=0.1)


def test_cheap_draws_cost_what_they_can_win():
    """M = N beta^2 v / (fraction^2 Var Y): the cheap mean's variance beta^2 v / M is fraction^2 Var Y / N;
    with v = Var C (one eta for all inputs) that is M = N rho^2 / fraction^2."""
    y, c = correlated(np.random.default_rng(2), 400, 0.8)
    m = cheap_draws_needed(y, c, c.var(ddof=1))
    rho2 = np.corrcoef(y, c)[0, 1] ** 2
    assert m == int(np.ceil(400 * rho2 / CHEAP_SE_FRACTION**2))
    assert slope(y, c) ** 2 * c.var(ddof=1) / m == pytest.approx(CHEAP_SE_FRACTION**2 * y.var(ddof=1) / 400,
                                                                 rel=1e-3)
    assert cheap_draws_needed(y, c, c.var(ddof=1) / 100) == int(np.ceil(400 * rho2 / CHEAP_SE_FRACTION**2 / 100))
    assert cheap_draws_needed(y, np.full(400, 3.0), 0.0) == 2  # no spread: nothing to win
    assert cv_estimate(y, np.full(400, 3.0), CheapMean(3.0, 0.0, np.inf)) is None


@pytest.mark.parametrize("rho, cost_ratio", [(0.9, 5.0), (0.995, 40.0), (0.5, 0.3)])
def test_cost_optimal_count_minimises_variance_times_time(rho, cost_ratio):
    """M* = N sqrt(beta^2 v c_f / (s^2 c_c)) is where (s^2 / N + beta^2 v / M)(N c_f + M c_c) is least: the
    slope and residual variance from scipy's regression, the minimum found numerically."""
    y, c = correlated(np.random.default_rng(21), 50, rho)
    v, n_full = c.var(ddof=1) / 7, 400
    fit = scipy.stats.linregress(c, y)
    s2 = np.sum((y - fit.intercept - fit.slope * c) ** 2) / (50 - 2)
    product = lambda log_m: ((s2 / n_full + fit.slope**2 * v / np.exp(log_m))  # noqa: E731
                             * (n_full * cost_ratio + np.exp(log_m)))
    least = np.exp(scipy.optimize.minimize_scalar(product, bounds=(0, 25), method="bounded",
                                                  options={"xatol": 1e-9}).x)
    got = cheap_draws_optimal(y, c, v, cost_ratio, full_draws=n_full)
    assert got == pytest.approx(least, rel=1e-4)
    assert got == pytest.approx(n_full * np.sqrt(fit.slope**2 * v * cost_ratio / s2), rel=1e-9)
    # at the optimum the cheap mean's share of the variance is the cheap draws' share of the time
    assert fit.slope**2 * v / got / (s2 / n_full) == pytest.approx(got / (n_full * cost_ratio), rel=1e-9)
    assert cheap_draws_optimal(c, c, v, cost_ratio) == np.inf  # C explains Y exactly: no residual
    assert cheap_draws_optimal(y, np.full(50, 3.0), v, cost_ratio) == 0  # no slope: nothing to win


def synthetic_pairs(rng, noise=(0.3, 0.03, 1e-3), inputs=5, draws=60):
    """(Y, C) of (ratio, layer, input, draw): C uniform, Y = C plus noise of a size per ratio; 2 layers."""
    c = rng.uniform(1, 2, (len(noise), 2, inputs, draws))
    return c + np.asarray(noise)[:, None, None, None] * rng.standard_normal(c.shape), c


@pytest.mark.parametrize("cost_ratio", [1e-3, 0.5, 30.0, 1e9])
def test_cost_aware_counts_never_exceed_the_precision_rule(cost_ratio):
    """Per layer: the most any ratio asks of min(precision rule, M*), never above the precision rule alone,
    and equal to it where cheap draws are (nearly) free; cell by cell against the two rules."""
    y, c = synthetic_pairs(np.random.default_rng(22))
    w = np.full(5, 0.2)
    pairs = [(y, c, w, CHEAP_SE_FRACTION)]
    plain = cheap_draw_counts([1, 2], pairs, "gaussian", "frobenius", full_draws=1000)
    got = cheap_draw_counts([1, 2], pairs, "gaussian", "frobenius", full_draws=1000,
                            cost={1: cost_ratio, 2: 2 * cost_ratio})
    for col, i in enumerate((1, 2)):
        want = 2
        for r in range(3):
            yd, cd = y[r, col].T @ w, c[r, col].T @ w
            v = w**2 @ c[r, col].var(axis=1, ddof=1)
            prec = cheap_draws_needed(yd, cd, v, CHEAP_SE_FRACTION, 1000)
            want = max(want, min(prec, int(np.ceil(cheap_draws_optimal(yd, cd, v, cost_ratio * (1 + col), 1000)))))
        assert got[i] == want <= plain[i]
    if cost_ratio == 1e9:
        assert got == plain
    if cost_ratio == 1e-3:
        assert all(got[i] < plain[i] for i in (1, 2))


def test_cost_cap_shrinks_every_count_by_one_factor():
    """Over the layers, the modelled cost of the cheap draws after the cap is at most the cap times the full
    draws' (but for the floor of 2), every count shrunk by the same factor (to rounding down)."""
    rng = np.random.default_rng(23)
    for _ in range(200):
        layers = range(1, rng.integers(1, 5) + 1)
        costs = {i: tuple(rng.uniform(0.01, 1, 3)) for i in layers}
        draws = {i: int(rng.integers(2, 10**6)) for i in layers}
        crossing = {i: int(rng.integers(2, draws[i] + 1)) for i in layers}
        full = int(rng.integers(3, 5000))
        new, crossed = cost_capped(draws, crossing, costs, full)
        spent = lambda d, x: sum(d[i] * costs[i][1] + x[i] * costs[i][2] for i in layers)  # noqa: E731
        budget = CHEAP_COST_CAP * full * sum(costs[i][0] for i in layers)
        if spent(draws, crossing) <= budget:
            assert (new, crossed) == (draws, crossing)
            continue
        share = budget / spent(draws, crossing)
        for before, after in ((draws, new), (crossing, crossed)):
            assert all(after[i] == max(2, np.floor(before[i] * share)) for i in layers)
        assert spent(new, crossed) <= budget + sum(2 * (costs[i][1] + costs[i][2]) for i in layers)


def test_cheap_draws_of_a_spec_cost_at_most_its_full_draws():
    """End to end (cheap_draws_for on a random network): where the rules ask for far more, the cheap draws
    drawn cost at most the full draws by pipeline.drawcost's model, summed over the layers."""
    spec = Spec.from_dict({"network": {"input_dim": 4, "output_dim": 3, "n_inputs": 6},
                           "grid": {"L": 3, "m": 8, "ratio": [0.1, 0.3], "layer": [1, 2, 3]},
                           "noise": {"draws": 50}})
    rng = np.random.default_rng(24)
    y, c = synthetic_pairs(rng, (1e-3, 1e-2), inputs=6, draws=50)
    y, c = np.concatenate([y, y[:, :1]], axis=1), np.concatenate([c, c[:, :1]], axis=1)  # three layers
    linear_pred = (rng.uniform(size=y.shape) < 0.3).astype(float)
    pred = np.where(rng.uniform(size=y.shape) < 0.05, 1 - linear_pred, linear_pred)
    weights = np.full(6, 1 / 6)
    cheap = cheap_draws_for(spec, 3, 8, 0, y, c, np.ones(6), pred, linear_pred)
    shapes = [(8, 4), (8, 8), (3, 8)]
    asked = cheap_draw_counts([1, 2, 3], [(y, c, weights, CHEAP_SE_FRACTION)], "gaussian", "frobenius")
    spent = full = unlimited = 0.0
    for i in (1, 2, 3):
        change, crossing = drawcost.cheap_draw_seconds(shapes, i, 6)
        layer = cheap.by_layer[i]
        spent += layer.change.draws * change + layer.crossings[0].draws * crossing
        unlimited += asked[i] * change
        full += 50 * drawcost.full_draw_work(shapes, i, 6, 2).seconds
    assert unlimited > 3 * full  # the rules alone would spend several times the full draws
    assert spent <= CHEAP_COST_CAP * full * (1 + 1e-12)
    assert spent >= 0.9 * CHEAP_COST_CAP * full  # and the cap takes what it allows


def first_order_setup(seed=5):
    rng = np.random.default_rng(seed)
    net = random_net(rng, 3, 6, 12, 3, biases=True)
    return net, rng.standard_normal((4, 6)), rng.uniform(0.5, 2.0, 4)


@pytest.mark.parametrize("distribution, norm", [("gaussian", "frobenius"), ("rademacher", "frobenius"),
                                                ("gaussian", "spectral")])
def test_shared_eta_cheap_draws_are_the_kernels_first_order_changes(distribution, norm):
    """From the same stream, the shared-eta cheap draws are the kernel's linear_change, summed over inputs
    with the weights, and its first-order prediction changes, averaged over inputs: the cheap path skips
    the network, never changes a draw."""
    net, x, w = first_order_setup()
    streams = lambda i: np.random.default_rng([9, i])  # noqa: E731
    full = measure_network(net, x, np.array([1.0]), (1, 2, 3), 30, distribution, norm, streams)
    fwd = net.forward(x.T)
    J = dict(jacobians(net, fwd, [1, 3]))
    for i in (1, 3):
        size = matrix_norm(net.weights[i - 1], norm)
        noise = LayerNoise(streams(i), net.shapes[i - 1], fwd.post[i - 1], distribution, norm, size)
        change, crossed = shared_eta_first_order(J[i], noise, 30, w, fwd.output, [1.0])
        np.testing.assert_allclose(change, w @ full.linear_change[0, i - 1], rtol=1e-12)
        np.testing.assert_array_equal(crossed[0], full.linear_pred_changed[0, i - 1].mean(axis=0))
    cheap = cheap_first_order(net, x, {1: 40, 2: 40}, distribution, norm, streams, w)
    for i in (1, 2):
        want = w @ full.linear_change[0, i - 1]  # 30 of the same 40 draws: the means agree loosely
        assert cheap[i].change.draws == 40 and cheap[i].change.mean == pytest.approx(want.mean(), rel=0.5)


@pytest.mark.parametrize("distribution", ["gaussian", "sphere"])
def test_independent_cheap_draws_have_the_kernels_law(distribution):
    """The O(k) draws of one input's ||J eta h|| have the law of the kernel's (which forms eta h): each
    input's mean within 4 standard errors of 6000 kernel draws, and the spread of the estimate
    sum_p w_p mean_p over 200 repetitions matches its stated variance."""
    net, x, w = first_order_setup(6)
    full = measure_network(net, x, np.array([1.0]), (2,), 6000, distribution, "frobenius",
                           lambda i: np.random.default_rng([4, i]))
    kernel = full.linear_change[0, 0]  # (input, draw)
    fwd = net.forward(x.T)
    J = dict(jacobians(net, fwd, [2]))[2]
    size = matrix_norm(net.weights[1], "frobenius")
    rng = np.random.default_rng(11)
    reps = [independent_first_order(J, fwd.post[1], size, 500, rng, w) for _ in range(200)]
    means = np.array([r.change.mean for r in reps])
    se = np.sqrt(w**2 @ kernel.var(axis=1) / 6000 + means.var() / 200)
    assert abs(means.mean() - w @ kernel.mean(axis=1)) < 4 * se
    assert np.mean([r.change.var for r in reps]) == pytest.approx(means.var(ddof=1), rel=0.25)
    one = independent_first_order(J[:1], fwd.post[1][:, :1], size, 6000, rng, np.ones(1)).change
    assert abs(one.mean - kernel[0].mean()) < 4 * np.sqrt(one.var + kernel[0].var() / 6000)


def test_cheap_mean_pools_layers_and_ratios():
    """The cheap mean of several cells: each layer's draws serve every ratio, layers are independent."""
    a, b = LayerCheap(1.5, 0.01, 50, 49), LayerCheap(4.0, 0.03, 80, 79)
    got = CheapDraws({1: FirstOrderCheap(a), 2: FirstOrderCheap(b)}).mean([0.1, 0.3], [1, 2])
    assert got.mean == pytest.approx((0.2 * 1.5 + 0.2 * 4.0) / 2)
    assert got.var == pytest.approx(0.2**2 * (0.01 + 0.03) / 4)
    parts = np.array([0.2**2 * 0.01 / 4, 0.2**2 * 0.03 / 4])
    assert got.df == pytest.approx(parts.sum() ** 2 / (parts[0] ** 2 / 49 + parts[1] ** 2 / 79))


RATIOS = (1e-3, 1e-2, 0.1)
# The agreement checks below are 16 (4 cells at each of 3 ratios, and the prediction-change rate of 4 cells
# at r = 0.1), each a joint 95% interval of the difference: Bonferroni-widened so that all of them hold with
# 95% probability when the estimator is unbiased (one 95% check in 16 fails that often by chance alone)
FAMILY = scipy.stats.norm.ppf(1 - 0.025 / 16) / scipy.stats.norm.ppf(0.975)


@pytest.fixture(scope="module")
def trained(digits_zoo, tmp_path_factory):
    """A trained digits network (L = 3, m = 16, 60 test inputs, every layer): ``estimate`` with 200 draws, and
    the per-draw mean relative change of an independent plain run of 3000 draws from another random seed,
    straight from the kernel, (ratio, layer, draw)."""
    root = tmp_path_factory.mktemp("cv")
    np.save(root / "x.npy", digits_zoo["x"][:60])

    def spec(draws, seed):
        return Spec.from_dict({
            "network": {"init": str(digits_zoo["models"] / "digits_L3_m16_seed0.safetensors"),
                        "input": str(root / "x.npy")},
            "grid": {"ratio": list(RATIOS), "layer": "all"}, "noise": {"draws": draws}, "random_seed": seed})
    block = measure_block(spec(3000, 1), 3, 16, (0,))
    reference = (block.delta_norm[:, :, 0] / block.output_norm[0][None, None, :, None]).mean(axis=2)
    return estimate(spec(200, 0)), reference, block.pred_changed[:, :, 0].mean(axis=2)


@pytest.mark.parametrize("ratio", RATIOS)
def test_control_variate_agrees_with_a_long_plain_run_on_a_trained_network(trained, ratio):
    """In every layer and pooled, the CV estimate lies within the joint interval with the long plain run (95%
    over the family of checks: FAMILY); at r <= 0.01 its interval is at least 5x narrower than the plain one
    of the same 200 draws."""
    short, reference, pred = trained
    r = RATIOS.index(ratio)
    s = short["by_ratio"][repr(ratio)]
    cells = [(s, reference[r].mean(axis=0), pred[r].mean(axis=0)),
             *((s["by_layer"][str(i)], reference[r, i - 1], pred[r, i - 1]) for i in (1, 2, 3))]
    crossings = 0
    for cell, long, long_pred in cells:
        if cell["control_variate"]["pred_change_ci95"] is not None:  # the prediction-change rate likewise
            crossings += 1
            got, ci = cell["control_variate"]["pred_change_rate"], cell["control_variate"]["pred_change_ci95"]
            long_half = scipy.stats.t.ppf(0.975, long_pred.size - 1) * scipy.stats.sem(long_pred)
            assert abs(got - long_pred.mean()) <= FAMILY * np.hypot((ci[1] - ci[0]) / 2, long_half)
            plain = cell["plain"]["pred_change_ci95"]
            assert ci[1] - ci[0] < plain[1] - plain[0]
    assert crossings == (4 if ratio == 0.1 else 0)  # predictions change at r = 0.1 only
    for cell, long, _ in cells:
        cv, plain = cell["control_variate"], cell["plain"]
        assert cell["printed"] == "control_variate" and plain["ci95"] == cell["ci95"]
        half = lambda ci: (ci[1] - ci[0]) / 2  # noqa: E731
        long_half = half(scipy.stats.t.interval(0.95, long.size - 1, loc=long.mean(), scale=scipy.stats.sem(long)))
        assert abs(cv["mean_rel_change"] - long.mean()) <= FAMILY * np.hypot(half(cv["ci95"]), long_half)
        width = half(plain["ci95"]) / half(cv["ci95"])
        assert width == pytest.approx(cv["width_ratio"], rel=1e-9)
        if ratio <= 0.01:
            assert width >= 5


def test_estimate_prints_the_control_variate_for_one_network_and_plain_for_several():
    """The table's E R and CI are the JSON's control-variate ones for one network (the plain ones and the
    reason are printed below it), and the plain ones for several networks, where no control applies."""
    from click.testing import CliRunner

    from pipeline.cli import main

    args = ["estimate", "--L", "3", "--m", "16", "--d", "8", "--k", "4", "--draws", "40", "--ratio", "0.01",
            "--layer", "2"]
    for seeds in ("1", "3"):
        js = json.loads(CliRunner().invoke(main, [*args, "--seeds", seeds, "--json"]).stdout)
        table = CliRunner().invoke(main, [*args, "--seeds", seeds]).stdout.splitlines()
        row = next(line for line in table if line.split()[:2] == ["0.01", "2"]).replace("[", " ").replace(",", " ")
        shown = [float(v) for v in row.replace("]", " ").split()[3:6]]
        if seeds == "1":
            assert js["printed"] == "control_variate" and js["control_variate"]["width_ratio"] > 1
            want = [js["control_variate"]["mean_rel_change"], *js["control_variate"]["ci95"]]
            assert any(line.startswith("Plain Monte Carlo") and f"{js['plain']['ci95'][0]:.4g}" in line
                       for line in table)
        else:
            assert js["printed"] == "plain" and js["control_variate"] is None
            assert js["printed_why"].startswith("several networks") and "Plain Monte Carlo" not in "".join(table)
            assert js["plain"]["ci95"] == js["ci95"]
            want = [js["mean_rel_change"], *js["ci95"]]
        np.testing.assert_allclose(shown, want, rtol=1e-3)


def test_report_of_one_network_prints_the_estimate_commands_control_variate(digits_zoo, tmp_path):
    """A store of one network file: the report's control-variate answer is ``estimate``'s for the same spec
    (the store's draws, the network rebuilt from the recorded spec, the same cheap draws), and its
    interval is narrower than the plain one it prints above it."""
    import re

    from click.testing import CliRunner

    from pipeline.cli import main
    from pipeline_helpers import build_store

    np.save(tmp_path / "x.npy", digits_zoo["x"][:30])
    raw = {"network": {"init": str(digits_zoo["models"] / "digits_L3_m16_seed0.safetensors"),
                       "input": str(tmp_path / "x.npy")}, "grid": {"ratio": [0.01, 0.1]}, "noise": {"draws": 24}}
    path = build_store(tmp_path / "one.zarr", raw)
    res = CliRunner().invoke(main, ["report", path, "--out", str(tmp_path / "rep"), "--bootstrap", "10",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    index = (tmp_path / "rep" / "index.md").read_text()
    line = re.search(r"- for L = 3, m = 16, E\|\|v - v\*\|\| / \|\|v\|\| = \*\*(\S+)\*\* \[(\S+), (\S+)\] "
                     r"\((\d+) cheap draws per layer, (\S+) times narrower", index)
    want = estimate(Spec.from_dict(raw))["by_ratio"]["0.1"]["control_variate"]
    shown = [float(line[i]) for i in (1, 2, 3)]
    np.testing.assert_allclose(shown, [want["mean_rel_change"], *want["ci95"]], rtol=1e-3)
    assert int(line[4]) == want["cheap_draws"] and float(line[5]) == pytest.approx(want["width_ratio"], rel=1e-2)
    assert float(line[5]) > 1


def test_crossing_threshold_is_where_the_argmax_changes():
    """The threshold s* of v + s d: the argmax is the clean one just below it and another just above."""
    rng = np.random.default_rng(13)
    v, d = rng.standard_normal((5, 30)), rng.standard_normal((30, 5, 7))
    at = crossing_threshold(v, d)
    clean = v.argmax(axis=0)
    finite = np.isfinite(at)
    assert 0 < finite.mean() < 1
    for s, same in ((at * (1 - 1e-9), True), (at * (1 + 1e-9), False), (np.full_like(at, 1e6), None)):
        moved = (v.T[:, :, None] + np.where(finite, s, 1e6)[:, None, :] * d).argmax(axis=1)
        kept = moved == clean[:, None]
        assert np.all(kept[finite] == same) if same is not None else np.all(kept[~finite])
    assert np.all(np.isinf(crossing_threshold(v[:1], d[:, :1])))  # k = 1: never


def test_independent_cheap_crossings_have_the_kernels_law():
    """The O(k r) draws of one input's first-order prediction change match the kernel's (6000 draws of eta)
    at two ratios, input by input within 4 standard errors."""
    net, x, w = first_order_setup(7)
    ratios = np.array([0.3, 1.0])
    full = measure_network(net, x, ratios, (1,), 6000, "gaussian", "frobenius",
                           lambda i: np.random.default_rng([3, i]))
    kernel = full.linear_pred_changed[:, 0]  # (ratio, input, draw)
    assert 0.02 < kernel.mean() < 0.98
    fwd = net.forward(x.T)
    J = dict(jacobians(net, fwd, [1]))[1]
    size = matrix_norm(net.weights[0], "frobenius")
    cheap = independent_first_order(J, fwd.post[0], size, 6000, np.random.default_rng(1), w, fwd.output, ratios)
    for p in range(x.shape[0]):  # one input alone: its own rate
        est = independent_first_order(J[p:p + 1], fwd.post[0][:, p:p + 1], size, 6000, np.random.default_rng(20 + p),
                                      np.ones(1), fwd.output[:, p:p + 1], ratios).crossings
        for r in range(2):
            se = np.sqrt(est[r].var + kernel[r, p].var() / 6000)
            assert abs(est[r].mean - kernel[r, p].mean()) <= 4 * se
    for r in range(2):
        assert abs(cheap.crossings[r].mean - kernel[r].mean()) < 4 * np.sqrt(cheap.crossings[r].var
                                                                            + kernel[r].mean(axis=0).var() / 6000)


def test_shared_eta_cheap_draws_are_capped_per_full_draw():
    """Shared-eta cheap draws cost nearly a full draw: at most CHEAP_SHARED_PER_FULL per full draw, while the
    rotation-invariant ones follow the rule alone."""
    rng = np.random.default_rng(14)
    c = rng.uniform(1, 2, (1, 1, 5, 50))
    y = c + 1e-3 * rng.standard_normal(c.shape)
    pairs = [(y, c, np.full(5, 0.2), CHEAP_SE_FRACTION)]
    free = cheap_draw_counts([1], pairs, "gaussian", "frobenius")[1]
    shared = cheap_draw_counts([1], pairs, "rademacher", "frobenius")[1]
    assert shared == CHEAP_SHARED_PER_FULL * 50
    yd, cd = y[0, 0].mean(axis=0), c[0, 0].mean(axis=0)
    assert cheap_draw_counts([1], pairs, "gaussian", "spectral")[1] == min(
        CHEAP_SHARED_PER_FULL * 50, cheap_draws_needed(yd, cd, cd.var(ddof=1)))
    assert free == cheap_draws_needed(yd, cd, (c[0, 0].var(axis=1, ddof=1) * 0.04).sum())


def test_thresholds_within_a_limit_are_the_thresholds():
    """Skipping the directions that cannot cross below the limit changes no threshold below it."""
    from pipeline.control import _thresholds_within

    rng = np.random.default_rng(15)
    v, d = rng.standard_normal((6, 40)), rng.standard_normal((40, 6, 9))
    limit = rng.uniform(0, 2, (40, 9))
    full, within = crossing_threshold(v, d), _thresholds_within(v, d, limit)
    below = full < limit
    assert 0 < below.mean() < 1
    np.testing.assert_array_equal(within[below], full[below])
    assert np.all(within[~below] >= limit[~below])
