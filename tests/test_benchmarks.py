"""The benchmarks' own arithmetic, and bench_sweep.py end to end on a tiny shape (no wall-clock thresholds)."""

from __future__ import annotations

import doctest
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def machine(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("machine")


@pytest.fixture
def bench_sweep(machine, monkeypatch):
    for var in machine.THREAD_VARS:  # importing it pins the threads; restore them afterwards
        monkeypatch.setenv(var, "1")
    return importlib.import_module("bench_sweep")


def test_machine_doctests(machine):
    assert doctest.testmod(machine).failed == 0


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_rates_and_bracket(machine, dtype):
    calls = []

    def rate():
        calls.append(machine.gemm_rate(32, 16, dtype, repeats=1, min_time=0.001))
        return calls[-1]

    with machine.bracket(rate) as b:
        assert len(calls) == 1 and b.after is None  # measured before the work, not yet after
    assert (b.before, b.after) == tuple(calls) and b.best == max(calls) > 0
    assert 0 <= b.spread < 1
    assert machine.normal_rate(dtype, size=1024, repeats=1, min_time=0.001) > 0
    info = machine.describe()
    assert info["cores"] >= 1 and info["numpy"] and len(info["load_average"]) == 3


def test_launcher_measures_a_commands_own_peak_memory(machine):
    import resource

    import numpy as np

    with machine.Launcher() as launcher:
        held = np.ones(2**24)  # 128 MB in this process, after the helper started
        bare = launcher.run([sys.executable, "-c", "pass"])
        grown = launcher.run([sys.executable, "-c", "import sys; b = b'x' * 2**27; print(len(b))"])
        with pytest.raises(RuntimeError, match="exited with 3"):
            launcher.run([sys.executable, "-c", "import sys; sys.exit(3)"])
    own = machine.rss_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    assert held.sum() == 2**24 and own > 128
    # a child forked from this process would start at `own`; the bare interpreter is far below it
    assert 0 < bare["peak_rss_mb"] < 64 < own
    assert grown["stdout"] == f"{2**27}\n" and grown["peak_rss_mb"] > 128 > bare["peak_rss_mb"]
    assert grown["seconds"] > 0 and bare["seconds"] > 0


def test_work_counts(bench_sweep):
    # W_1 (4 x 5), W_2 (4 x 4), W_3 (2 x 4); 2 ratios x (3 draws + the worst direction) = 8 columns per origin
    w = bench_sweep.work(L=3, m=4, d=5, k=2, ratios=2, draws=3)
    parts = w["gemm_flops_parts"]
    assert parts["perturbed"] == 2 * 4 * 4 * 8 + 2 * 2 * 4 * 16  # origin 1 through W_2; origins 1-2 through W_3
    assert parts["clean"] == 2 * (20 + 16 + 8)
    assert parts["backward"] == 2 * 2 * (16 + 8)  # k columns through W_2, W_3
    assert parts["lanczos"] == 20 * 2 * 2 * (20 + 16 + 8)
    assert w["gemm_flops"] == sum(parts.values())
    assert w["normal_numbers_parts"] == {"weights": 20 + 16 + 8, "noise": 3 * (5 + 5 + 3)}
    assert w["widest_batch"] == 16
    assert w["normal_numbers"] == sum(w["normal_numbers_parts"].values())
    lim = bench_sweep.limit(w, gemm_rate=1e3, normal_rates={"weights": 10.0, "noise": 2.0})
    assert lim["seconds"] == pytest.approx(w["gemm_flops"] / 1e3 + 44 / 10.0 + 39 / 2.0)


def test_bench_sweep_script(bench_sweep):
    out = subprocess.run([sys.executable, str(BENCHMARKS / "bench_sweep.py"), "--shapes", "3x64", "--repeat", "1",
                          "--rate-repeats", "1", "--estimate", "2x16", "--json"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    r = json.loads(out)
    assert [(c["L"], c["m"], c["precision"]) for c in r["cases"]] == [(3, 64, "float64"), (3, 64, "float32")]
    w = r["work"]
    expected = bench_sweep.work(3, 64, w["input_dim"], w["output_dim"], len(w["ratios"]), w["draws"])
    for c in r["cases"]:
        s = c["seconds"]
        assert set(s) == {"weights", "clean", "noise", "kernel", "bound", "linear", "other"}
        # every part the kernel reports did some work, and the split accounts for the total
        assert all(s[k] > 0 for k in bench_sweep.SPLIT)
        assert sum(s.values()) == pytest.approx(c["total"], rel=1e-9)
        lim = c["limit"]
        assert lim["work"] == expected
        dtypes = lim["sampling_dtypes"]
        assert dtypes == bench_sweep.sampling_dtypes(c["precision"]) and set(lim["normal_rates"]) == set(dtypes.values())
        for rate in (lim["gemm_rate"], *lim["normal_rates"].values()):
            assert rate["best"] == max(rate["before"], rate["after"]) > 0
        normal = {kind: lim["normal_rates"][dt]["best"] for kind, dt in dtypes.items()}
        assert lim["seconds"] == pytest.approx(expected["gemm_flops"] / lim["gemm_rate"]["best"] + sum(
            expected["normal_numbers_parts"][kind] / normal[kind] for kind in ("weights", "noise")))
        assert c["total_over_limit"] == pytest.approx(c["total"] / lim["seconds"])
        # wait4's peak of the child covers what the child saw of itself before the timed networks
        assert c["peak_rss_mb"] >= c["peak_rss_before_networks_mb"] > 0
    f64, f32 = (c["total"] for c in r["cases"])
    assert r["speed_ratios"] == [{"L": 3, "m": 64, "float64_over_float32": pytest.approx(f64 / f32)}]
    e = r["estimate"]
    assert e["command"] == "nnsweep estimate --L 2 --m 16 --seeds 1 --draws 4 --ratio 0.1 --layer all"
    # the whole nnsweep process holds numpy and the pipeline; a bare interpreter does not
    assert e["peak_rss_mb"] > e["python_pass"]["peak_rss_mb"] > 0
    assert e["seconds"] > e["python_pass"]["seconds"] > 0


def test_bench_scale_end_to_end():
    """bench_scale on the smallest grid: every figure is there, and the counts are the store's own."""
    r = subprocess.run([sys.executable, str(BENCHMARKS / "bench_scale.py"), "--full", "100", "--plan", "100",
                        "--workers", "1", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    plan_row, full_row = json.loads(r.stdout)["rows"]
    assert plan_row["blocks"] == full_row["blocks"] == 100
    # the root, 22 arrays' zarr.json and 6 coordinate chunks (input = [0] is all fill value: no chunk)
    assert plan_row["objects_after_creation"] == full_row["objects_after_creation"] == 29
    assert full_row["objects_per_block"] == 15  # one chunk of each of the 15 variables
    assert full_row["per_block_ms"] > 0 and full_row["client_cpu_per_block_ms"] > 0
    assert full_row["peak_rss_mb"] >= full_row["plan_peak_rss_mb"] > 0


def test_bench_control_tiny():
    """bench_control on a tiny trained network: three ratios, the machine, and figures that follow from
    the widths and seconds it reports (and the intervals it prints)."""
    r = subprocess.run([sys.executable, str(BENCHMARKS / "bench_control.py"), "--tiny", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["machine"]["cores"] > 0 and out["network"]["test_accuracy"] > 0.5
    assert [row["ratio"] for row in out["rows"]] == [1e-3, 1e-2, 0.1]
    for row in out["rows"]:
        p, c = row["plain"], row["control_variate"]
        for est in (p, c):
            assert est["width"] == pytest.approx(est["ci95"][1] - est["ci95"][0])
            assert est["ci95"][0] < est["mean"] < est["ci95"][1] and est["seconds"] > 0
            assert est["width2_seconds"] == pytest.approx(est["width"] ** 2 * est["seconds"])
        assert row["width_ratio"] == pytest.approx(p["width"] / c["width"])
        assert row["speedup_at_equal_width"] == pytest.approx(p["width2_seconds"] / c["width2_seconds"])
        assert c["seconds"] > c["cheap_seconds"] > 0 and min(c["cheap_draws"].values()) >= 2


def test_bench_inputs_script(machine):
    """bench_inputs.py on tiny shapes: both parts' arithmetic against an independent count of the work."""
    assert doctest.testmod(importlib.import_module("bench_inputs")).failed == 0
    out = subprocess.run([sys.executable, str(BENCHMARKS / "bench_inputs.py"), "--L", "3", "--m", "16", "--d", "8",
                          "--k", "4", "--n", "1", "4", "--columns", "16", "--repeat", "1", "--estimate",
                          "--estimate-network", "2,16,8,4,6", "--estimate-draws", "5", "--rate-repeats", "1",
                          "--json"], capture_output=True, text=True, timeout=300, check=True).stdout
    r = json.loads(out)
    assert [(row["n_inputs"], row["draws"]) for row in r["rows"]] == [(1, 16), (4, 4)]
    for row in r["rows"]:
        assert row["us_per_input_draw"] == pytest.approx(row["seconds"] / 16 * 1e6)
        assert row["relative_to_first"] == pytest.approx(row["us_per_input_draw"] / r["rows"][0]["us_per_input_draw"])
    e = r["estimate"]
    assert e["command"] == ("nnsweep estimate --L 2 --m 16 --d 8 --k 4 --n-inputs 6 --seeds 1 --draws 5 "
                            "--ratio 0.01,0.1,0.3 --layer all")
    # layer 1 (16 x 8; 6 < 8 inputs: Z R with q = 6), then W_2 for 3 ratios x 6 inputs; layer 2 (4 x 16, q = 6)
    assert e["flops"] == 5 * (2 * 16 * 6 * 6 + 2 * 4 * 16 * 3 * 6 + 2 * 4 * 6 * 6)
    assert e["normals"] == 5 * (16 * 6 + 4 * 6)
    assert e["limit_seconds"] == pytest.approx(e["flops"] / e["gemm_rate"]["best"]
                                               + e["normals"] / e["normal_rate"]["best"])
    assert e["times_limit"] == pytest.approx(e["seconds"] / e["limit_seconds"])
    assert e["peak_rss_mb"] > 0 and e["seconds"] > 0
    assert e["with_control_variate"]["seconds"] > 0 and e["with_control_variate"]["peak_rss_mb"] > 0


def test_bench_estimate_overhead_tiny(tmp_path):
    """bench_estimate_overhead on a tiny estimate, two trees (this one, and a copy of it): each figure is the
    best of its rounds, the rest is each process's own difference, and the same code prints the same numbers."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(Path(__file__).resolve().parent.parent / "pipeline", copy / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    tree = str(Path(__file__).resolve().parent.parent)
    r = subprocess.run([sys.executable, str(BENCHMARKS / "bench_estimate_overhead.py"), "--tree", str(copy),
                        "--tree", tree, "--repeat", "2", "--json", "--", "--L", "2", "--m", "16", "--d", "8", "--k",
                        "4", "--n-inputs", "6", "--seeds", "1", "--draws", "30", "--ratio", "0.1", "--json"],
                       capture_output=True, text=True, timeout=300, cwd=tree)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["command"].startswith("nnsweep estimate --L 2 --m 16") and out["machine"]["cores"] > 0
    assert [row["tree"] for row in out["rows"]] == [str(copy), tree] and out["same_output"]
    # each tree's own package ran, not the one in the working directory
    assert [row["package"] for row in out["rows"]] == [[str(copy / "pipeline")], [str(Path(tree) / "pipeline")]]
    for row in out["rows"]:
        rounds = row["rounds"]
        assert len(rounds) == 2 and all(0 < x["kernel_cpu_s"] < x["total_cpu_s"] for x in rounds)
        assert row["total_cpu_s"] == min(x["total_cpu_s"] for x in rounds)
        assert row["kernel_cpu_s"] == min(x["kernel_cpu_s"] for x in rounds)
        assert row["rest_cpu_s"] == min(x["total_cpu_s"] - x["kernel_cpu_s"] for x in rounds)
        assert row["page_faults"] == min(x["page_faults"] for x in rounds) > 0 and row["peak_rss_mb"] > 0
