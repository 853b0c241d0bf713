"""The cost model of full and cheap draws against the benchmarks' own count of the same work."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from pipeline import drawcost
from pipeline.network import layer_shapes

from test_benchmarks import BENCHMARKS


@pytest.mark.parametrize("L, m, d, k, n", [(3, 128, 64, 10, 360), (2, 16, 64, 10, 1), (4, 32, 8, 3, 20)])
def test_full_draws_count_what_bench_inputs_counts(monkeypatch, L, m, d, k, n):
    """Without the first-order change, a full draw of every layer is the limit's work of
    benchmarks/bench_inputs.py estimate_work (flops and normals), draw for draw."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("bench_inputs")
    shapes = layer_shapes(L, m, d, k)
    works = [drawcost.full_draw_work(shapes, i, n, 3, linear=False) for i in range(1, L + 1)]
    want = bench.estimate_work(L, m, d, k, n, 7, 3)
    assert 7 * sum(w.flops for w in works) == want["flops"] and 7 * sum(w.normals for w in works) == want["normals"]
    # the first-order change adds one k x n_i product per input; every column's values at and after layer i
    with_linear = drawcost.full_draw_work(shapes, 2, n, 3)
    assert with_linear.flops - works[1].flops == 2 * k * shapes[1][0] * n
    assert works[1].elements == 3 * n * sum(a for a, _ in shapes[1:])


def test_cheap_draws_cost_in_proportion_to_inputs_rank_and_classes():
    """A cheap draw's modelled seconds: n inputs times (r normals' worth + a constant) for the change, and
    k r products plus k classes' passes for the prediction change, r = min(k, n_i)."""
    shapes = layer_shapes(3, 6, 5, 10)  # the hidden layers are narrower than k: r = 6 there, 10 at the read-out
    for layer, r in ((1, 6), (3, 10)):
        change, crossing = drawcost.cheap_draw_seconds(shapes, layer, 7)
        assert change == pytest.approx(7 * (r * drawcost.CHEAP_RANK_SECONDS + drawcost.CHEAP_INPUT_SECONDS))
        assert crossing == pytest.approx(7 * (10 * r * drawcost.CROSSING_PRODUCT_SECONDS
                                              + 10 * drawcost.CROSSING_CLASS_SECONDS))
    work = drawcost.full_draw_work(shapes, 1, 7, 2)
    assert work.seconds == pytest.approx(work.flops * drawcost.GEMM_FLOP_SECONDS + work.normals
                                         * drawcost.NORMAL_SECONDS + work.elements * drawcost.ELEMENT_SECONDS)
    assert np.all([v > 0 for v in (change, crossing, work.seconds)])


def test_calibration_script_fits_its_own_measurements():
    """benchmarks/bench_cheap_cost.py --tiny: the fitted constants follow from the timings it prints (the
    inverse rates, the least-squares seconds per element, the slope in r), and it reports drawcost's own."""
    import json
    import subprocess
    import sys

    out = json.loads(subprocess.run([sys.executable, str(BENCHMARKS / "bench_cheap_cost.py"), "--tiny", "--json"],
                                    capture_output=True, text=True, check=True).stdout)
    fitted, full, cheap = out["fitted"], out["full"], out["cheap"]
    assert fitted["GEMM_FLOP_SECONDS"] == pytest.approx(1 / out["gemm_rate"]["best"])
    rest = np.array([r["seconds"] - r["flops"] / out["gemm_rate"]["best"] - r["normals"] / out["normal_rate"]["best"]
                     for r in full])
    elements = np.array([[r["elements"]] for r in full])
    assert fitted["ELEMENT_SECONDS"] == pytest.approx(np.linalg.lstsq(elements, rest, rcond=None)[0][0])
    (a, b) = cheap
    assert (a["k"], b["k"]) == (10, 5) and a["r"] == 10
    slope = (a["change_seconds"] - b["change_seconds"]) / (a["r"] - b["r"])
    assert fitted["CHEAP_RANK_SECONDS"] == pytest.approx(slope)
    assert fitted["CHEAP_INPUT_SECONDS"] == pytest.approx(b["change_seconds"] - slope * b["r"])
    assert out["in_drawcost"]["ELEMENT_SECONDS"] == drawcost.ELEMENT_SECONDS
    assert len(full) == 3 and all(r["seconds"] > 0 for r in full)


def test_cap_benchmark_figures_follow_from_its_runs():
    """benchmarks/bench_cheap_cap.py --tiny: a lower cap takes no more cheap draws in any layer, and the
    speed-up at equal width is the width ratio squared times the plain seconds over the run's."""
    import json
    import subprocess
    import sys

    out = json.loads(subprocess.run([sys.executable, str(BENCHMARKS / "bench_cheap_cap.py"), "--tiny", "--json"],
                                    capture_output=True, text=True, check=True).stdout)
    low, high = out["rows"]
    assert (low["cap"], high["cap"]) == (0.5, 1.0)
    assert all(low["cheap_draws"][i] <= high["cheap_draws"][i] for i in high["cheap_draws"])
    assert any(low["cheap_draws"][i] < high["cheap_draws"][i] for i in high["cheap_draws"])
    for row in (low, high):
        assert row["cheap_seconds"] < row["seconds"]
        for group, width in row["narrower"].items():
            assert row["speedup_at_equal_width"][group] == pytest.approx(width**2 * out["plain_seconds"]
                                                                         / row["seconds"])
