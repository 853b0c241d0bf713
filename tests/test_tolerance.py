"""tolerance: the largest tolerated ratio on the shipped digits example, checked by direct estimates."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import pipeline
from pipeline.cli import main


def cli(*args: str) -> dict:
    out = CliRunner().invoke(main, ["estimate", *args, "--json"])
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def digits(digits_zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("tol")
    np.save(root / "x.npy", digits_zoo["x"])
    np.save(root / "y.npy", digits_zoo["y"])
    net = str(digits_zoo["models"] / "digits_L3_m16_seed0.safetensors")
    return ["--init", net, "--input", str(root / "x.npy"), "--labels", str(root / "y.npy")]


def drop_interval(estimate: dict) -> tuple[float, float, float]:
    """The accuracy drop (clean minus perturbed) and its 95% interval, from `estimate --json`."""
    lo, hi = estimate["accuracy_ci95"]
    clean = estimate["clean_accuracy"]
    return clean - estimate["accuracy"], clean - hi, clean - lo


def test_accuracy_drop_answer_checked_by_direct_estimates(digits):
    found = cli(*digits, "--layer", "2", "--draws", "32", "--find-ratio", "accuracy-drop=0.01")
    r, (low, high) = found["ratio"], found["ratio_interval"]
    assert found["tolerance"] == 0.01 and low is not None and high is not None and low <= r < high
    # the search's own level at r is what `nnsweep estimate` gives at r (same seed, same draws)
    level = next(v for v in found["levels"] if v["ratio"] == r)
    same = cli(*digits, "--layer", "2", "--ratio", repr(r), "--draws", str(level["draws"]))
    assert same["clean_accuracy"] - same["accuracy"] == pytest.approx(level["value"], abs=1e-12)
    assert level["value"] <= 0.01
    # other noise (another seed, many draws): at r the drop is the tolerance up to the stated precision (the
    # search's half-width) and this estimate's own MC error; within it at the interval's low end, beyond it at
    # the high end
    drops = {x: drop_interval(cli(*digits, "--layer", "2", "--ratio", repr(x), "--draws", "400",
                                  "--random-seed", "11")) for x in (low, r, high)}
    assert abs(drops[r][0] - 0.01) <= found["half_width"] + (drops[r][2] - drops[r][1]) / 2
    assert drops[low][1] <= 0.01 < drops[high][2] and drops[low][0] < drops[r][0] < drops[high][0]


def test_pred_change_answer_in_python(digits_zoo, tmp_path):
    net = str(digits_zoo["models"] / "digits_L3_m16_seed0.safetensors")
    found = pipeline.find_ratio(net, digits_zoo["x"], layer=3, criterion="pred-change", draws=32, cache_dir=tmp_path)
    r = found["ratio"]
    assert found["clean_accuracy"] is None and found["ratio_interval"][0] <= r < found["ratio_interval"][1]
    level = next(v for v in found["levels"] if v["ratio"] == r)
    ds = pipeline.sensitivity(net, digits_zoo["x"], ratio=r, layer=3, draws=level["draws"], cache_dir=tmp_path)
    rate = float(ds["pred_changed"].mean())
    assert rate == pytest.approx(level["value"], abs=1e-12) and rate <= 0.05
    # just beyond the bracket the rate is beyond the tolerance
    lo, hi = found["bracket"]
    beyond = pipeline.sensitivity(net, digits_zoo["x"], ratio=hi, layer=3, draws=level["draws"], cache_dir=tmp_path)
    assert float(beyond["pred_changed"].mean()) > 0.05 and hi / lo <= 1.02


@pytest.mark.parametrize("args, words", [
    (["--find-ratio", "accuracy-drop"], "give --layer I"),
    (["--find-ratio", "accuracy-drop", "--layer", "1", "--ratio", "0.1"], "and no --ratio"),
    (["--find-ratio", "flatness=0.1", "--layer", "1"], "'flatness=0.1' is not allowed"),
    (["--find-ratio", "accuracy-drop=2", "--layer", "1"], "an amount between 0 and 1"),
    (["--find-ratio", "pred-change", "--layer", "1", "--format", "csv"], "leave out --rows and --format csv"),
])
def test_bad_find_ratio_exits_2(digits, args, words):
    out = CliRunner().invoke(main, ["estimate", *digits, *args])
    assert out.exit_code == 2 and words in out.output and "Traceback" not in out.output


def test_accuracy_drop_without_labels_exits_2(digits):
    out = CliRunner().invoke(main, ["estimate", *digits[:4], "--layer", "1", "--find-ratio", "accuracy-drop"])
    assert out.exit_code == 2 and "needs labels" in out.output
