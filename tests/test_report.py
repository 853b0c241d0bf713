"""The report renders from real stores: every plot exists and index.md embeds it and answers the question."""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.analysis import report
from pipeline.cli import main
from pipeline_helpers import build_store

SPEC = {"network": {"input_dim": 8, "output_dim": 4, "init": "he"},
        "grid": {"L": [2, 4], "m": [16, 32], "ratio": [0.03, 0.12, 0.3], "seeds": 6},
        "noise": {"draws": 4}, "execution": {"seeds_per_block": 3}, "random_seed": 3}


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    path = build_store(base / "full.zarr", SPEC)
    res = CliRunner().invoke(main, ["report", path, "--out", str(base / "out"), "--bootstrap", "50"])
    assert res.exit_code == 0, res.output
    return base / "out"


def test_every_plot_exists_and_is_embedded(full_report):
    index = (full_report / "index.md").read_text()
    embedded = re.findall(r"!\[[^\]]+\]\(([^)]+\.png)\)", index)
    assert sorted(embedded) == sorted(name for name, _, _ in report.PLOTS)
    for name in embedded:
        png = (full_report / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, name
    assert (full_report / "fit.json").exists()


def test_index_answers_the_question(full_report):
    index = (full_report / "index.md").read_text()
    # ratio closest to 0.1 on a log scale is 0.12; one sentence per (L, m)
    sentences = re.findall(r"for L = (\d+), m = (\d+), r = 0\.12, E\|\|v - v\*\|\| / \|\|v\|\| = "
                           r"\*\*([0-9.e-]+)\*\* \[([0-9.e-]+), ([0-9.e-]+)\]", index)
    assert {(int(L), int(m)) for L, m, *_ in sentences} == {(L, m) for L in (2, 4) for m in (16, 32)}
    for *_, value, lo, hi in sentences:
        assert float(lo) <= float(value) <= float(hi) and 0.05 < float(value) < 0.25
    assert "all 8 blocks done" in index
    assert "E R = C r^a L^b m^c" in index or "| all cells |" in index


def test_interrupted_store_report_says_what_is_missing(tmp_path):
    path = build_store(tmp_path / "part.zarr", SPEC, skip=lambda k: (k.L, k.m) == (4, 32) or k.seed_start == 3)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["report", path, "--out", str(out), "--bootstrap", "20", "--no-progress"])
    assert res.exit_code == 0, res.output
    index = (out / "index.md").read_text()
    assert "3 of 8 blocks done" in index and "L=4 m=32 seeds 0..5" in index and "L=2 m=16 seeds 3..5" in index
    assert "for L = 4, m = 32," not in index and "for L = 4, m = 16," in index
    for name, _, _ in report.PLOTS:
        assert (out / name).exists()


def test_out_is_a_file_exits_2(tmp_path, full_report):
    target = tmp_path / "file"
    target.write_text("x")
    res = CliRunner().invoke(main, ["report", str(full_report.parent / "full.zarr"), "--out", str(target),
                                     "--bootstrap", "0"])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_closest_ratio_and_t_interval():
    assert report.closest_ratio([0.01, 0.03, 0.3]) == 0.3
    assert report.closest_ratio([0.2, 0.05]) == 0.05  # a tie on a log scale: the smaller
    assert report.closest_ratio([0.003, 0.12, 1.0]) == 0.12
    lo, hi = report.t_interval(np.array([1.0, 2.0, 3.0, np.nan]))
    assert lo < 2.0 < hi
    assert np.isnan(report.t_interval(np.array([1.0]))[0])
