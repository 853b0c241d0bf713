"""The report and the fit on given networks (a zoo of trained digits networks, and one network file):
every printed number and plotted line against direct xarray reductions of the store."""

from __future__ import annotations

import json
import re
import shutil

import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner
from scipy import stats

from pipeline.analysis import figures, fit, given, linear, summaries, theory
from pipeline.cli import main
from pipeline.measure import measure_block
from pipeline.spec import Spec
from pipeline_helpers import build_store

RATIOS = [0.03, 0.1, 0.5]


def invoke(*args):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def zoo_store(digits_zoo, tmp_path_factory):
    """A store of the trained zoo (L 2 and 3, m 16, 2 seeds) on 60 test images with labels, and its report."""
    base = tmp_path_factory.mktemp("zoo")
    np.save(base / "x.npy", digits_zoo["x"][:60])
    np.save(base / "y.npy", digits_zoo["y"][:60])
    raw = {"name": "zoo", "random_seed": 5,
           "network": {"init": str(digits_zoo["models"] / "digits_L{L}_m{m}_seed{seed}.safetensors"),
                       "input": str(base / "x.npy"), "labels": str(base / "y.npy")},
           "grid": {"L": [2, 3], "m": [16], "ratio": RATIOS, "seeds": 2},
           "noise": {"draws": 6}, "execution": {"seeds_per_block": 1}}
    path = build_store(base / "store.zarr", raw)
    res = invoke("report", path, "--out", str(base / "out"), "--bootstrap", "20", "--no-progress")
    assert res.exit_code == 0, res.output
    ds = xr.open_zarr(path, consolidated=False).load()
    return path, base / "out", ds, raw


def table(index: str, header: str) -> list[list[str]]:
    """The rows of the markdown table whose header starts with ``header``."""
    lines = index.splitlines()
    start = next(j for j, ln in enumerate(lines) if ln.startswith(header))
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return rows


def close(text: str, value: float) -> bool:
    return text == "-" if not np.isfinite(value) else float(text) == pytest.approx(value, rel=6e-3)


def test_given_section_against_the_store(zoo_store):
    path, out, ds, raw = zoo_store
    index = (out / "index.md").read_text()
    assert "## Given networks on their data" in index and "theory 0" not in index
    rows = table(index, "| L | m | i | E R given")
    rel = ds.delta_norm / ds.output_norm
    at = dict(ratio=0.1)
    want_rows = [(L, i) for L in (2, 3) for i in range(1, L + 1)]
    assert [(int(r[0]), int(r[2])) for r in rows] == want_rows
    # the random reference, computed here independently of the report
    ref = Spec.from_dict({"random_seed": 5, "network": {"init": "he", "input": raw["network"]["input"],
                                                       "input_dim": 64, "output_dim": 10},
                          "grid": {"L": [2, 3], "m": [16], "ratio": RATIOS, "seeds": 4}, "noise": {"draws": 6}})
    for r in rows:
        L, m, i = int(r[0]), int(r[1]), int(r[2])
        cell = dict(L=L, m=m, layer=i, **at)
        assert close(r[3], float(rel.sel(cell).mean()))
        b = measure_block(ref, L, m, ref.grid.seeds)
        random_rel = b.delta_norm[1, i - 1] / b.output_norm[:, :, None]
        assert close(r[4], random_rel.mean())
        assert close(r[5], float(ds.pred_changed.sel(cell).mean()))
        assert close(r[6], b.pred_changed[1, i - 1].mean())
        assert close(r[7], float(ds.accuracy.sel(cell).mean()))
        assert close(r[8], float(ds.clean_accuracy.sel(L=L, m=m).mean()))
    for L in (2, 3):
        rate = ds.pred_changed.sel(L=L, m=16, ratio=0.1).mean(["seed", "input", "draw"])
        rate = rate.sel(layer=[i for i in range(1, L + 1)])
        mean = rel.sel(L=L, m=16, ratio=0.1, layer=rate.layer).mean(["seed", "input", "draw"])
        best = max(range(L), key=lambda j: (float(rate[j]), float(mean[j]))) + 1
        assert f"L = {L}, m = 16: the most sensitive layer at r = 0.1 is i = {best} " in index


def test_linear_section_against_the_store(zoo_store):
    path, out, ds, _ = zoo_store
    index = (out / "index.md").read_text()
    rows = table(index, "| L | m | i | E R | RMS R")
    assert len(rows) == 5
    v = ds.output_norm
    for r in rows:
        cell = dict(L=int(r[0]), m=int(r[1]), layer=int(r[2]), ratio=0.1)
        rel = (ds.delta_norm / v).sel(cell)
        rms = float(np.sqrt((rel**2).mean()))
        lin = float(np.sqrt(((ds.linear_rms / v).sel(cell) ** 2).mean()))
        worst = float((ds.worst_realised / v).sel(cell).mean())
        bound = float((ds.bound / v).sel(cell).mean())
        for text, want in zip(r[3:], [float(rel.mean()), rms, lin, float((ds.worst_linear / v).sel(cell).mean()),
                                      worst, bound, worst / rms, bound / worst]):
            assert close(text, want), (r, text, want)
    # the plotted nonlinearity is sqrt(E R^2) / linear RMS, per layer, against r
    summary = linear.linear_summary(summaries.open_store(path))
    fig = figures.plot_nonlinearity(summary)
    ax = fig.axes[0]
    L, m = int(ax.get_title().split("L = ")[1].split(",")[0]), 16
    for line in [ln for ln in ax.get_lines() if ln.get_label().startswith("i = ")]:
        i = int(line.get_label()[4:])
        rel = (ds.delta_norm / v).sel(L=L, m=m, layer=i)
        want = np.sqrt((rel**2).mean(["seed", "input", "draw"])) / np.sqrt(
            ((ds.linear_rms / v).sel(L=L, m=m, layer=i) ** 2).mean(["seed", "input"]))
        np.testing.assert_allclose(line.get_ydata(), want.values, rtol=1e-9)
    plt.close(fig)


def _interval(ax, line):
    """(low, high) at each x of ``line`` of the shaded 95% interval that plotting.line_with_interval drew."""
    (poly,) = [c for c in ax.collections if c.get_label() == f"_ci {line.get_label()}"]
    xy = np.concatenate([p.vertices for p in poly.get_paths()])
    at = [xy[np.isclose(xy[:, 0], x, rtol=1e-12), 1] for x in line.get_xdata()]
    return (np.array([v.min() if v.size else np.nan for v in at]),  # NaN: no interval there (no spread)
            np.array([v.max() if v.size else np.nan for v in at]))


def test_given_plot_holds_the_data_with_intervals(zoo_store):
    """Every curve of given.png is a mean over units with its t-interval, checked against xarray and scipy;
    at most three panels per row."""
    path, _, ds, raw = zoo_store
    results = summaries.open_store(path)
    g = given.given_networks(results, summaries.load(results, progress=False))
    fig = given.plot_given(g)
    rows = fig.axes
    assert len(rows) == 2 * 3  # (L, m) = (2, 16), (3, 16); E R, predictions changed, accuracy
    assert all(ax.get_subplotspec().get_gridspec().ncols <= 3 for ax in rows)
    rel = ds.delta_norm / ds.output_norm
    ref = Spec.from_dict({"random_seed": 5, "network": {"init": "he", "input": raw["network"]["input"],
                                                       "input_dim": 64, "output_dim": 10},
                          "grid": {"L": [2, 3], "m": [16], "ratio": RATIOS, "seeds": 4}, "noise": {"draws": 6}})
    checked = 0
    for row, L in zip(np.reshape(rows, (2, 3)), (2, 3)):
        assert row[0].get_title().startswith(f"L = {L}, m = 16")
        b = measure_block(ref, L, 16, ref.grid.seeds)
        for i in range(1, L + 1):
            cell = dict(L=L, m=16, layer=i)
            per_net = {"given": rel.sel(cell).mean(["input", "draw"]),
                       "predictions changed": ds.pred_changed.sel(cell).mean(["input", "draw"]),
                       "accuracy": ds.accuracy.sel(cell).mean("draw")}
            per_random = {"random": (b.delta_norm[:, i - 1] / b.output_norm[None, :, :, None]).mean(axis=(2, 3)),
                          "predictions changed (random)": b.pred_changed[:, i - 1].mean(axis=(2, 3))}
            for ax in row:
                for line in ax.get_lines():
                    label = line.get_label()
                    if not label.startswith(f"i = {i} "):
                        continue
                    what = label[len(f"i = {i} "):]
                    units = (per_net[what].transpose("ratio", "seed").values if what in per_net
                             else per_random[what])  # (ratio, unit)
                    np.testing.assert_allclose(line.get_ydata(), units.mean(axis=1), rtol=1e-9)
                    lo, hi = _interval(ax, line)
                    sem = units.std(axis=1, ddof=1) / np.sqrt(units.shape[1])
                    t = stats.t.ppf(0.975, units.shape[1] - 1)
                    finite = sem > 0
                    assert np.array_equal(np.isfinite(lo), finite), (label, lo, sem)
                    np.testing.assert_allclose(lo[finite], (units.mean(axis=1) - t * sem)[finite], rtol=1e-7)
                    np.testing.assert_allclose(hi[finite], (units.mean(axis=1) + t * sem)[finite], rtol=1e-7)
                    checked += 1
    assert checked == 5 * (2 + 2 + 1)  # five layers: E R given and random, changed given and random, accuracy
    plt.close(fig)


def _theory_like(line, ratios) -> bool:
    """Whether a plotted line is R = r, R / r = 1, or an arc-cosine attenuation curve of any depth."""
    x, y = (np.asarray(v, dtype=float) for v in line.get_data())
    if x.size < 2 or y.size != x.size:
        return False
    candidates = [x, np.ones_like(x), *(theory.attenuation(x, n) for n in range(6)),
                  *(theory.attenuation(x, n) / x for n in range(6))]
    return any(np.allclose(y, c, rtol=1e-6) for c in candidates)


def test_no_theory_line_on_any_plot_of_given_networks(zoo_store):
    """The report of given networks draws no random-network theory: no line's data is R = r, R / r = 1 or
    an arc-cosine curve, no label says theory, and the theory-only plots are left out."""
    path, out, _, _ = zoo_store
    results = summaries.open_store(path)
    sample = summaries.load(results, progress=False)
    result = fit.fit(sample, n_boot=5, progress=False, with_cells=True)
    made = dict(figures.figures(sample, result, 0.1))
    assert set(made) == {"ratio.png", "depth.png", "position.png", "bound.png"}
    made["given.png"] = given.plot_given(given.given_networks(results, sample))
    for name, fig in made.items():
        for ax in fig.axes:
            for line in ax.get_lines():
                assert "theory" not in line.get_label() and "first order" not in line.get_label(), (name, line)
                if name != "given.png":  # given.png: shares against r can be flat, checked by label above
                    assert not _theory_like(line, RATIOS), (name, line.get_label())
        plt.close(fig)
    index = (out / "index.md").read_text()
    assert "theory.png" not in index and "log_variance.png" not in index and "residuals.png" not in index
    assert "random-network theory applies to random ReLU networks only" in index
    assert "He-init estimate" not in index and "; theory " not in index


def test_one_network_file_is_fitted_over_its_draws(digits_zoo, tmp_path):
    """A single network file: the fit and the report resample noise draws, never 'networks'."""
    model = str(digits_zoo["models"] / "digits_L3_m16_seed0.safetensors")
    np.save(tmp_path / "x.npy", digits_zoo["x"][:30])
    raw = {"network": {"init": model, "input": str(tmp_path / "x.npy")}, "grid": {"ratio": [0.01, 0.1, 0.5]},
           "noise": {"draws": 24}}
    path = build_store(tmp_path / "one.zarr", raw)
    res = invoke("fit", path, "--json", "--bootstrap", "50", "--no-progress")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["bootstrap_over"] == "draws" and out["draws_per_L_m"] == {"min": 24, "max": 24}
    # no random-network law for a given network: one law E R = C r^a per perturbed layer instead
    assert out["power_law"] is None and "attenuation" not in out and "log_variance" not in out
    assert out["random_network_theory"]["applies"] is False
    ds = xr.open_zarr(path, consolidated=False)
    rel = (ds.delta_norm / ds.output_norm).sel(L=3, m=16)
    assert [(r["L"], r["m"], r["layer"]) for r in out["by_layer"]] == [(3, 16, i) for i in (1, 2, 3)]
    for row in out["by_layer"]:
        y = np.log(rel.sel(layer=row["layer"]).mean(["seed", "input", "draw"]).values)
        slope, intercept = np.polyfit(np.log([0.01, 0.1, 0.5]), y, 1)
        assert row["ratio"]["value"] == pytest.approx(slope, rel=1e-9)
        assert row["C"]["value"] == pytest.approx(np.exp(intercept), rel=1e-9)
        a = row["ratio"]
        if row["layer"] < 3:  # noise in the read-out moves the output exactly linearly in r: a = 1 on every draw
            assert a["ci95"][0] < a["value"] < a["ci95"][1]  # a real interval, not a bootstrap over one network
        else:
            assert a["value"] == pytest.approx(1.0, abs=1e-12)
    text = invoke("fit", path, "--bootstrap", "20", "--no-progress").output
    assert "24 noise draws of the one network per (L, m)" in text and "resamples of the draws" in text
    assert "E R = C r^a L^b m^c" not in text and "arc-cosine" not in text and "theory 2" not in text
    assert "E R = C r^a per perturbed layer" in text and "L = 3, m = 16, i = 2: C = " in text
    assert "the random-network theory applies to random ReLU networks only" in text
    sample = summaries.load(path, progress=False)
    assert sample.units == "draws" and sample.net.sizes["seed"] == 24
    # each unit is one draw: its mean over the inputs
    ds = xr.open_zarr(path, consolidated=False)
    per_draw = (ds.delta_norm / ds.output_norm).isel(seed=0).mean("input")
    np.testing.assert_allclose(sample.net["mean"].sel(L=3, m=16).transpose("ratio", "layer", "seed").values,
                               per_draw.sel(L=3, m=16).transpose("ratio", "layer", "draw").values, rtol=1e-12)
    rep = invoke("report", path, "--out", str(tmp_path / "rep"), "--bootstrap", "20", "--no-progress")
    assert rep.exit_code == 0, rep.output
    index = (tmp_path / "rep" / "index.md").read_text()
    answer = re.search(r"- for L = 3, m = 16, r = 0\.1, .*", index)[0]
    assert "(24 draws, layers i = 1..3)" in answer and "networks" not in answer and "theory" not in answer
    assert "one network per (L, m): the statistical units are its noise draws" in index
    shutil.rmtree(tmp_path / "rep")


def test_fit_json_has_the_linear_answer_per_cell(zoo_store):
    path, _, ds, _ = zoo_store
    res = invoke("fit", path, "--json", "--bootstrap", "10", "--no-progress")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)["linear_answer"]
    assert len(rows) == len(RATIOS) * 5
    v = ds.output_norm
    for row in rows:
        cell = {k: row[k] for k in ("L", "m", "ratio")} | {"layer": row["layer"]}
        rms = float(np.sqrt(((ds.delta_norm / v).sel(cell) ** 2).mean()))
        lin = float(np.sqrt(((ds.linear_rms / v).sel(cell) ** 2).mean()))
        assert row["rms"] == pytest.approx(rms, rel=1e-9) and row["linear_rms"] == pytest.approx(lin, rel=1e-9)
        assert row["nonlinearity"] == pytest.approx(rms / lin, rel=1e-9)
    small = [r["nonlinearity"] for r in rows if r["ratio"] == 0.03]
    assert all(abs(x - 1) < 0.35 for x in small)  # small r: the linear answer holds (to MC error of 6 draws)
    text = invoke("fit", path, "--bootstrap", "10", "--no-progress").output
    assert "Each network's linear answer: sqrt(E R^2) / linear prediction from" in text


def test_one_network_looseness_is_against_the_mean_change(digits_zoo, tmp_path):
    """With draws as units, the looseness stays bound / E||v - v*|| (not a mean of bound / ||v - v*||)."""
    model = str(digits_zoo["models"] / "digits_L2_m16_seed0.safetensors")
    np.save(tmp_path / "x.npy", digits_zoo["x"][:10])
    path = build_store(tmp_path / "one.zarr", {"network": {"init": model, "input": str(tmp_path / "x.npy")},
                                               "grid": {"ratio": [0.1]}, "noise": {"draws": 12}})
    sample = summaries.load(path, progress=False)
    ds = xr.open_zarr(path, consolidated=False).isel(seed=0)
    want = (ds.bound / ds.delta_norm.mean("draw")).mean("input")
    got = sample.net["looseness"].sel(L=2, m=16, ratio=0.1)
    for i in (1, 2):
        np.testing.assert_allclose(got.sel(layer=i).values, float(want.sel(L=2, m=16, ratio=0.1, layer=i)),
                                   rtol=1e-12)


def _mlp(path, widths, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, **{f"W{j + 1}": rng.normal(size=(n_out, n_in)) / np.sqrt(n_in)
                      for j, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:]))})
    return str(path)


def test_a_tanh_network_of_uneven_widths(tmp_path):
    """A given network 8-12-6-4 with tanh: no theory anywhere, per-layer laws, m printed as the label the
    store holds, and no random reference (random networks have one hidden width), said in the report."""
    np.save(tmp_path / "x.npy", np.random.default_rng(1).normal(size=(5, 8)))
    raw = {"network": {"init": _mlp(tmp_path / "net.npz", (8, 12, 6, 4)), "input": str(tmp_path / "x.npy"),
                       "activation": "tanh"}, "grid": {"ratio": [0.01, 0.1, 0.3]}, "noise": {"draws": 8}}
    path = build_store(tmp_path / "s.zarr", raw)
    res = invoke("fit", path, "--json", "--bootstrap", "10", "--no-progress")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["power_law"] is None and [r["layer"] for r in out["by_layer"]] == [1, 2, 3]
    assert "read from files" in out["random_network_theory"]["why_not"]
    rep = invoke("report", path, "--out", str(tmp_path / "rep"), "--bootstrap", "10", "--no-progress")
    assert rep.exit_code == 0, rep.output
    index = (tmp_path / "rep" / "index.md").read_text()
    assert "No random reference: random networks of the same widths (8-12-6-4) cannot be drawn" in index
    assert "- for L = 3, m = 12, r = 0.1," in index  # m: the store's label (the widest hidden layer)
    assert "read with widths 8-12-6-4" in index and "hidden activations tanh." in index
    assert "theory.png" not in index and "; theory " not in index and "He-init estimate" not in index
    rows = table(index, "| L | m | i | E R given")
    ds = xr.open_zarr(path, consolidated=False)
    rel = ds.delta_norm / ds.output_norm
    for r in rows:
        assert r[4] == "-" and close(r[3], float(rel.sel(L=3, m=12, layer=int(r[2]), ratio=0.1).mean()))


def test_the_random_reference_has_the_given_activation(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(1).normal(size=(5, 8)))
    raw = {"network": {"init": _mlp(tmp_path / "net.npz", (8, 12, 12, 4)), "input": str(tmp_path / "x.npy"),
                       "activation": "tanh"}, "grid": {"ratio": [0.1]}, "noise": {"draws": 4}}
    ref = given.random_reference(Spec.from_dict(raw).to_dict())
    assert ref.network.init == "he" and ref.network.activation == "tanh" and ref.grid.m == (12,)
