"""api and inmemory: a network in memory (torch nn.Sequential, numpy arrays) gives exactly the CLI's numbers
for the same network saved to safetensors; `run` and `open_results` take it through the spec."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import pipeline
from pipeline.cli import main
from pipeline.cliopts import dumps
from pipeline.errors import SpecError
from pipeline.spec import Spec

OPTIONS = dict(ratio=[0.01, 0.1], draws=12, random_seed=3)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A ReLU-then-tanh nn.Sequential, its inputs and labels, and the same saved as the CLI reads them."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.ReLU(), torch.nn.Linear(10, 8), torch.nn.Tanh(),
                                torch.nn.Linear(8, 3)).double()
    x = np.random.default_rng(1).normal(size=(15, 6))
    y = np.arange(15) % 3
    root = tmp_path_factory.mktemp("api")
    save_file(model.state_dict(), str(root / "net.safetensors"))
    np.save(root / "x.npy", x)
    np.save(root / "y.npy", y)
    return {"model": model, "x": x, "y": y, "root": root}


def cli_json(saved, *extra: str) -> dict:
    r = saved["root"]
    out = CliRunner().invoke(main, ["estimate", "--init", str(r / "net.safetensors"), "--input", str(r / "x.npy"),
                                    "--labels", str(r / "y.npy"), "--ratio", "0.01,0.1", "--draws", "12",
                                    "--random-seed", "3", "--activation", "relu,tanh", "--json", *extra])
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


def same_answer(summary: dict, cli: dict) -> None:
    """Equal to the last digit, but for the network file's path (the API's is its cache file)."""
    summary, cli = json.loads(dumps(summary)), dict(cli)
    assert summary["network"].pop("path").endswith(".safetensors")
    cli["network"] = {k: v for k, v in cli["network"].items() if k != "path"}
    assert summary == cli


def test_torch_module_gives_the_cli_numbers(saved, tmp_path):
    ds = pipeline.sensitivity(saved["model"], saved["x"], saved["y"], cache_dir=tmp_path, **OPTIONS)
    assert ds.attrs["title"] == "nnsweep results"  # an in-memory network has no sweep name: no dangling colon
    same_answer(ds.nnsweep.summary(), cli_json(saved))
    assert ds.nnsweep.spec.network.activations(2, 10, 0) == ("relu", "tanh")  # read from the module


def test_numpy_arrays_give_the_cli_numbers(saved, tmp_path):
    layers = [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in saved["model"]
              if isinstance(m, torch.nn.Linear)]
    ds = pipeline.sensitivity(layers, saved["x"], saved["y"], activation=["relu", "tanh"], cache_dir=tmp_path,
                              **OPTIONS)
    cli = cli_json(saved)
    summary = ds.nnsweep.summary()
    # W1, b1, ... instead of 0.weight, 0.bias, ...: the same layers under the other naming the files allow
    names = [(f"W{j} <- W{j} ", f"b{j} <- b{j}") for j in (1, 2, 3)]
    cli_names = [(f"W{j} <- {2 * j - 2}.weight ", f"b{j} <- {2 * j - 2}.bias") for j in (1, 2, 3)]
    lines = summary["network"].pop("layers")
    for line, (w, b), (cw, cb) in zip(lines, names, cli_names, strict=True):
        assert line.replace(w, cw).replace(b, cb) == cli["network"]["layers"].pop(0)
    assert cli["network"].pop("layers") == []
    same_answer(summary, cli)
    # the Dataset's numbers, reduced by hand, are the summary's
    sel = ds.sel(ratio=0.1, layer=2).squeeze()
    assert summary["by_ratio"]["0.1"]["by_layer"]["2"]["mean_rel_change"] == pytest.approx(
        float((sel.delta_norm / sel.output_norm).mean()), rel=1e-12)


def test_run_and_open_results_take_the_module(saved, tmp_path, local_client):
    raw = {"network": {"init": saved["model"], "input": saved["x"], "labels": saved["y"]},
           "grid": {"ratio": [0.01, 0.1], "layer": "all"}, "noise": {"draws": 12}, "random_seed": 3,
           "execution": {"seeds_per_block": 1}}
    spec = Spec.from_dict(raw, cache_dir=tmp_path / "cache")
    init, digest = spec.network.file("init")
    assert init.startswith(str(tmp_path / "cache")) and init.endswith(f"{digest}.safetensors")  # content-addressed
    assert Spec.from_dict(raw, cache_dir=tmp_path / "cache").hash == spec.hash  # written once, same hash
    summary = pipeline.run(spec, store=str(tmp_path / "s.zarr"), scheduler=local_client(1).scheduler.address,
                           progress=False)
    assert summary.ok
    stored = pipeline.open_results(tmp_path / "s.zarr").compute()
    mine = pipeline.sensitivity(spec)
    assert set(stored.data_vars) == set(mine.data_vars) and dict(stored.sizes) == dict(mine.sizes)
    assert set(stored.attrs) == set(mine.attrs) and stored.attrs["spec_hash"] == mine.attrs["spec_hash"]
    for name in stored.data_vars:
        assert stored[name].dims == mine[name].dims and stored[name].attrs == mine[name].attrs
        if name != "wall_time":
            np.testing.assert_array_equal(stored[name].values, mine[name].values)
    assert stored.nnsweep.summary() == mine.nnsweep.summary()


def test_module_whose_forward_is_not_its_chain_is_refused(saved, tmp_path):
    class Skip(torch.nn.Module):  # a residual connection: not the chain of Linear layers a state dict holds
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(6, 6).double(), torch.nn.Linear(6, 3).double()

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)) + x)

    with pytest.raises(SpecError, match="clean_outputs: the network was not read as it runs"):
        pipeline.sensitivity(Skip(), saved["x"], cache_dir=tmp_path)


@pytest.mark.parametrize("network, match", [
    ([np.ones((3, 6)), np.ones((2, 4))], "network"),
    ("nonsense", "network: 'nonsense' is not allowed"),
    (42, "network: int is not allowed"),
])
def test_bad_networks_name_the_argument(saved, tmp_path, network, match):
    with pytest.raises(SpecError, match=match):
        pipeline.sensitivity(network, saved["x"], cache_dir=tmp_path)


def test_bad_option_names_the_argument(saved, tmp_path):
    with pytest.raises(SpecError, match="draws: 0 is not allowed; expected an integer >= 1"):
        pipeline.sensitivity(saved["model"], saved["x"], draws=0, cache_dir=tmp_path)


def test_summary_of_any_spec_is_estimate(tiny_spec):
    spec = tiny_spec(grid={"ratio": [0.05, 0.2]}, network={"n_inputs": 3})  # random init, two networks
    ds = pipeline.sensitivity(spec)
    assert ds.nnsweep.summary() == pipeline.estimate(spec)
    # a selection answers for what it holds: one ratio is that ratio's entry of the whole
    assert ds.sel(ratio=[0.2]).nnsweep.summary() == pipeline.estimate(spec)["by_ratio"]["0.2"]


def test_summary_of_several_sizes_asks_for_one(tiny_spec):
    ds = pipeline.sensitivity(tiny_spec(grid={"L": [2, 3]}))
    with pytest.raises(pipeline.UserError, match=r"select one, e.g. ds.sel\(L=2, m=5\)"):
        ds.nnsweep.summary()
    assert ds.sel(L=[2]).nnsweep.summary()["n_draws"] == 4


def test_module_ending_in_softmax_is_refused(saved, tmp_path):
    model = torch.nn.Sequential(*saved["model"], torch.nn.Softmax(dim=1))
    with pytest.raises(SpecError, match=r"network: the module applies Softmax after its last Linear.*model\[:-1\]"):
        pipeline.sensitivity(model, saved["x"], cache_dir=tmp_path)
    assert len(pipeline.sensitivity(model[:-1], saved["x"], draws=2, layer=1, cache_dir=tmp_path).draw) == 2


def test_state_dict_mapping_is_read_as_its_file(saved, tmp_path):
    tensors = {k: v.numpy() for k, v in saved["model"].state_dict().items()}
    ds = pipeline.sensitivity(tensors, saved["x"], activation="relu,tanh".split(","), cache_dir=tmp_path, draws=4)
    via_torch = pipeline.sensitivity(saved["model"], saved["x"], cache_dir=tmp_path, draws=4)
    np.testing.assert_array_equal(ds["delta_norm"].values, via_torch["delta_norm"].values)
    assert ds.nnsweep.spec.network.file("init") == via_torch.nnsweep.spec.network.file("init")  # the same bytes


@pytest.mark.parametrize("inputs, words", [
    (np.array([[1.0, "a"]], dtype=object), "inputs: an array of Python objects is not allowed"),
    (np.zeros((4, 5)), r"inputs: the module cannot run on these inputs of shape \(4, 5\) \(RuntimeError: mat1"),
    (np.zeros((4, 6)), r"inputs: .* holds all-zero inputs \(rows \[0, 1, 2, 3\]\)"),
])
def test_bad_inputs_name_the_argument(saved, tmp_path, inputs, words):
    with pytest.raises(SpecError, match=words):
        pipeline.sensitivity(saved["model"], inputs, cache_dir=tmp_path)


def test_summary_of_some_inputs_leaves_the_control_variate_out(tmp_path):
    """The cheap draws rebuild the spec's inputs: a Dataset of a selection of them gets the plain estimate,
    whose numbers are those of the selected inputs alone; all the inputs get the control variate."""
    rng = np.random.default_rng(4)
    weights = [rng.standard_normal((16, 6)) / 2.5, rng.standard_normal((4, 16)) / 4]
    x = rng.standard_normal((6, 6))
    ds = pipeline.sensitivity(weights, x, ratio=0.05, layer=1, draws=40, cache_dir=tmp_path)
    assert ds.nnsweep.summary()["printed"] == "control_variate"
    some = ds.isel(input=slice(3, 6)).nnsweep.summary()
    assert some["printed"] == "plain" and some["control_variate"] is None
    rel = (ds.delta_norm / ds.output_norm).isel(input=slice(3, 6))
    assert some["mean_rel_change"] == pytest.approx(float(rel.mean()), rel=1e-12)
