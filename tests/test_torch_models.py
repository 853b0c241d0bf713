"""PyTorch MLPs as their users hold them, read by `nnsweep estimate` and checked against torch itself.

Each case builds a network in PyTorch, exports it the way users do (``safetensors.torch.save_file``,
``torch.save(state_dict)``, ``torch.onnx.export``), saves inputs, labels and the model's own clean outputs
(``model(x).detach().numpy()``) as .npy, runs ``nnsweep estimate --json`` in-process and compares every
(ratio, layer) with an independent torch Monte Carlo (tests/torch_reference.py): E R, the share of changed
predictions and the accuracy within Monte-Carlo error (|z| < 4 from both sides' standard errors), the clean
accuracy exactly. The tool's own clean-output check is exercised too: it must accept the model's outputs and
refuse them when the network is read in another order or with another activation.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import stats
from torch import nn

from pipeline.cli import main
from torch_reference import first_order_rel_sq, linear_layers, monte_carlo

N = 100  # inputs
DRAWS = 200  # the tool's draws per (layer, ratio)
REF_DRAWS = 300  # the reference's
RATIOS = (0.01, 0.1)
Z_MAX = 4.0


# --- networks as users write them -----------------------------------------------------------

def _init(model: nn.Module, seed: int) -> nn.Module:
    """He-scaled Gaussian weights and small biases, so outputs vary across inputs as a trained net's do."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Linear):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * math.sqrt(2 / mod.in_features))
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.1)
            elif isinstance(mod, nn.BatchNorm1d):
                mod.weight.copy_(0.5 + 1.5 * torch.rand(mod.weight.shape, generator=gen))
                mod.bias.copy_(0.3 * torch.randn(mod.bias.shape, generator=gen))
    if any(isinstance(mod, nn.BatchNorm1d) for mod in model.modules()):
        d = _input_dim(model)
        model.train()
        with torch.no_grad():  # running statistics far from (0, 1): mean 0.5, spread 1.5 in the inputs
            for _ in range(4):
                model(1.5 * torch.randn(256, d, generator=gen) + 0.5)
    return model.eval()


def _input_dim(model: nn.Module) -> int:
    return getattr(model, "input_dim", None) or next(m for m in model.modules() if isinstance(m, nn.Linear)).in_features


def sequential(widths, act: Callable[[], nn.Module] = nn.ReLU, *, bn=False, flatten_dropout=False) -> nn.Sequential:
    """Linear [BatchNorm1d] act [Dropout] ... Linear, optionally led by a Flatten."""
    layers: list[nn.Module] = [nn.Flatten()] if flatten_dropout else []
    for j, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if j < len(widths) - 2:
            layers += [nn.BatchNorm1d(b)] if bn else []
            layers.append(act())
            layers += [nn.Dropout(0.3)] if flatten_dropout else []
    return nn.Sequential(*layers)


class Named(nn.Module):
    """Linear layers as attributes ``names`` (forward order), one activation module, optional BatchNorm1d
    ``bn1, bn2, ...`` after each hidden layer."""

    def __init__(self, names, widths, act: Callable[[], nn.Module] = nn.ReLU, bn=False):
        super().__init__()
        self.names, self.input_dim = tuple(names), widths[0]
        for name, a, b in zip(names, widths, widths[1:]):
            setattr(self, name, nn.Linear(a, b))
        self.bns = [f"bn{j + 1}" for j in range(len(names) - 1)] if bn else []
        for name, b in zip(self.bns, widths[1:]):
            setattr(self, name, nn.BatchNorm1d(b))
        self.act = act()

    def forward(self, x):
        for j, name in enumerate(self.names[:-1]):
            x = getattr(self, name)(x)
            x = getattr(self, self.bns[j])(x) if self.bns else x
            x = self.act(x)
        return getattr(self, self.names[-1])(x)


class FeaturesClassifier(nn.Module):
    """torchvision style: ``features.0, features.2`` then ``classifier.0``."""

    def __init__(self, widths):
        super().__init__()
        d, h1, h2, k = widths
        self.input_dim = d
        self.features = nn.Sequential(nn.Linear(d, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(h2, k))

    def forward(self, x):
        return self.classifier(self.features(x))


# --- cases ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], nn.Module]  # float32, before _init
    export: str = "safetensors"  # safetensors | float16 | bfloat16 | pt | pth | onnx
    options: tuple[str, ...] = ()  # estimate options beyond the common ones
    activations: tuple[str, ...] | None = None  # canonical names the tool should report, one per hidden layer

    def __str__(self):
        return self.name


def _acts(name, n):
    return (name,) * n


LEAKY = "leaky_relu(0.2)"
CASES = [
    Case("relu_uniform", lambda: sequential([32, 48, 48, 10]), activations=_acts("relu", 2)),
    Case("widths_64_256_64_10", lambda: sequential([64, 256, 64, 10]), activations=_acts("relu", 2)),
    Case("widths_64_100_50_10", lambda: sequential([64, 100, 50, 10]), activations=_acts("relu", 2)),
    Case("fc1_fc2_fc3", lambda: Named(["fc1", "fc2", "fc3"], [40, 64, 32, 10])),
    Case("flatten_dropout", lambda: sequential([40, 64, 48, 10], flatten_dropout=True)),
    Case("stem_body_top_ordered", lambda: Named(["stem", "body", "top"], [32, 32, 32, 10]),
         options=("--layer-order", "stem,body,top")),
    Case("encoder_hidden_head_ordered", lambda: Named(["encoder", "hidden", "head"], [40, 48, 48, 10]),
         options=("--layer-order", "encoder,hidden,head")),
    Case("features_classifier_ordered", lambda: FeaturesClassifier([40, 64, 32, 10]),
         options=("--layer-order", "features.0,features.2,classifier.0")),
    Case("leaky_relu", lambda: sequential([40, 64, 48, 10], lambda: nn.LeakyReLU(0.2)),
         options=("--activation", LEAKY), activations=_acts(LEAKY, 2)),
    Case("tanh", lambda: sequential([40, 64, 48, 10], nn.Tanh), options=("--activation", "tanh")),
    Case("sigmoid", lambda: sequential([40, 64, 48, 10], nn.Sigmoid), options=("--activation", "sigmoid")),
    Case("gelu", lambda: sequential([40, 64, 48, 10], nn.GELU), options=("--activation", "gelu")),
    Case("gelu_tanh", lambda: sequential([40, 64, 48, 10], lambda: nn.GELU(approximate="tanh")),
         options=("--activation", "gelu_tanh")),
    Case("silu", lambda: sequential([40, 64, 48, 10], nn.SiLU), options=("--activation", "silu")),
    Case("mixed_activations", lambda: nn.Sequential(nn.Linear(40, 64), nn.GELU(), nn.Linear(64, 48),
                                                    nn.LeakyReLU(0.1), nn.Linear(48, 10)),
         options=("--activation", "gelu,leaky_relu(0.1)"), activations=("gelu", "leaky_relu(0.1)")),
    Case("batchnorm_sequential", lambda: sequential([40, 64, 48, 10], bn=True)),
    Case("batchnorm_named_ordered", lambda: Named(["fc1", "fc2", "fc3"], [40, 64, 48, 10], bn=True),
         options=("--layer-order", "fc1,bn1,fc2,bn2,fc3")),
    Case("float16", lambda: sequential([40, 64, 48, 10]), export="float16"),
    Case("bfloat16", lambda: sequential([40, 64, 48, 10]), export="bfloat16"),
    Case("torch_save_pt", lambda: sequential([64, 100, 50, 10]), export="pt"),
    Case("torch_save_pth_batchnorm_tanh", lambda: sequential([40, 64, 48, 10], nn.Tanh, bn=True), export="pth",
         options=("--activation", "tanh")),
    Case("onnx_relu", lambda: sequential([64, 100, 50, 10]), export="onnx", activations=_acts("relu", 2)),
    Case("onnx_leaky_relu", lambda: sequential([40, 64, 48, 10], lambda: nn.LeakyReLU(0.2)), export="onnx",
         activations=_acts(LEAKY, 2)),
    Case("onnx_tanh", lambda: sequential([40, 64, 48, 10], nn.Tanh), export="onnx", activations=_acts("tanh", 2)),
    Case("onnx_mixed_activations", lambda: nn.Sequential(nn.Linear(40, 64), nn.Tanh(), nn.Linear(64, 48), nn.SiLU(),
                                                         nn.Linear(48, 10)), export="onnx", activations=("tanh", "silu")),
    Case("onnx_gelu_opset14", lambda: sequential([40, 64, 48, 10], nn.GELU), export="onnx_opset14",
         activations=_acts("gelu", 2)),  # before opset 20 GELU is exported as Div, Erf, Add, Mul, Mul
    Case("onnx_batchnorm_tanh", lambda: sequential([40, 64, 48, 10], nn.Tanh, bn=True), export="onnx",
         activations=_acts("tanh", 2)),
    Case("onnx_matmul_add", lambda: sequential([64, 100, 50, 10], nn.SiLU), export="onnx_matmul",
         activations=_acts("silu", 2)),
    Case("onnx_gemm_transb0", lambda: sequential([40, 64, 48, 10], nn.Sigmoid), export="onnx_transb0",
         activations=_acts("sigmoid", 2)),
]
BY_NAME = {c.name: c for c in CASES}


# --- exporting and running --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Exported:
    """One case on disk, plus the float64 model the reference runs (weights rounded as the file holds them)."""

    case: Case
    model: nn.Module  # float32, as trained
    reference: nn.Module  # float64, weights as stored in the file
    net: Path
    x: Path
    y: Path
    logits: Path
    x64: torch.Tensor
    labels: torch.Tensor
    n_layers: int
    seed: int  # of the weights, the inputs, the tool's noise (--random-seed) and the reference's


def _save_onnx(model: nn.Module, x: torch.Tensor, path: Path, dynamo: bool = False, opset: int | None = None) -> None:
    """The TorchScript exporter by default: torch's default (dynamo) exporter needs onnxscript."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        if dynamo:
            torch.onnx.export(model, (x[:2],), str(path), dynamo=True, input_names=["x"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False)
        else:
            torch.onnx.export(model, (x[:2],), str(path), dynamo=False, input_names=["x"], opset_version=opset,
                              output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})


def _rewrite_gemms(path: Path, form: str) -> None:
    """Each Gemm(x, W, b, transB=1) of torch's export as other exporters write it (tf2onnx, skl2onnx):
    ``matmul``: MatMul(x, W^T) then Add(., b); ``transb0``: Gemm(x, W^T, b) with transB=0."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type != "Gemm":
            nodes.append(node)
            continue
        x, w, b = node.input
        wt = numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(inits[w]).T), f"{w}_T")
        graph.initializer.remove(inits[w])
        graph.initializer.append(wt)
        if form == "matmul":
            nodes += [helper.make_node("MatMul", [x, wt.name], [f"{node.output[0]}_mm"], name=f"{node.name}_MatMul"),
                      helper.make_node("Add", [f"{node.output[0]}_mm", b], list(node.output), name=f"{node.name}_Add")]
        else:
            nodes.append(helper.make_node("Gemm", [x, wt.name, b], list(node.output), name=node.name, transB=0))
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export(case: Case, directory: Path, seed: int = 0) -> Exported:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    model = _init(case.build(), seed)
    d = _input_dim(model)
    gen = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(N, d, generator=gen)
    stored = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(case.export, torch.float32)
    as_stored = copy.deepcopy(model).to(stored).float()  # what the file holds, computed in float32
    with torch.no_grad():
        logits = as_stored(x)
    suffix = "onnx" if case.export.startswith("onnx") else {"float16": "safetensors", "bfloat16": "safetensors"}.get(
        case.export, case.export)
    net = directory / f"model.{suffix}"
    if case.export.startswith("onnx"):
        opset = int(case.export.removeprefix("onnx_opset")) if case.export.startswith("onnx_opset") else None
        _save_onnx(model, x, net, dynamo=case.export == "onnx_dynamo", opset=opset)
        if case.export in ("onnx_matmul", "onnx_transb0"):
            _rewrite_gemms(net, case.export.removeprefix("onnx_"))
    elif case.export in ("pt", "pth"):
        torch.save(model.state_dict(), net)
    else:
        save_file(copy.deepcopy(model).to(stored).state_dict(), str(net))
    k = logits.shape[1]
    labels = logits.argmax(dim=1)
    flip = torch.rand(N, generator=gen) < 0.25  # accuracy near 0.75: neither 0 nor 1
    labels = torch.where(flip, (labels + 1) % k, labels)
    paths = {name: directory / f"{name}.npy" for name in ("x", "y", "logits")}
    np.save(paths["x"], x.numpy())
    np.save(paths["y"], labels.numpy())
    np.save(paths["logits"], logits.numpy())
    reference = copy.deepcopy(as_stored).double().eval()
    x64 = x.double()
    return Exported(case, model, reference, net, paths["x"], paths["y"], paths["logits"], x64, labels,
                    len(linear_layers(reference, x64)), seed)


def invoke(*args) -> "click.testing.Result":  # noqa: F821
    return CliRunner().invoke(main, [str(a) for a in args])


# the float32 model's outputs differ from the float64 network's by at most 4e-7 of the largest output in
# every case here: 3e-6 is "equal to rounding", 30x tighter than the tool's default
CLEAN_TOLERANCE = 3e-6


def estimate(ex: Exported, *options, clean_outputs: bool = True, draws: int = DRAWS, ratios=RATIOS):
    extra = ("--clean-outputs", ex.logits, "--clean-outputs-tolerance", CLEAN_TOLERANCE) if clean_outputs else ()
    return invoke("estimate", "--init", ex.net, "--input", ex.x, "--labels", ex.y, *extra, "--random-seed", ex.seed,
                  "--ratio", ",".join(map(str, ratios)), "--layer", "all", "--draws", draws, "--json", *options)


def estimate_json(ex: Exported, *options, **kw) -> dict:
    result = estimate(ex, *ex.case.options, *options, **kw)
    assert result.exit_code == 0, f"{ex.case.name}: exit {result.exit_code}\n{result.output}"
    return json.loads(result.stdout)


def assert_refused(result, *needles: str) -> str:
    """Exit 2, one paragraph starting 'Error:', no traceback; returns the paragraph."""
    out = result.output
    assert result.exit_code == 2, f"exit {result.exit_code}, expected 2\n{out}"
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, out
    paragraph = out[out.index("Error:"):].strip()
    assert "\n\n" not in paragraph and len(paragraph) < 2000, out
    assert "No such option" not in paragraph, out  # an option the tool lacks is not the refusal meant
    for needle in needles:
        assert re.search(needle, paragraph, re.IGNORECASE), f"{needle!r} not in:\n{paragraph}"
    return paragraph


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``exported(name)``: the case exported once per module, each with its own seed (independent checks)."""
    cache: dict[str, Exported] = {}
    root = tmp_path_factory.mktemp("torch_models")

    def get(name: str) -> Exported:
        if name not in cache:
            cache[name] = export(BY_NAME[name], root / name, seed=1 + CASES.index(BY_NAME[name]))
        return cache[name]
    return get


# --- comparison -------------------------------------------------------------------------------

def _se_from_ci(ci, n: int) -> float:
    """The standard error behind a 95% t-interval; 0 for None (the tool's interval of draws that all agree)."""
    if ci is None:
        return 0.0
    lo, hi = ci
    return (hi - lo) / 2 / stats.t.ppf(0.975, n - 1)


def compare(ex: Exported, out: dict, ratios=RATIOS) -> list[str]:
    """Every (ratio, layer) of the tool's JSON against the reference; returns one line per discrepancy."""
    bad: list[str] = []
    floor = 1 / (N * DRAWS)  # one changed prediction in all the tool's draws
    for ratio in ratios:
        for i in range(1, ex.n_layers + 1):
            where = f"r={ratio} layer {i}"
            try:
                cell = out["by_ratio"][repr(ratio)]["by_layer"][str(i)]
            except KeyError as e:
                bad.append(f"{where}: no cell in the JSON ({e})")
                continue
            n = cell["n_draws"]
            if n != DRAWS:
                bad.append(f"{where}: n_draws {n}, expected {DRAWS}")
            mc = monte_carlo(ex.reference, ex.x64, ex.labels, i, ratio, REF_DRAWS,
                             seed=10**6 * ex.seed + 7919 * i + int(1e4 * ratio))
            se_t = _se_from_ci(cell["ci95"], n)
            z = (cell["mean_rel_change"] - mc.mean("rel")) / math.hypot(se_t, mc.standard_error("rel"))
            if not abs(z) < Z_MAX:
                bad.append(f"{where}: E R tool {cell['mean_rel_change']:.6g} +- {se_t:.2g}, torch "
                           f"{mc.mean('rel'):.6g} +- {mc.standard_error('rel'):.2g}: z = {z:.1f}")
            # the tool gives no interval on the change rate: its draws spread as the reference's do
            se = max(float(mc.pred_changed.std()) * math.sqrt(1 / n + 1 / mc.draws), floor)
            z = (cell["pred_change_rate"] - mc.mean("pred_changed")) / se
            if not abs(z) < Z_MAX:
                bad.append(f"{where}: prediction-change rate tool {cell['pred_change_rate']:.5g}, torch "
                           f"{mc.mean('pred_changed'):.5g} +- {se:.2g}: z = {z:.1f}")
            se = max(math.hypot(_se_from_ci(cell["accuracy_ci95"], n), mc.standard_error("accuracy")), floor)
            z = (cell["accuracy"] - mc.mean("accuracy")) / se
            if not abs(z) < Z_MAX:
                bad.append(f"{where}: accuracy tool {cell['accuracy']:.5g}, torch {mc.mean('accuracy'):.5g} "
                           f"+- {se:.2g}: z = {z:.1f}")
            if not math.isclose(cell["clean_accuracy"], mc.clean_accuracy, abs_tol=1e-12):
                bad.append(f"{where}: clean accuracy tool {cell['clean_accuracy']}, torch {mc.clean_accuracy}")
    return bad


# --- the reference itself ---------------------------------------------------------------------

def _mixed_model() -> tuple[nn.Module, torch.Tensor]:
    """BatchNorm1d, Tanh, GELU and LeakyReLU in one small float64 model, with inputs."""
    model = nn.Sequential(nn.Linear(12, 20), nn.BatchNorm1d(20), nn.Tanh(), nn.Linear(20, 16), nn.GELU(),
                          nn.Linear(16, 8), nn.LeakyReLU(0.2), nn.Linear(8, 4))
    model = _init(model, 3).double()
    return model, torch.randn(40, 12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)


@pytest.mark.parametrize("layer", [1, 2, 4])
def test_reference_at_small_ratio_is_the_exact_first_order_answer(layer):
    model, x = _mixed_model()
    mc = monte_carlo(model, x, None, layer, 1e-6, 400, seed=layer)
    exact = first_order_rel_sq(model, x, layer, 1e-6)
    z = (mc.mean("rel_sq") - exact) / mc.standard_error("rel_sq")
    assert abs(z) < Z_MAX, (mc.mean("rel_sq"), exact, z)


def test_reference_folds_batchnorm_as_the_fused_linear_layer_would():
    from torch.nn.utils.fusion import fuse_linear_bn_eval

    model, x = _mixed_model()
    fused = nn.Sequential(fuse_linear_bn_eval(model[0], model[1]), *model[2:])
    assert [layer.bn_name for layer in linear_layers(model, x)] == ["1", None, None, None]
    a = monte_carlo(model, x, None, 1, 0.1, 20, seed=5)
    b = monte_carlo(fused, x, None, 1, 0.1, 20, seed=5)
    torch.testing.assert_close(a.clean_outputs, b.clean_outputs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.rel, b.rel, rtol=1e-10, atol=1e-14)


def test_reference_two_seeds_agree():
    model, x = _mixed_model()
    a = monte_carlo(model, x, None, 2, 0.3, 400, seed=1)
    b = monte_carlo(model, x, None, 2, 0.3, 400, seed=2)
    for what in ("rel", "pred_changed"):
        z = (a.mean(what) - b.mean(what)) / math.hypot(a.standard_error(what), b.standard_error(what))
        assert abs(z) < Z_MAX, (what, a.mean(what), b.mean(what))
    assert not torch.equal(a.rel, b.rel)


def test_reference_takes_the_forward_order_not_the_names():
    model = _init(Named(["stem", "body", "top"], [6, 6, 6, 3]), 0).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    assert [layer.name for layer in linear_layers(model, x)] == ["stem", "body", "top"]


@pytest.mark.parametrize("name", ["bfloat16", "batchnorm_sequential", "tanh"])
def test_reference_model_computes_what_the_user_saved(exported, name):
    """The float64 reference is the same network as the float32 one whose outputs the user saved."""
    ex = exported(name)
    with torch.no_grad():
        ref = ex.reference(ex.x64)
    logits = torch.from_numpy(np.load(ex.logits)).double()
    torch.testing.assert_close(ref, logits, rtol=1e-5, atol=1e-5 * float(logits.abs().max()))


# --- the tool against the reference -----------------------------------------------------------

def test_uniform_relu_sequential_without_the_new_options(exported):
    """The one case the tool read before issue 17, with the options it had then."""
    ex = exported("relu_uniform")
    bad = compare(ex, estimate_json(ex, clean_outputs=False))
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_estimate_matches_a_torch_monte_carlo(exported, case):
    ex = exported(case.name)
    bad = compare(ex, estimate_json(ex))
    assert not bad, f"{case.name}:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", ["leaky_relu", "tanh", "sigmoid", "gelu", "silu", "batchnorm_sequential"])
def test_float32_precision_matches_a_torch_monte_carlo_down_to_small_ratios(exported, name):
    """--precision float32: the change is computed without cancellation, so even r = 1e-7 is right (plain float32
    differences of perturbed and clean outputs give 2.6 times the E R of the gelu case there)."""
    ex = exported(name)
    ratios = (1e-7, 0.1)
    out = estimate_json(ex, "--precision", "float32", ratios=ratios)
    bad = compare(ex, out, ratios)
    assert not bad, f"{name} in float32:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", ["onnx_relu", "onnx_leaky_relu", "onnx_tanh"])
def test_onnx_from_the_dynamo_exporter(tmp_path, name):
    """torch.onnx.export's default exporter (MatMul/Gemm as it chooses); it needs onnxscript, a test dependency."""
    ex = export(dataclasses.replace(BY_NAME[name], export="onnx_dynamo"), tmp_path)
    bad = compare(ex, estimate_json(ex))
    assert not bad, f"{name} (dynamo export):\n" + "\n".join(bad)


@pytest.mark.parametrize("name", ["onnx_relu", "onnx_tanh", "onnx_matmul_add", "onnx_gelu_opset14",
                                  "onnx_mixed_activations", "mixed_activations", "batchnorm_named_ordered",
                                  "onnx_batchnorm_tanh", "leaky_relu", "bfloat16"])
def test_estimate_json_says_how_it_read_the_network(exported, name):
    ex = exported(name)
    out = estimate_json(ex)
    net = out["network"]
    case = ex.case
    assert net["format"] == ("onnx" if case.export.startswith("onnx") else {
        "pth": "pt", "float16": "safetensors", "bfloat16": "safetensors"}.get(case.export, case.export)), net
    assert len(net["layers"]) == ex.n_layers, net
    layers = linear_layers(ex.reference, ex.x64)
    assert net["widths"] == [layers[0].linear.in_features] + [lay.linear.out_features for lay in layers], net
    if case.activations is not None:
        assert tuple(net["activations"]) == case.activations, net
    if "batchnorm" in name:
        assert all(re.search(r"\bbn\d|batchnorm", line, re.I) and "folded" in line for line in net["layers"][:-1]), net
        assert "folded" not in net["layers"][-1], net
    if name == "bfloat16":
        assert all("bfloat16" in line for line in net["layers"]), net


def _numbers(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _numbers(value, f"{prefix}/{key}")
    elif isinstance(tree, list):
        for j, value in enumerate(tree):
            yield from _numbers(value, f"{prefix}[{j}]")
    elif isinstance(tree, float):
        yield prefix, tree


@pytest.mark.parametrize("act, option", [(nn.Tanh, "tanh"), (lambda: nn.LeakyReLU(0.2), LEAKY)],
                         ids=["tanh", "leaky_relu"])
def test_onnx_and_safetensors_exports_give_the_same_numbers(tmp_path, act, option):
    case = Case("pair", lambda: sequential([40, 64, 48, 10], act))
    a = export(case, tmp_path / "st")
    b = export(dataclasses.replace(case, export="onnx"), tmp_path / "onnx")
    from_st = estimate_json(a, "--activation", option)
    from_onnx = estimate_json(b)
    from_st.pop("network", None), from_onnx.pop("network", None)
    st, ox = dict(_numbers(from_st)), dict(_numbers(from_onnx))
    assert st.keys() == ox.keys()
    off = {k: (st[k], ox[k]) for k in st if not math.isclose(st[k], ox[k], rel_tol=1e-12, abs_tol=1e-300)}
    assert not off, off


# --- refusals and the clean-output check ------------------------------------------------------

@pytest.mark.parametrize("name, export_as", [("stem_body_top_ordered", "safetensors"),
                                             ("encoder_hidden_head_ordered", "safetensors"),
                                             ("stem_body_top_ordered", "pt")])
def test_names_out_of_forward_order_are_refused_without_an_order(exported, tmp_path, name, export_as):
    case = dataclasses.replace(BY_NAME[name], options=(), export=export_as)
    ex = exported(name) if export_as == "safetensors" else export(case, tmp_path)
    names = BY_NAME[name].options[1].split(",")
    assert_refused(estimate(ex), "--layer-order", *(rf"\b{re.escape(n)}\b" for n in names))


def test_a_network_read_in_the_wrong_order_fails_the_clean_output_check(exported):
    ex = exported("stem_body_top_ordered")  # every layer square but the last: body, stem, top also chains
    assert_refused(estimate(ex, "--layer-order", "body,stem,top"), "clean", r"not\s+read")


def test_a_network_read_with_the_wrong_activation_fails_the_clean_output_check(exported):
    ex = exported("tanh")
    assert_refused(estimate(ex), "clean", r"not\s+read")  # no --activation: computed as ReLU


def test_the_two_gelu_forms_are_told_apart_by_the_clean_output_check(exported):
    """Their E R agree within Monte-Carlo error; their outputs differ by 2e-4 of the largest."""
    assert_refused(estimate(exported("gelu"), "--activation", "gelu_tanh"), "clean", r"not\s+read")
    assert_refused(estimate(exported("gelu_tanh"), "--activation", "gelu"), "clean", r"not\s+read")


def test_the_clean_output_check_is_to_rounding(exported, tmp_path):
    ex = exported("widths_64_100_50_10")
    run = ("estimate", "--init", ex.net, "--input", ex.x, "--draws", 4, "--json")
    result = invoke(*run, "--clean-outputs", ex.logits)
    assert result.exit_code == 0, result.output  # float32 outputs of the float32 model: equal to rounding
    off = tmp_path / "off.npy"
    logits = np.load(ex.logits)
    np.save(off, logits * (1 + 1e-3))
    assert_refused(invoke(*run, "--clean-outputs", off), "clean")
    np.save(off, logits[:, :-1])  # a wrong shape is refused too
    assert_refused(invoke(*run, "--clean-outputs", off), "clean")


@pytest.mark.parametrize("order, needle", [("stem,top", r"\bbody\b"), ("stem,body,tail", r"\btail\b")],
                         ids=["missing_body", "unknown_tail"])
def test_a_layer_order_naming_wrong_modules_is_refused(exported, order, needle):
    ex = exported("stem_body_top_ordered")
    assert_refused(estimate(ex, "--layer-order", order), needle)


def test_a_pickled_whole_model_is_refused(tmp_path):
    model = _init(sequential([8, 16, 4]), 0)
    torch.save(model, tmp_path / "whole.pt")
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((3, 8), np.float32))
    assert_refused(invoke("estimate", "--init", tmp_path / "whole.pt", "--input", x), "state.?dict")


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.out(h + torch.relu(self.fc2(h)))


class _Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.out = nn.Conv1d(1, 2, 3), nn.Linear(12, 3)

    def forward(self, x):
        return self.out(torch.relu(self.conv(x[:, None, :])).flatten(1))


@pytest.mark.parametrize("model, needle", [
    (_Residual(), r"\bAdd\b"),
    (_Conv(), r"\bConv\b|\bUnsqueeze\b"),  # the exporter puts an Unsqueeze before the Conv
    (nn.Sequential(nn.Linear(8, 16), nn.Softplus(), nn.Linear(16, 3)), r"softplus"),
], ids=["residual_add", "conv", "softplus"])
def test_onnx_graphs_that_are_not_a_supported_chain_are_refused_naming_the_node(tmp_path, model, needle):
    model = _init(model, 0)
    path = tmp_path / "m.onnx"
    x = torch.randn(4, 8)
    _save_onnx(model, x, path)
    np.save(tmp_path / "x.npy", x.numpy())
    assert_refused(invoke("estimate", "--init", path, "--input", tmp_path / "x.npy"), needle)


def test_an_activation_the_tool_cannot_compute_is_refused_by_name(exported):
    ex = exported("relu_uniform")
    assert_refused(estimate(ex, "--activation", "mish", clean_outputs=False), "mish")


def test_a_layer_order_leaving_out_a_batchnorm_is_refused(exported):
    ex = exported("batchnorm_named_ordered")
    assert_refused(estimate(ex, "--layer-order", "fc1,fc2,fc3"), r"\bbn1\b", r"\bbn2\b")


def test_a_batchnorm_after_an_activation_is_refused_in_every_format_and_the_advice_leads_somewhere(tmp_path):
    """Linear, ReLU, BatchNorm1d, Linear: the BatchNorm does not fold into the Linear layer before it, and a
    state dict cannot show that an activation sits in between; an ONNX graph can. Whatever the tool does,
    it must not fold it silently, and a refusal must not send the user to a format that is refused too."""
    case = Case("bn_after_relu", lambda: nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.BatchNorm1d(64),
                                                       nn.Linear(64, 10)))
    state_dict = assert_refused(estimate(export(case, tmp_path / "st")), r"\b2\b", "BatchNorm")
    as_onnx = estimate(export(dataclasses.replace(case, export="onnx"), tmp_path / "onnx"))
    if as_onnx.exit_code != 0:
        assert_refused(as_onnx, "BatchNormalization")
        assert "onnx" not in state_dict.lower(), (
            f"the state dict's refusal recommends ONNX, which is refused too:\n{state_dict}\n{as_onnx.output}")
