"""Fits on real zarr stores written in-process: scaling exponents, theory, missing blocks, CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner
from scipy import optimize

from pipeline import store
from pipeline.analysis import figures, fit, fittext, report, summaries, theory
from pipeline.cli import main
from pipeline.spec import Spec
from pipeline_helpers import build_store

HE = {"network": {"input_dim": 32, "output_dim": 32, "init": "he"},
      "grid": {"L": [2, 4], "m": [128, 256], "ratio": [0.003, 0.01, 0.03, 0.1], "seeds": 16},
      "noise": {"draws": 16}, "execution": {"seeds_per_block": 8}, "random_seed": 5}
SMALL = {"network": {"input_dim": 8, "output_dim": 4, "init": "he"},
         "grid": {"L": [2, 3], "m": [16, 32], "ratio": [0.01, 0.1, 0.3], "seeds": 6},
         "noise": {"draws": 4}, "execution": {"seeds_per_block": 3}, "random_seed": 1}


@pytest.fixture(scope="module")
def he_sample(tmp_path_factory):
    return summaries.load(build_store(tmp_path_factory.mktemp("he") / "he.zarr", HE), progress=False)


@pytest.fixture(scope="module")
def he_fit(he_sample):
    return fit.fit(he_sample, n_boot=300, progress=False)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("small") / "small.zarr", SMALL)


def inside(value, p) -> bool:
    lo, hi = p["ci95"]
    return lo <= value <= hi


# --- theory checks on a He-init sweep ---------------------------------------------------

def test_small_r_exponent_matches_theory(he_fit):
    # The depth-attenuation model separates the first-order exponent (theory: 1) from the
    # attenuation; a pure power law at r <= 0.1 sits slightly below 1, by as much as the
    # arc-cosine curve itself gives on the same cells (common random numbers make it precise).
    att = he_fit["attenuation"]
    assert inside(1.0, att["ratio"]), att["ratio"]
    assert inside(1.0, att["C"]), att["C"]
    small = he_fit["power_law_small_r"]
    assert inside(small["theory"]["arccos"]["ratio"], small["ratio"]), small
    assert abs(small["ratio"]["value"] - 1.0) < 0.01
    assert small["r2"] > 0.99
    assert he_fit["attenuation"]["scale_gmean"]["scale"]["ci95"][0] < 1.0 < \
        he_fit["attenuation"]["scale_gmean"]["scale"]["ci95"][1]


def test_theory_curve_inside_bands_over_networks(he_sample):
    q = figures.network_quantiles(he_sample.net)
    m = int(he_sample.net.m.max())  # wide layers, and every ratio is <= 0.1
    for L in he_sample.net.L.values:
        for i in range(1, L + 1):
            band = q.sel(L=L, m=m, layer=i)
            curve = theory.attenuation(band.ratio.values, L - i)
            assert np.all(band.sel(quantile=0.1) <= curve) and np.all(curve <= band.sel(quantile=0.9)), (L, i)


def test_log_variance_against_theory(he_fit):
    lv = he_fit["log_variance"]
    assert inside(1 / 32, lv["intercept"]), lv
    assert lv["slope"]["ci95"][0] > 0
    assert lv["theory"] == {"slope": 2.0, "intercept": 1 / 32}


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the direct var over all-NaN cells
def test_cell_stats_equal_direct_reductions(small_store):
    sample = summaries.load(small_store, progress=False)
    stats = fit.cell_stats(sample.net, sample.present[None].astype(float), sample.draws)
    ds = store.open_results(small_store)
    rel = ds.rel_change.where(ds.layer <= ds.L)
    pooled = ["seed", "input", "draw"]
    for name, direct in (("mean", rel.mean(pooled)),
                         ("rms", np.sqrt((rel**2).mean(pooled))),
                         ("gmean", np.exp(np.log(rel).mean(pooled))),
                         ("log_var", np.log(rel).var(pooled, ddof=1))):
        expected = direct.transpose(*fit.CELL).values
        np.testing.assert_allclose(stats[name][0], expected, rtol=1e-10, equal_nan=True, err_msg=name)


# --- the fitting machinery ----------------------------------------------------------------

def synthetic_sample(law=lambda r, L, m, i: 2.0 * r * L**-0.5 * m**0.25) -> summaries.Sample:
    coords = {"L": [2, 4], "m": [16, 64], "ratio": [0.01, 0.1], "layer": [1, 2, 3, 4], "seed": [0, 1, 2]}
    grids = np.meshgrid(*(np.array(v, float) for v in coords.values()), indexing="ij")
    L, m, r, i, _ = grids
    value = np.where(i <= L, law(r, L, m, i), np.nan)
    dims = tuple(coords)
    net = xr.Dataset({"mean": (dims, value), "sq": (dims, value**2), "log": (dims, np.log(value)),
                      "log2": (dims, np.log(value) ** 2)}, coords=coords)
    spec = {"network": {"output_dim": 10, "init": "he"}, "noise": {"draws": 4}, "grid": {"seeds": [0, 1, 2]}}
    cov = summaries.coverage(np.ones((2, 2, 3), bool), [2, 4], [16, 64], [0, 1, 2], 3)
    return summaries.Sample("synthetic", net, np.ones((2, 2, 3), bool), cov, spec)


def test_power_law_recovers_an_exact_law():
    res = fit.fit(synthetic_sample(), n_boot=20, progress=False)
    law = res["power_law"]
    for name, value in (("C", 2.0), ("ratio", 1.0), ("L", -0.5), ("m", 0.25)):
        assert law[name]["value"] == pytest.approx(value, abs=1e-9)
        assert law[name]["ci95"] == pytest.approx([value, value], abs=1e-9)
    assert law["r2"] == pytest.approx(1.0)
    assert law["n_cells"] == 2 * 2 * (2 + 4)


def test_attenuation_model_recovers_its_parameters():
    res = fit.fit(synthetic_sample(lambda r, L, m, i: 1.5 * r**0.9 / (1 + 0.3 * (L - i) * r)),
                  n_boot=5, progress=False)
    att = res["attenuation"]
    assert [att[p]["value"] for p in ("C", "ratio", "beta")] == pytest.approx([1.5, 0.9, 0.3], rel=1e-6)


def test_attenuation_jacobian_matches_finite_differences():
    sample = synthetic_sample()
    stats = fit.cell_stats(sample.net, sample.present[None].astype(float), 4)
    cells = fit.Cells.from_grid(sample.net, np.isfinite(stats["mean"][0]) & (stats["mean"][0] > 0))
    mdl = fit.Attenuation(cells, np.ones(cells.L.size, bool))
    y = mdl.response(stats)[:, 0]
    p = np.array([0.1, 0.95, 0.2])
    numeric = optimize.approx_fprime(p, lambda q: y - mdl._curve(q), 1e-7)
    np.testing.assert_allclose(mdl._jac(p), numeric, atol=1e-5)


def test_bootstrap_resamples_only_present_seeds():
    present = np.array([[[True, True, False, True], [False, False, False, False]]])
    w = fit.bootstrap_weights(present, 50, np.random.default_rng(0))
    assert w.shape == (50, 1, 2, 4)
    assert np.all(w[:, 0, 0].sum(axis=-1) == 3) and np.all(w[:, 0, 0, 2] == 0)
    assert np.all(w[:, 0, 1] == 0)


# --- interrupted and invalid stores, and the command --------------------------------------

def test_missing_blocks_are_fitted_around_and_reported(tmp_path):
    path = build_store(tmp_path / "part.zarr", SMALL,
                       skip=lambda k: (k.L, k.m, k.seed_start) == (3, 32, 3) or (k.L, k.m) == (2, 16))
    result = fit.fit(summaries.load(path, progress=False), n_boot=20, progress=False)
    assert (result["blocks_done"], result["blocks_total"]) == (5, 8)
    assert result["missing"] == {"blocks": 3, "networks": 9, "by_L_m": [
        {"L": 2, "m": 16, "seeds": [0, 1, 2, 3, 4, 5]}, {"L": 3, "m": 32, "seeds": [3, 4, 5]}]}
    assert result["networks_per_L_m"] == {"min": 0, "max": 6}
    assert result["power_law"]["n_cells"] == 3 * (2 + 3 + 3)  # (L, m) = (2, 16) has no cell
    assert np.isfinite(result["power_law"]["ratio"]["value"])
    text = fittext.to_text(result)
    assert "5 of 8 blocks done" in text and "L=2 m=16 seeds 0..5" in text and "L=3 m=32 seeds 3..5" in text


def test_fit_command_json_and_out_file(small_store, tmp_path):
    out = tmp_path / "fit.json"
    res = CliRunner().invoke(main, ["fit", small_store, "--json", "--bootstrap", "50", "--out", str(out),
                                     "--no-progress"])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)
    for name in ("C", "ratio", "L", "m"):
        p = printed["power_law"][name]
        assert set(p) == {"value", "ci95"} and p["ci95"][0] <= p["value"] <= p["ci95"][1]
    assert {"r2", "n_cells"} <= set(printed["power_law"])
    assert {"power_law_small_r", "by_position", "attenuation", "log_variance"} <= set(printed)
    assert set(printed["by_position"]) == {"first", "middle", "last"}
    assert (printed["blocks_done"], printed["blocks_total"], printed["missing"]["blocks"]) == (8, 8, 0)
    written = json.loads(out.read_text())
    assert written["power_law"] == printed["power_law"] and len(written["cells"]) == 3 * 2 * (2 + 3)
    text = CliRunner().invoke(main, ["fit", small_store, "--bootstrap", "20"])
    assert text.exit_code == 0 and "E R = C r^a L^b m^c" in text.stdout


@pytest.mark.parametrize("command", ["fit", "report"])
def test_empty_store_and_non_store_exit_2(tmp_path, command):
    empty = tmp_path / "empty.zarr"
    store.create_or_resume(Spec.from_dict(SMALL), str(empty))
    not_store = tmp_path / "plain"
    not_store.mkdir()
    (not_store / "file.txt").write_text("hello")
    cases = [(empty, "no finished block"), (not_store, "not a zarr store"), (tmp_path / "nope", "does not exist")]
    for path, message in cases:
        extra = ["--out", str(tmp_path / "rep")] if command == "report" else []
        res = CliRunner().invoke(main, [command, str(path), *extra])
        assert res.exit_code == 2, (path, res.output)
        assert message in res.output and "Traceback" not in res.output


def test_out_file_in_missing_directory_exits_2(small_store, tmp_path):
    res = CliRunner().invoke(main, ["fit", small_store, "--bootstrap", "0", "--out", str(tmp_path / "no" / "f.json")])
    assert res.exit_code == 2 and "cannot write" in res.output and "Traceback" not in res.output


def test_no_bootstrap_gives_null_intervals(small_store):
    result = fit.fit(summaries.load(small_store, progress=False), n_boot=0, progress=False)
    assert result["power_law"]["ratio"]["ci95"] == [None, None]
    json.dumps(result, allow_nan=False)



def test_axes_with_one_value_are_left_out(tmp_path):
    raw = {"network": {"input_dim": 8, "output_dim": 4}, "grid": {"L": [3], "m": [16], "ratio": [0.3], "seeds": 4},
           "noise": {"draws": 2}, "execution": {"seeds_per_block": 2}}
    result = fit.fit(summaries.load(build_store(tmp_path / "one.zarr", raw), progress=False), n_boot=20, progress=False)
    json.dumps(result, allow_nan=False)
    assert result["power_law_small_r"] is None  # no ratio <= 0.1
    assert all(result["power_law"][p]["value"] is None for p in ("ratio", "L", "m"))
    assert result["power_law"]["C"]["value"] > 0
    assert result["attenuation"]["ratio"] == {"value": None, "ci95": [None, None]}  # one ratio: a not identified
    assert "E R = C r^a L^b m^c" in fittext.to_text(result)


# --- one checked read path: a damaged block is named by fit, fit --json and report ----------------

DAMAGE_COMMANDS = [("fit", "--bootstrap", "5", "--no-progress"),
                   ("fit", "--json", "--bootstrap", "5", "--no-progress"),
                   ("report", "--bootstrap", "5", "--no-progress", "--out", "REPORT")]


def _damaged_copy(small_store, tmp_path, var: str, how: str):
    """A copy of the small store with one done block's chunk of ``var`` deleted or corrupted; the block."""
    import shutil

    from pipeline import plan
    from pipeline_helpers import chunk_path

    path = tmp_path / "damaged.zarr"
    shutil.copytree(small_store, path)
    spec = Spec.from_dict(SMALL)
    key = sorted(plan.all_blocks(spec), key=lambda k: (k.L_index, k.m_index, k.seed_start))[3]
    target = chunk_path(path, var, key, spec)
    if how == "missing":
        target.unlink()
    else:
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x10
        target.write_bytes(bytes(data))
    return path, key


@pytest.mark.parametrize("command", DAMAGE_COMMANDS, ids=["fit", "fit-json", "report"])
@pytest.mark.parametrize("var, how, problem", [
    ("worst_linear", "missing", "worst_linear chunk is missing"),
    ("worst_realised", "missing", "worst_realised chunk is missing"),
    ("output_norm", "missing", "output_norm chunk is missing"),
    ("linear_rms", "corrupt", "linear_rms fails its crc32c checksum"),
])
def test_a_damaged_block_is_named_not_averaged(small_store, tmp_path, command, var, how, problem):
    """The linear answer (fit's linear_answer, the report's table) reads worst_linear and the rest through
    verify's check: exit 2 naming the block, as `nnsweep query` and `nnsweep verify` do, not a mean of
    what is left."""
    path, key = _damaged_copy(small_store, tmp_path, var, how)
    args = [str(a) if a != "REPORT" else str(tmp_path / "report") for a in command]
    res = CliRunner().invoke(main, [args[0], str(path), *args[1:]])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert "is damaged" in line and f"{key} ({problem})" in line and "nnsweep verify" in line, line
    assert not (tmp_path / "report" / "index.md").exists()


def test_linear_summary_equals_direct_reductions_of_the_done_blocks(tmp_path):
    """The linear table of random networks (every column) against xarray on the done blocks only."""
    from pipeline.analysis import linear

    path = build_store(tmp_path / "part.zarr", SMALL, skip=lambda k: (k.L, k.m, k.seed_start) == (3, 32, 3))
    summary = linear.linear_summary(summaries.open_store(path))
    ds = xr.open_zarr(path, consolidated=False).load()
    ds = ds.where(ds.done.astype(bool))
    v = ds.output_norm
    rel = ds.delta_norm / v
    over = ["seed", "input", "draw"]
    want = {"mean": rel.mean(over), "rms": np.sqrt((rel**2).mean(over)),
            "linear_rms": np.sqrt(((ds.linear_rms / v) ** 2).mean(["seed", "input"])),
            "worst_linear": (ds.worst_linear / v).mean(["seed", "input"]),
            "worst_realised": (ds.worst_realised / v).mean(["seed", "input"]),
            "bound": (ds.bound / v).mean(["seed", "input"])}
    rows = linear.linear_table(summary, 0.1)
    assert len(rows) == 2 * (2 + 3)
    for row in rows:
        cell = dict(L=row["L"], m=row["m"], layer=row["layer"], ratio=0.1)
        for name, da in want.items():
            assert row[name] == pytest.approx(float(da.sel(cell)), rel=1e-12), (row, name)
        assert row["nonlinearity"] == pytest.approx(float(want["rms"].sel(cell) / want["linear_rms"].sel(cell)),
                                                    rel=1e-12)
        assert row["worst_over_rms"] == pytest.approx(row["worst_realised"] / row["rms"], rel=1e-12)
        assert row["bound_over_worst"] == pytest.approx(row["bound"] / row["worst_realised"], rel=1e-12)
