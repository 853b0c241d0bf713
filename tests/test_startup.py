"""`nnsweep --help`, every command's --help and a small `nnsweep estimate` import only what they use.

Each check runs the CLI in a fresh interpreter and reads that interpreter's
``sys.modules`` afterwards, so a heavy import anywhere on the path (a top-level
``import xarray`` in pipeline/cli.py, say) fails it. How long start-up takes is
measured by benchmarks/bench_startup.py, not here: wall time on a shared
machine is not a test.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import pipeline

# Libraries that neither --help nor a small estimate needs (each costs 0.02 to 1 s to import).
HEAVY = ("scipy", "dask", "distributed", "xarray", "zarr", "pandas", "matplotlib", "tqdm", "fsspec",
         "dask_jobqueue", "safetensors", "bokeh", "numcodecs")
# A small estimate also needs numpy, threadpoolctl and psutil (not PyYAML: its spec comes from options;
# nor the network-file readers: its network is drawn); --help needs only click.
ESTIMATE_FORBIDDEN = (*HEAVY, "yaml", "pipeline.statedict", "pipeline.tensorfiles", "pipeline.onnxread")
HELP_FORBIDDEN = (*ESTIMATE_FORBIDDEN, "numpy", "threadpoolctl", "psutil")
TINY_ESTIMATE = ["estimate", "--L", "2", "--m", "16", "--d", "8", "--k", "2", "--seeds", "1", "--draws", "2",
                 "--ratio", "0.1", "--layer", "1", "--json"]
# wide enough for the Lanczos spectral norms of the bound (m >= 128), several networks: a t interval over them
WIDE_ESTIMATE = ["estimate", "--L", "3", "--m", "256", "--d", "64", "--k", "2", "--seeds", "3", "--draws", "4",
                 "--ratio", "0.1,0.3", "--json"]

# Runs the CLI in-process for each argument list of argv[1] (JSON) and prints, per run, the modules of
# argv[2] (JSON) that were newly imported; argv[3] is a module to import first ("" for none).
CHILD = """
import importlib, json, sys
runs, watched, first = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
if first:
    importlib.import_module(first)
from pipeline.cli import main

def loaded():
    return {m for m in watched if m in sys.modules}

report, seen = [], loaded()
for args in runs:
    try:
        main(args, prog_name="nnsweep", standalone_mode=False)
    except SystemExit as e:
        if e.code:
            raise
    now = loaded()
    report.append([args, sorted(now - seen)])
    seen = now
print(json.dumps({"runs": report, "loaded": sorted(seen)}))
"""


def run_child(runs: list[list[str]], watched, first: str = "") -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(runs), json.dumps(list(watched)), first],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def command_paths() -> list[list[str]]:
    """Every command and subcommand of the CLI, as argument lists."""
    from pipeline.cli import main

    paths, todo = [], [([], main)]
    while todo:
        path, group = todo.pop()
        for name, cmd in group.commands.items():
            paths.append([*path, name])
            if hasattr(cmd, "commands"):
                todo.append(([*path, name], cmd))
    return sorted(paths)


def test_every_help_imports_no_heavy_module():
    paths = command_paths()
    assert ["estimate"] in paths and ["cluster", "show"] in paths and ["report"] in paths
    out = run_child([["--help"]] + [[*p, "--help"] for p in paths], HELP_FORBIDDEN)
    assert [r for r in out["runs"] if r[1]] == []
    assert out["loaded"] == []


def test_an_estimate_imports_no_heavy_module():
    out = run_child([TINY_ESTIMATE, WIDE_ESTIMATE], ESTIMATE_FORBIDDEN)
    assert out["runs"] == [[TINY_ESTIMATE, []], [WIDE_ESTIMATE, []]]


def test_the_check_sees_a_heavy_import():
    """The same child, after importing pipeline.store first (as a command that opens a store does),
    reports xarray, zarr and dask: the checks above are not vacuous."""
    out = run_child([["--help"]], HEAVY, first="pipeline.store")
    assert {"xarray", "zarr", "dask"} <= set(out["loaded"])
    assert out["runs"] == [[["--help"], []]]  # already loaded before the run: not new


def test_a_small_estimate_still_answers():
    done = subprocess.run([sys.executable, "-m", "pipeline", *TINY_ESTIMATE], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["n_draws"] == 2 and out["ci95_over"] == "draws" and out["mean_rel_change"] > 0


def test_import_pipeline_is_light_and_its_api_resolves():
    code = ("import json, sys, pipeline; heavy = json.loads(sys.argv[1]); "
            "before = sorted(m for m in heavy if m in sys.modules); "
            "names = {n: getattr(pipeline, n).__module__ for n in pipeline.__all__}; "
            "print(json.dumps({'before': before, 'names': names}))")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(HELP_FORBIDDEN)], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["before"] == []
    assert out["names"]["open_results"] == "pipeline.store" and out["names"]["run"] == "pipeline.execute"
    assert set(out["names"]) == set(pipeline.__all__)


@pytest.mark.parametrize("module", ["pipeline.cli", "pipeline.estimation", "pipeline.spec", "pipeline.measure",
                                    "pipeline.analysis.commands", "pipeline.analysis.intervals"])
def test_light_modules_import_nothing_heavy(module):
    out = run_child([], HEAVY, first=module)
    assert out["loaded"] == []
