"""tidy: `estimate --format csv` and `query --rows` parsed with pandas, checked against the JSON and the store."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from pipeline import store
from pipeline.cli import main
from pipeline.measure import measure_block
from pipeline.plan import all_blocks

ESTIMATE = ["estimate", "--L", "3", "--m", "12", "--d", "5", "--k", "4", "--seeds", "1", "--draws", "10",
            "--n-inputs", "6", "--ratio", "0.05,0.2", "--random-seed", "2"]


def cli(*args: str) -> str:
    out = CliRunner().invoke(main, list(args))
    assert out.exit_code == 0, out.output
    return out.stdout


def test_estimate_csv_cells_are_the_json_cells():
    df = pd.read_csv(io.StringIO(cli(*ESTIMATE, "--format", "csv")))
    summary = json.loads(cli(*ESTIMATE, "--json"))
    assert len(df) == 2 * 3 and list(df.columns[:6]) == ["L", "m", "ratio", "layer", "delta_norm", "rel_change"]
    for row in df.itertuples():
        cell = summary["by_ratio"][repr(row.ratio)]["by_layer"][str(row.layer)]
        assert row.delta_norm == pytest.approx(cell["mean_abs_change"], rel=1e-12)
        assert row.rel_change == pytest.approx(cell["mean_rel_change"], rel=1e-12)
        assert row.pred_changed == pytest.approx(cell["pred_change_rate"], rel=1e-12, abs=1e-15)
        assert row.bound == pytest.approx(cell["bound"], rel=1e-12)
        assert [row.rel_change_ci95_low, row.rel_change_ci95_high] == pytest.approx(cell["ci95"], rel=1e-12)
    # --format json --rows cell: the same rows as records
    records = json.loads(cli(*ESTIMATE, "--format", "json", "--rows", "cell"))
    pd.testing.assert_frame_equal(pd.DataFrame(records)[df.columns].astype(df.dtypes.to_dict()), df)


def test_estimate_rows_per_draw_average_to_the_cells():
    cells = pd.read_csv(io.StringIO(cli(*ESTIMATE, "--format", "csv")))
    draws = pd.read_csv(io.StringIO(cli(*ESTIMATE, "--format", "csv", "--rows", "draw")))
    assert len(draws) == 2 * 3 * 10 and set(draws["draw"]) == set(range(10))
    back = draws.groupby(["ratio", "layer"])[["delta_norm", "rel_change", "pred_changed"]].mean().reset_index()
    np.testing.assert_allclose(back[["delta_norm", "rel_change", "pred_changed"]],
                               cells[["delta_norm", "rel_change", "pred_changed"]], rtol=1e-12, atol=1e-15)


def test_json_and_format_json_agree_and_conflicts_are_refused():
    assert cli(*ESTIMATE, "--json") == cli(*ESTIMATE, "--format", "json")
    out = CliRunner().invoke(main, [*ESTIMATE, "--json", "--format", "csv"])
    assert out.exit_code == 2 and "--json and --format csv" in out.output and "Traceback" not in out.output


def test_query_rows_are_the_store_reduced_by_hand(tmp_path, tiny_spec):
    spec = tiny_spec(grid={"L": [2, 3], "ratio": [0.1, 0.3]}, network={"n_inputs": 2}, execution={"seeds_per_block": 2})
    path = str(tmp_path / "s.zarr")
    spec, _ = store.create_or_resume(spec, path)
    for key in all_blocks(spec):
        store.write_block(path, key, measure_block(spec, key.L, key.m, key.seeds), 0.0)
    df = pd.read_csv(io.StringIO(cli("query", path, "--rows", "cell", "--format", "csv")))
    ds = store.open_results(path)
    delta = ds["delta_norm"].values  # (L, m, ratio, layer, seed, input, draw)
    rel = delta / ds["output_norm"].values[:, :, None, None, :, :, None]
    assert len(df) == 2 * (2 + 3)  # layer 3 does not exist for L = 2: no row
    for row in df.itertuples():
        at = (list(ds.L.values).index(row.L), 0, list(ds.ratio.values).index(row.ratio), row.layer - 1)
        assert row.delta_norm == pytest.approx(delta[at].mean(), rel=1e-12)
        assert row.rel_change == pytest.approx(rel[at].mean(), rel=1e-12)
        per_seed = rel[at].mean(axis=(1, 2))  # two networks: the interval is over them
        half = 12.706204736174705 * per_seed.std(ddof=1) / np.sqrt(2)  # t(0.975, 1 df)
        assert row.rel_change_ci95_high == pytest.approx(per_seed.mean() + half, rel=1e-9)
    sel = pd.read_csv(io.StringIO(cli("query", path, "--rows", "draw", "--sel", "ratio=0.3", "--format", "csv")))
    assert set(sel["ratio"]) == {0.3} and len(sel) == (2 + 3) * 2 * 4  # cells x seeds x draws
    out = CliRunner().invoke(main, ["query", path, "--rows", "cell", "--reduce", "mean"])
    assert out.exit_code == 2 and "leave out --reduce" in out.output
