"""The report against independent computations on real stores.

What index.md prints is checked against direct xarray reductions of the store
and scipy's t-interval; what each plot draws is read back from its matplotlib
lines and checked against the same reductions. Stores with every layer, with a
subset of layers (``grid.layer: [2, 4]``), with missing blocks and with three
inputs per network are covered.
"""

from __future__ import annotations

import json
import re

import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner
from scipy import stats

from pipeline.analysis import figures, fit, fittext, report, summaries, theory
from pipeline.analysis.intervals import t_interval
from pipeline.cli import main
from pipeline_helpers import build_store, raw_spec

SPEC = {"network": {"input_dim": 8, "output_dim": 4, "init": "he"},
        "grid": {"L": [2, 4], "m": [16, 32], "ratio": [0.03, 0.12, 0.3], "seeds": 6},
        "noise": {"draws": 4}, "execution": {"seeds_per_block": 3}, "random_seed": 3}
STORES = {
    "full": (SPEC, lambda key: False),
    "layers_2_4": (raw_spec(SPEC, grid={"layer": [2, 4]}), lambda key: False),
    "partial": (SPEC, lambda key: (key.L, key.m) == (4, 32) or key.seed_start == 3),
    "three_inputs": (raw_spec(SPEC, network={"n_inputs": 3}), lambda key: False),
}
RATIO = 0.12  # the store's ratio closest to 0.1 on a log scale
ANSWER = re.compile(
    r"- for L = (?P<L>\d+), m = (?P<m>\d+), r = 0\.12, E\|\|v - v\*\|\| / \|\|v\|\| = \*\*(?P<mean>\S+)\*\*"
    r" \[(?P<lo>\S+), (?P<hi>\S+)\] \((?P<networks>\d+) networks, layers (?P<layers>[^)]+)\); by layer from "
    r"(?P<min>\S+) \(i = (?P<layer_min>\d+)\) to (?P<max>\S+) \(i = (?P<layer_max>\d+)\); theory "
    r"(?P<theory>\S+); the worst-case bound is (?P<looseness>\S+) times larger \(He-init estimate "
    r"(?P<looseness_theory>\S+)\)\.")


@pytest.fixture(scope="module", params=list(STORES))
def made(request, tmp_path_factory):
    """(name, store path, report directory) of one store, reported through the CLI."""
    base = tmp_path_factory.mktemp(request.param)
    raw, skip = STORES[request.param]
    path = build_store(base / "store.zarr", raw, skip)
    res = CliRunner().invoke(main, ["report", path, "--out", str(base / "out"), "--bootstrap", "20",
                                     "--no-progress"])
    assert res.exit_code == 0, res.output
    return request.param, path, base / "out"


@pytest.fixture(scope="module")
def direct(made) -> xr.Dataset:
    """The store read eagerly by xarray alone, with R and the looseness computed here."""
    ds = xr.open_zarr(made[1], consolidated=False).load()
    return ds.assign(R=ds["delta_norm"] / ds["output_norm"],
                     looseness=ds["bound"] / ds["delta_norm"].mean("draw"))  # per network and input


@pytest.fixture(scope="module")
def sample(made):
    return summaries.load(made[1], progress=False)


@pytest.fixture(scope="module")
def result(sample):
    return fit.fit(sample, n_boot=20, progress=False, with_cells=True)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def layers_of(ds, L) -> list[int]:
    return [int(i) for i in ds.layer.values if i <= L]


def sig3(printed: str, want: float) -> bool:
    """``printed`` is ``want`` to 3 significant digits (either side of a rounding boundary)."""
    return printed in {f"{want * (1 - 1e-12):.3g}", f"{want * (1 + 1e-12):.3g}"}


def mean_except(da: xr.DataArray, *keep: str) -> xr.DataArray:
    return da.mean([d for d in da.dims if d not in keep])


def per_network_R(ds, L, m, ratio=RATIO) -> np.ndarray:
    """Mean of R over the measured layers, the inputs and the draws, one value per finished network."""
    v = mean_except(ds["R"].sel(L=L, m=m, ratio=ratio, layer=layers_of(ds, L)), "seed").values
    return v[np.isfinite(v)]


def scipy_interval(x: np.ndarray) -> tuple[float, float]:
    sem = np.std(x, ddof=1) / np.sqrt(x.size)
    return stats.t.interval(0.95, x.size - 1, loc=x.mean(), scale=sem)


def mean_theory(L, m, k, layers) -> float:
    after = L - np.array(layers)
    return float(np.mean([theory.attenuation(RATIO, a) * np.exp((2 * a / m + 1 / k) / 2) for a in after]))


def expected_rows(ds) -> dict:
    k = json.loads(ds.attrs["spec"])["network"]["output_dim"]
    rows = {}
    for L in ds.L.values:
        for m in ds.m.values:
            per_net, layers = per_network_R(ds, L, m), layers_of(ds, L)
            if not per_net.size:
                continue
            sel = dict(L=L, m=m, ratio=RATIO, layer=layers)
            by_layer = mean_except(ds["R"].sel(sel), "layer").values
            rows[(int(L), int(m))] = {
                "mean": per_net.mean(), "ci95": scipy_interval(per_net), "networks": per_net.size,
                "layers": layers, "min": by_layer.min(), "layer_min": layers[int(np.argmin(by_layer))],
                "max": by_layer.max(), "layer_max": layers[int(np.argmax(by_layer))],
                "theory": mean_theory(int(L), int(m), k, layers),
                "looseness": float(ds["looseness"].sel(sel).mean()),
                "looseness_theory": float(np.mean(theory.bound_looseness(int(L), int(m), 8, k, layers,
                                                                         "frobenius"))),
            }
    return rows


# --- index.md ---------------------------------------------------------------------------------

def test_answer_matches_direct_reductions_and_scipy(made, direct):
    name, _, out = made
    index = (out / "index.md").read_text()
    printed = {(int(g["L"]), int(g["m"])): g for g in ANSWER.finditer(index)}
    want = expected_rows(direct)
    assert set(printed) == set(want) and want, index
    for key, w in want.items():
        g = printed[key]
        assert sig3(g["mean"], w["mean"]), (key, g["mean"], w["mean"])
        assert sig3(g["lo"], w["ci95"][0]) and sig3(g["hi"], w["ci95"][1]), (key, g["lo"], g["hi"], w["ci95"])
        assert sig3(g["theory"], w["theory"]), (key, g["theory"], w["theory"])
        assert sig3(g["looseness"], w["looseness"]), (key, g["looseness"], w["looseness"])
        assert sig3(g["looseness_theory"], w["looseness_theory"]), key
        assert sig3(g["min"], w["min"]) and sig3(g["max"], w["max"]), key
        assert (int(g["layer_min"]), int(g["layer_max"])) == (w["layer_min"], w["layer_max"]), key
        assert int(g["networks"]) == w["networks"], key
        layers = w["layers"]
        assert g["layers"] == (f"i = 1..{key[0]}" if layers == list(range(1, key[0] + 1)) and len(layers) > 1
                               else f"i = {layers[0]}" if len(layers) == 1
                               else "i in {" + ", ".join(map(str, layers)) + "}"), g["layers"]
    means = [w["mean"] for w in want.values()]
    words = re.search(r"moves the output by (\S+) to (\S+) of its norm", index)
    assert sig3(words[1], min(means)) and sig3(words[2], max(means)), words[0]
    loose = [w["looseness"] for w in want.values()]
    words = re.search(r"The worst-case Lipschitz bound is (\S+) to (\S+) times the actual", index)
    assert sig3(words[1], min(loose)) and sig3(words[2], max(loose)), words[0]


def test_linear_table_of_random_networks_matches_the_store(made, direct):
    """index.md's linear table, every column of every (L, m, layer) row, against xarray on the store: a
    column computed from the wrong variable, or printed under the wrong header, fails."""
    _, _, out = made
    lines = (out / "index.md").read_text().splitlines()
    start = lines.index("## The linear answer and the worst direction")
    head = next(j for j in range(start, len(lines)) if lines[j].startswith("| L | m | i | E R | RMS R"))
    assert f"At r = {RATIO:g}," in lines[start + 2]
    rows = []
    for ln in lines[head + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    v = direct["output_norm"]
    over = ["seed", "input"]
    rel = direct["R"].sel(ratio=RATIO)
    rms = np.sqrt((rel**2).mean(over + ["draw"]))
    worst = (direct["worst_realised"] / v).sel(ratio=RATIO).mean(over)
    bound = (direct["bound"] / v).sel(ratio=RATIO).mean(over)
    want = [rel.mean(over + ["draw"]), rms, np.sqrt(((direct["linear_rms"] / v).sel(ratio=RATIO) ** 2).mean(over)),
            (direct["worst_linear"] / v).sel(ratio=RATIO).mean(over), worst, bound, worst / rms, bound / worst]
    expected = [(int(L), int(m), int(i)) for L in direct.L.values for m in direct.m.values for i in direct.layer.values
                if i <= L and np.isfinite(float(want[0].sel(L=L, m=m, layer=i)))]
    assert [(int(r[0]), int(r[1]), int(r[2])) for r in rows] == expected and expected
    for r in rows:
        cell = dict(L=int(r[0]), m=int(r[1]), layer=int(r[2]))
        for text, da in zip(r[3:], want):
            assert sig3(text, float(da.sel(cell))), (r, text, float(da.sel(cell)))


def test_every_plot_is_written_and_embedded(made):
    _, _, out = made
    index = (out / "index.md").read_text()
    embedded = re.findall(r"!\[[^\]]+\]\(([^)]+\.png)\)", index)
    # given.png only for networks read from files
    assert sorted(embedded) == sorted(name for name, *_ in report.PLOTS if name != "given.png")
    for name in embedded:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    written = json.loads((out / "fit.json").read_text())
    assert written["blocks_total"] == 8


def test_index_says_what_is_missing(made):
    name, _, out = made
    index = (out / "index.md").read_text()
    if name == "partial":
        assert "3 of 8 blocks done" in index and "L=4 m=32 seeds 0..5" in index and "L=2 m=16 seeds 3..5" in index
        assert "for L = 4, m = 32," not in index and "for L = 4, m = 16," in index
    else:
        assert "all 8 blocks done" in index


def test_only_measured_layers_are_named(made, direct, result):
    """With grid.layer [2, 4], nothing names layer 1 or 3: not the answer, the plots or the fit's cells."""
    name, path, out = made
    measured = {int(i) for i in direct.layer.values}
    index = (out / "index.md").read_text()
    named = {int(i) for i in re.findall(r"\bi = (\d+)\b", index)}
    named |= {int(i) for group in re.findall(r"i in \{([\d, ]+)\}", index) for i in group.split(",")}
    assert named and named <= measured, named
    assert {c["layer"] for c in result["cells"]} == measured
    fig = figures.plot_theory(summaries.load(path, progress=False))
    titled = {int(t) for ax in fig.axes for t in re.findall(r"layer i = (\d+)", ax.get_title())}
    assert titled <= measured and titled
    if name == "layers_2_4":
        assert measured == {2, 4} and "i in {2, 4}" in index


def test_fit_and_report_commands_on_a_subset_of_layers(tmp_path):
    """The documented option grid.layer: [2, 4]: both commands succeed and name only layers 2 and 4."""
    path = build_store(tmp_path / "s.zarr", raw_spec(SPEC, grid={"layer": [2, 4]}))
    res = CliRunner().invoke(main, ["fit", path, "--bootstrap", "20", "--no-progress", "--out",
                                     str(tmp_path / "fit.json")])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and "E R = C r^a L^b m^c" in res.output
    cells = json.loads((tmp_path / "fit.json").read_text())["cells"]
    assert {c["layer"] for c in cells} == {2, 4}
    assert {(c["L"], c["layer"]) for c in cells} == {(2, 2), (4, 2), (4, 4)}
    res = CliRunner().invoke(main, ["report", path, "--out", str(tmp_path / "rep"), "--bootstrap", "20",
                                     "--no-progress"])
    assert res.exit_code == 0, res.output
    index = (tmp_path / "rep" / "index.md").read_text()
    assert "layers i = 2)" in index and "layers i in {2, 4})" in index
    assert not re.search(r"\bi = [13]\b", index)


# --- plots: the lines hold the data they describe -------------------------------------------------

def lines(ax, label: str):
    found = [line for line in ax.get_lines() if line.get_label() == label]
    assert len(found) == 1, (label, [line.get_label() for line in ax.get_lines()])
    return found[0]


def panel(fig, title: str):
    found = [ax for ax in fig.axes if ax.get_title() == title]
    assert len(found) == 1, (title, [ax.get_title() for ax in fig.axes])
    return found[0]


def finished(ds, m) -> list:
    return [L for L in ds.L.values if per_network_R(ds, L, m).size]


def test_bound_plot_lines_are_the_looseness_of_the_store(sample, direct):
    fig = figures.plot_bound(sample, RATIO)
    ax = fig.axes[0]
    spec = json.loads(direct.attrs["spec"])
    for m in direct.m.values:
        Ls = finished(direct, m)
        data = lines(ax, f"m = {m}")
        want = [float(direct["looseness"].sel(L=L, m=m, ratio=RATIO, layer=layers_of(direct, L)).mean())
                for L in Ls]
        np.testing.assert_array_equal(data.get_xdata(), Ls)
        np.testing.assert_allclose(data.get_ydata(), want, rtol=1e-9)
        th = [np.mean(theory.bound_looseness(int(L), int(m), 8, 4, layers_of(direct, L),
                                             spec["noise"]["norm"])) for L in Ls]
        np.testing.assert_allclose(lines(ax, f"m = {m}: theory at He init").get_ydata(), th, rtol=1e-12)


def test_depth_plot_holds_the_means_intervals_and_theory(sample, direct):
    fig = figures.plot_depth(sample, RATIO)
    ax = fig.axes[0]
    bars = {c.get_label(): c for c in ax.containers}
    for m in direct.m.values:
        Ls = finished(direct, m)
        container = bars[f"m = {m} (95% CI over networks)"]
        data_line, _, (segments,) = container.lines
        means = [per_network_R(direct, L, m).mean() for L in Ls]
        np.testing.assert_allclose(data_line.get_ydata(), means, rtol=1e-9)
        for seg, L in zip(segments.get_segments(), Ls):
            lo, hi = scipy_interval(per_network_R(direct, L, m))
            np.testing.assert_allclose([seg[0][1], seg[1][1]], [lo, hi], rtol=1e-9)
        th = [mean_theory(int(L), int(m), 4, layers_of(direct, L)) for L in Ls]
        np.testing.assert_allclose(lines(ax, f"m = {m}: theory (arc-cosine, mean)").get_ydata(), th, rtol=1e-9)


def test_ratio_plot_lines_are_mean_R_by_ratio(sample, direct):
    fig = figures.plot_ratio(sample)
    for m in direct.m.values:
        ax = panel(fig, f"m = {m}")
        for L in finished(direct, m):
            want = [per_network_R(direct, L, m, r).mean() for r in direct.ratio.values]
            line = lines(ax, f"L = {L}")
            np.testing.assert_allclose(line.get_xdata(), direct.ratio.values)
            np.testing.assert_allclose(line.get_ydata(), want, rtol=1e-9)


def test_position_plot_medians_over_networks(sample, direct):
    fig = figures.plot_position(sample, RATIO)
    for m in direct.m.values:
        for L in finished(direct, m):
            layers = np.array(layers_of(direct, L))
            ax = panel(fig, f"L = {L}, m = {m}, r = {RATIO:g}")
            per_net = mean_except(direct["R"].sel(L=L, m=m, ratio=RATIO, layer=layers), "layer", "seed")
            want = [np.median(v[np.isfinite(v)]) for v in per_net.transpose("layer", "seed").values]
            median = lines(ax, "median, 25-75%, 10-90%")
            np.testing.assert_allclose(median.get_xdata(), layers / L)
            np.testing.assert_allclose(median.get_ydata(), want, rtol=1e-9)
            np.testing.assert_allclose(lines(ax, "theory: arc-cosine attenuation").get_ydata(),
                                       [theory.attenuation(RATIO, L - i) for i in layers], rtol=1e-12)


def test_theory_plot_medians_over_r(sample, direct):
    fig = figures.plot_theory(sample)
    m = max(m for m in direct.m.values if finished(direct, m))
    r = direct.ratio.values
    checked = 0
    for ax in fig.axes:
        title = re.fullmatch(r"L = (\d+), m = (\d+), layer i = (\d+)", ax.get_title())
        if not title:
            continue
        L, mm, i = map(int, title.groups())
        assert mm == m
        per_net = mean_except(direct["R"].sel(L=L, m=m, layer=i), "ratio", "seed").transpose("ratio", "seed").values
        want = [np.median(v[np.isfinite(v)]) for v in per_net] / r
        np.testing.assert_allclose(lines(ax, "median, 25-75%, 10-90%").get_ydata(), want, rtol=1e-9)
        checked += 1
    assert checked >= 2


def test_log_variance_plot_points_are_cell_variances(sample, direct, result):
    fig = figures.plot_log_variance(sample, result)
    ax = fig.axes[0]
    logR = np.log(direct["R"])
    for m in direct.m.values:
        want = []
        for L in finished(direct, m):
            var = logR.sel(L=L, m=m, layer=layers_of(direct, L)).var(["seed", "input", "draw"], ddof=1)
            want += list(var.values.ravel())
        got = lines(ax, f"cells with m = {m}").get_ydata()
        np.testing.assert_allclose(np.sort(got), np.sort(want), rtol=1e-9)


def test_residual_plot_points_are_log_mean_minus_the_law(sample, direct, result):
    fig = figures.plot_residuals(result)
    ax = fig.axes[0]
    want, got = [], []
    for pos in fit.POSITIONS:
        cells = [c for c in result["cells"] if figures._position(c) == pos]
        if not cells:
            continue
        got += list(lines(ax, f"{pos} layer").get_ydata())
        for c in cells:
            R = direct["R"].sel(L=c["L"], m=c["m"], ratio=c["ratio"], layer=c["layer"])
            want.append(np.log(float(R.mean()) / c["power_law"]))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


# --- small pieces -----------------------------------------------------------------------------

def test_out_is_a_file_exits_2(tmp_path, made):
    target = tmp_path / "file"
    target.write_text("x")
    res = CliRunner().invoke(main, ["report", made[1], "--out", str(target), "--bootstrap", "0"])
    assert res.exit_code == 2 and "Traceback" not in res.output and str(target) in res.output


def test_closest_ratio():
    assert report.closest_ratio([0.01, 0.03, 0.3]) == 0.3
    assert report.closest_ratio([0.2, 0.05]) == 0.05  # a tie on a log scale: the smaller
    assert report.closest_ratio([0.003, 0.12, 1.0]) == 0.12


@pytest.mark.parametrize("x", [[1.0, 2.0, 4.0, np.nan], [0.1, 0.11, 0.13, 0.09, 0.12, 0.1]])
def test_t_interval_is_scipys_with_the_standard_error(x):
    x = np.array(x)
    finite = x[np.isfinite(x)]
    np.testing.assert_allclose(t_interval(x), scipy_interval(finite), rtol=1e-12)


def test_t_interval_is_undefined_for_one_value_or_no_spread():
    assert t_interval([1.0, np.nan]) is None
    assert t_interval([2.0, 2.0, 2.0]) is None


# --- a random network of another activation: no theory, and the report says why ----------------

def _with_activation(path, activation):
    """Record ``network.activation`` in a store's spec, as a store made with that activation records it."""
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    spec = json.loads(group.attrs["spec"])
    spec["network"]["activation"] = activation
    group.attrs["spec"] = json.dumps(spec)


def test_non_relu_random_networks_get_no_theory(tmp_path):
    """The random-init theory is about ReLU: with network.activation tanh the fit prints the power law
    without theory values and says why, and no plot draws a theory line (read from the lines' data)."""
    path = build_store(tmp_path / "tanh.zarr", SPEC)
    _with_activation(path, "tanh")
    res = CliRunner().invoke(main, ["fit", path, "--json", "--bootstrap", "10", "--no-progress"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["random_network_theory"] == {
        "applies": False, "why_not": "the random-network theory applies to random ReLU networks only, and these "
                                     "networks use tanh"}
    assert "theory" not in out["power_law"] and "attenuation" not in out
    assert "theory" not in out["log_variance"] and out["power_law"]["ratio"]["value"] is not None
    text = CliRunner().invoke(main, ["fit", path, "--bootstrap", "10", "--no-progress"]).output
    assert "E R = C r^a L^b m^c" in text and "arc-cosine" not in text and "(theory 2)" not in text
    assert "No random-network law or theory values: the random-network theory applies to random ReLU networks " \
           "only, and these networks use tanh." in text

    sample = summaries.load(path, progress=False)
    result = fit.fit(sample, n_boot=5, progress=False, with_cells=True)
    made = dict(figures.figures(sample, result, RATIO))
    assert "theory.png" not in made and {"ratio.png", "depth.png", "log_variance.png", "residuals.png"} <= set(made)
    r = sample.net.ratio.values
    for name, fig in made.items():
        for ax in fig.axes:
            for line in ax.get_lines():
                label = line.get_label()
                assert "theory" not in label and "first order" not in label, (name, label)
                x, y = (np.asarray(v, float) for v in line.get_data())
                if x.size == r.size and np.allclose(x, r):  # against r: never R = r nor an attenuation curve
                    assert not np.allclose(y, r) and not np.allclose(y, 1.0), (name, label)
                    for depth in range(4):
                        assert not np.allclose(y, theory.attenuation(r, depth), rtol=1e-6), (name, label)
                        assert not np.allclose(y, theory.attenuation(r, depth) / r, rtol=1e-6), (name, label)
        plt.close(fig)
    rep = CliRunner().invoke(main, ["report", path, "--out", str(tmp_path / "rep"), "--bootstrap", "10",
                                    "--no-progress"])
    assert rep.exit_code == 0, rep.output
    index = (tmp_path / "rep" / "index.md").read_text()
    assert "theory.png" not in index and "He-init estimate" not in index and "; theory " not in index
    assert "these networks use tanh" in index and "Dashed: arc-cosine" not in index
    # the numbers are those of the same store as ReLU: only what is drawn beside them changed
    relu = summaries.load(build_store(tmp_path / "relu.zarr", SPEC), progress=False)
    np.testing.assert_array_equal(sample.net["mean"].values, relu.net["mean"].values)


def test_every_figure_fits_a_page(sample, result):
    """At most three panels per row in every plot of the report (none of six in a single row)."""
    made = dict(figures.figures(sample, result, RATIO))
    for name, fig in made.items():
        grids = {ax.get_subplotspec().get_gridspec() for ax in fig.axes}
        assert all(g.ncols <= 3 for g in grids), (name, [g.ncols for g in grids])
        plt.close(fig)


def test_six_panels_are_two_rows_of_three():
    """The nonlinearity plot of six (L, m) draws two rows of three panels, not one row of six."""
    coords = {"L": [2, 3, 4], "m": [8, 16], "ratio": [0.01, 0.1], "layer": [1, 2, 3, 4]}
    shape = tuple(len(v) for v in coords.values())
    summary = xr.Dataset({"nonlinearity": (tuple(coords), np.ones(shape))}, coords=coords)
    fig = figures.plot_nonlinearity(summary)
    assert len(fig.axes) == 6
    assert {(ax.get_subplotspec().rowspan.start, ax.get_subplotspec().colspan.start) for ax in fig.axes} == {
        (r, c) for r in range(2) for c in range(3)}
    plt.close(fig)
