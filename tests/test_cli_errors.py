"""One line, never a traceback: the CLI's answers to absurd sizes, overflow, strict JSON and exposure."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.clusterconfig import ClusterConfig, exposure

from pipeline_helpers import SMALL, raw_spec, snapshot, write_spec


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "dashboard:" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], result.output


def _strict(text: str):
    def refuse(name):
        raise AssertionError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("changes, needle", [
    ({"grid": {"L": [2], "m": [8], "ratio": [0.1], "seeds": 10**9}}, "the number of blocks"),
    ({"noise": {"draws": 10**9}}, "this sweep is too large"),
    ({"name": "a\tb"}, "name:"),
    ({"name": "n" * 300}, "name:"),
])
def test_run_refuses_before_anything_is_written_or_started(tmp_path, changes, needle):
    spec = write_spec(tmp_path, raw_spec(**changes))
    result = invoke("run", spec, "--store", tmp_path / "s.zarr", "--no-progress")
    assert_one_line_error(result, needle)
    assert len(result.output) < 1000
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "s.zarr.lock").exists()


def test_run_refuses_an_existing_store_left_byte_identical(tmp_path):
    from pipeline_helpers import build_store

    path = build_store(tmp_path / "s.zarr", SMALL, skip=lambda key: key.seed_start >= 4)
    before = snapshot(path)
    spec = write_spec(tmp_path, raw_spec(noise={"draws": 10**9}))
    assert_one_line_error(invoke("run", spec, "--store", path, "--no-progress"), "too large")
    assert snapshot(path) == before


def test_estimate_of_an_enormous_network_is_refused():
    assert_one_line_error(invoke("estimate", "--m", "200000"), "peak memory of one block")


def test_estimate_overflow_is_shown_and_json_stays_strict():
    result = invoke("estimate", "--L", "3", "--m", "8", "--d", "4", "--k", "2", "--ratio", "1e300",
                    "--layer", "1", "--seeds", "2", "--draws", "2")
    assert result.exit_code == 0, result.output
    assert "the change is not finite: the perturbed outputs overflow float64" in result.output
    assert "inf" not in result.output.lower().replace("infinite", "")
    result = invoke("estimate", "--L", "3", "--m", "8", "--d", "4", "--k", "2", "--ratio", "1e300",
                    "--layer", "1", "--seeds", "2", "--draws", "2", "--json")
    assert result.exit_code == 0, result.output
    data = _strict(result.output)
    assert data["mean_abs_change"] is None or math.isfinite(data["mean_abs_change"])


def test_strict_json_helper_turns_every_non_finite_into_null():
    from pipeline.cliopts import dumps
    import numpy as np

    text = dumps({"a": np.float64("nan"), "b": [np.inf, -math.inf, 1.0], "c": np.float32(2.5)})
    assert _strict(text) == {"a": None, "b": [None, None, 1.0], "c": 2.5}


@pytest.mark.parametrize("backend, options, tls, warned", [
    ("local", {"host": "0.0.0.0"}, None, "every interface" ),
    ("local", {"host": "0.0.0.0"}, None, "0.0.0.0"),
    ("local", {"host": "127.0.0.1"}, None, None),
    ("local", {"host": "127.0.0.1", "dashboard_address": ":8787"}, None, "the dashboard on :8787"),
    ("local", {"interface": "eth0"}, None, "interface eth0"),
    ("local", {}, None, None),
    ("slurm", {"interface": "ib0"}, None, "interface ib0 without TLS"),
    ("slurm", {"interface": "ib0"}, {"cert": "c.pem"}, None),
    ("slurm", {"scheduler_options": {"host": "127.0.0.1"}}, None, None),
])
def test_exposure_warning(backend, options, tls, warned):
    msg = exposure(ClusterConfig(backend, options, tls=tls))
    if warned is None:
        assert msg is None
    else:
        assert msg.startswith("warning:") and "without TLS" in msg and (warned in msg or warned == "every interface"
                                                                         and "0.0.0.0" in msg)


def test_run_prints_the_exposure_warning_before_anything_starts(tmp_path):
    cluster = tmp_path / "c.yaml"
    cluster.write_text("backend: local\ncluster:\n  host: 0.0.0.0\n")
    (tmp_path / "file").write_text("not a store")
    result = invoke("run", write_spec(tmp_path, SMALL), "--cluster", cluster, "--store", tmp_path / "file",
                    "--no-progress")
    assert_one_line_error(result, "an existing file")
    assert "warning: this local cluster binds its scheduler and workers on 0.0.0.0" in result.output


def test_cluster_file_with_a_repeated_key_is_refused(tmp_path):
    cluster = tmp_path / "c.yaml"
    cluster.write_text("backend: local\nbackend: slurm\n")
    assert_one_line_error(invoke("run", write_spec(tmp_path, SMALL), "--cluster", cluster), "a second time")
