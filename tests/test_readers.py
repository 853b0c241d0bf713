"""Networks as PyTorch users hold them: built in torch, exported, read back, and compared with the model.

Every case is a real ``nn.Module`` exported the way users export (safetensors.torch.save_file, torch.save,
torch.onnx.export); the read network's forward pass, computed here in numpy from the arrays with the
activation the model uses, must equal ``model.double()(x)`` to 1e-12. Refused cases must name the tensor,
module or node and say what to do.
"""

from __future__ import annotations

import copy
import io
import json
import struct
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import save_file
from scipy.special import erf
from torch import nn

from pipeline.errors import SpecError
from pipeline.files import parse_network

pytestmark = pytest.mark.filterwarnings(  # dynamo=False: the exporter that needs no onnxscript
    "ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning",
    "ignore:The feature will be removed:DeprecationWarning")

ACTS = {
    "relu": lambda z: np.maximum(z, 0), "tanh": np.tanh, "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "silu": lambda z: z / (1 + np.exp(-z)), "gelu": lambda z: 0.5 * z * (1 + erf(z / np.sqrt(2))),
    "gelu_tanh": lambda z: 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3))),
    "leaky_relu(0.2)": lambda z: np.where(z >= 0, z, 0.2 * z),
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def forward(arrays, x: np.ndarray, act) -> np.ndarray:
    """The read network's outputs for inputs x (n, d), in numpy: independent of the kernel."""
    acts = [act] * (arrays.depth - 1) if isinstance(act, str) else list(act)
    h = x.T
    for j, w in enumerate(arrays.weights):
        h = w @ h + (arrays.biases[j][:, None] if arrays.biases is not None else 0)
        if j < arrays.depth - 1:
            h = ACTS[acts[j]](h)
    return h.T


def assert_reads_as_it_runs(arrays, model: nn.Module, act, d: int, n: int = 32):
    """The arrays compute what the model (in float64, eval mode) computes, to 1e-12 relative."""
    ref = copy.deepcopy(model).double().eval()
    x = np.random.default_rng(1).standard_normal((n, d))
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    got = forward(arrays, x, act)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())


def mlp(widths, act=nn.ReLU, bias=True) -> nn.Sequential:
    layers = []
    for j, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b, bias=bias))
        if j < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).eval()


def safetensors_bytes(tmp_path, model_or_dict) -> bytes:
    sd = model_or_dict.state_dict() if isinstance(model_or_dict, nn.Module) else model_or_dict
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "m.safetensors"))
    return (tmp_path / "m.safetensors").read_bytes()


def pt_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def onnx_bytes(model: nn.Module, d: int, **kw) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(model.eval(), torch.randn(2, d), buf, dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, **kw)
    return buf.getvalue()


def refusal(data: bytes, path: str, *words, order=None) -> str:
    with pytest.raises(SpecError) as info:
        parse_network(data, path, order)
    msg = str(info.value)
    assert msg.startswith(f"network.init: {path}") and "\n" not in msg and "Traceback" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


# ---------------------------------------------------------------- state dicts in forward order

@pytest.mark.parametrize("widths", [(64, 256, 64, 10), (64, 100, 50, 10)])
def test_hidden_layers_of_different_widths(tmp_path, widths):
    model = mlp(widths)
    arrays = parse_network(safetensors_bytes(tmp_path, model), "m.safetensors")
    assert [w.shape for w in arrays.weights] == [(b, a) for a, b in zip(widths, widths[1:])]
    assert arrays.hidden_widths == widths[1:-1] and arrays.activations == (None, None)
    assert arrays.format == "safetensors"
    assert_reads_as_it_runs(arrays, model, "relu", widths[0])


class FC(nn.Module):
    def __init__(self, d=12, m=20, m2=14, k=5, act=torch.relu):
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.act = nn.Linear(d, m), nn.Linear(m, m2), nn.Linear(m2, k), act

    def forward(self, x):
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


def test_one_numbered_stem_fc1_fc2_fc3(tmp_path):
    model = FC().eval()
    arrays = parse_network(safetensors_bytes(tmp_path, model), "m.safetensors")
    assert [r.weight for r in arrays.layers] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert_reads_as_it_runs(arrays, model, "relu", 12)
    assert arrays.describe()[1] == "W2 <- fc2.weight (14 x 20, float32), b2 <- fc2.bias"


def test_stem_numbers_are_numbers_not_text(tmp_path):
    """fc10 comes after fc9 and fc2."""
    layers = {f"fc{j}": nn.Linear(6, 6) for j in (1, 2, 9, 10)}
    sd = {f"{name}.{p}": t for name, lin in layers.items() for p, t in lin.state_dict().items()}
    arrays = parse_network(safetensors_bytes(tmp_path, sd), "m.safetensors")
    assert [r.weight for r in arrays.layers] == ["fc1.weight", "fc2.weight", "fc9.weight", "fc10.weight"]


def test_sequential_with_flatten_and_dropout(tmp_path):
    """Flatten and Dropout hold no tensors: the Linear layers are 1, 4 and 7."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 24),
                          nn.ReLU(), nn.Dropout(0.1), nn.Linear(24, 4)).eval()
    arrays = parse_network(safetensors_bytes(tmp_path, model), "m.safetensors")
    assert [r.weight for r in arrays.layers] == ["1.weight", "4.weight", "7.weight"]
    assert_reads_as_it_runs(arrays, model, "relu", 16)
    onnx_arrays = parse_network(onnx_bytes(model, 16), "m.onnx")
    assert onnx_arrays.activations == ("relu", "relu")
    for a, b in zip(onnx_arrays.weights, arrays.weights):
        np.testing.assert_array_equal(a, b)


def test_nested_numeric_sequentials(tmp_path):
    """Sequential(Sequential(Linear, BatchNorm1d), ReLU, Sequential(Linear, ...)): 0.0, 0.1, 2.0, 3."""
    model = nn.Sequential(nn.Sequential(nn.Linear(6, 9), nn.BatchNorm1d(9)), nn.ReLU(),
                          nn.Sequential(nn.Linear(9, 7), nn.Tanh()), nn.Linear(7, 3))
    _train_bn(model, 6)
    arrays = parse_network(safetensors_bytes(tmp_path, model), "m.safetensors")
    assert [r.weight for r in arrays.layers] == ["0.0.weight", "2.0.weight", "3.weight"]
    assert_reads_as_it_runs(arrays, model, ["relu", "tanh"], 6)


# ---------------------------------------------------------------- names that do not give the order

class StemBodyTop(nn.Module):
    """All square but the last: alphabetical order (body, stem, top) chains too, and is wrong."""

    def __init__(self, d=16, k=4, nonlinearity=torch.tanh):
        super().__init__()
        self.stem, self.body, self.top, self.f = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, k), nonlinearity

    def forward(self, x):
        return self.top(self.f(self.body(self.f(self.stem(x)))))


def test_names_out_of_forward_order_are_refused_without_an_order(tmp_path):
    data = safetensors_bytes(tmp_path, StemBodyTop())
    refusal(data, "m.safetensors", "modules body, stem, top", "not in forward order",
            "network.layer_order: [first, second, ...]", "--layer-order first,second,...")


def test_names_out_of_forward_order_are_exact_with_the_order(tmp_path):
    model = StemBodyTop().eval()
    for data, path in ((safetensors_bytes(tmp_path, model), "m.safetensors"), (pt_bytes(model.state_dict()), "m.pt")):
        arrays = parse_network(data, path, ("stem", "body", "top"))
        assert [r.weight for r in arrays.layers] == ["stem.weight", "body.weight", "top.weight"]
        assert_reads_as_it_runs(arrays, model, "tanh", 16)


@pytest.mark.parametrize("order, words", [
    (("stem", "middle", "top"), ["middle", "not a module of the file"]),
    (("stem", "top"), ["leaves out body"]),
    (("stem", "body", "body", "top"), ["body twice"]),
    (("top", "stem", "body"), ["top.weight of shape (4, 16)", "stem.weight", "do not chain",
                               "in the layer order [top, stem, body]"]),
])
def test_an_order_that_does_not_fit_is_refused_naming_the_names(tmp_path, order, words):
    refusal(safetensors_bytes(tmp_path, StemBodyTop()), "m.safetensors", *words, order=order)


class TorchvisionStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(10, 24), nn.ReLU(), nn.Dropout(0.5), nn.Linear(24, 24), nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.classifier(self.features(x))


def test_torchvision_features_classifier(tmp_path):
    """Refused for the right reason (the order between features and classifier), exact with the parents
    as the order: a parent stands for its numbered children in numeric order."""
    model = TorchvisionStyle().eval()
    data = safetensors_bytes(tmp_path, model)
    msg = refusal(data, "m.safetensors", "classifier.0, classifier.2, features.0, features.3",
                  "the order between classifier and features is not in the file",
                  "classifier stands for its numbered children classifier.0, classifier.2")
    assert "do not chain" not in msg
    arrays = parse_network(data, "m.safetensors", ("features", "classifier"))
    assert [r.weight for r in arrays.layers] == ["features.0.weight", "features.3.weight", "classifier.0.weight",
                                                  "classifier.2.weight"]
    assert_reads_as_it_runs(arrays, model, "relu", 10)
    same = parse_network(data, "m.safetensors", ("features.0", "features.3", "classifier.0", "classifier.2"))
    np.testing.assert_array_equal(same.weights[2], arrays.weights[2])


def test_an_order_that_contradicts_sequential_indices_is_refused(tmp_path):
    data = safetensors_bytes(tmp_path, mlp((6, 6, 6, 2)))
    refusal(data, "m.safetensors", "0, 2, 4", "2, 0, 4", order=("2", "0", "4"))
    assert parse_network(data, "m.safetensors", ("0", "2", "4")).depth == 3


def test_a_prefix_with_unnumbered_children_is_refused(tmp_path):
    class Blocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.ModuleDict({"a": nn.Linear(4, 4), "b": nn.Linear(4, 4)})
            self.head = nn.Linear(4, 2)

    refusal(safetensors_bytes(tmp_path, Blocks()), "m.safetensors", "enc (enc.a, enc.b)", "not all numbered",
            order=("enc", "head"))


# ---------------------------------------------------------------- BatchNorm1d

def _train_bn(model: nn.Module, d: int, steps: int = 5) -> None:
    """A few training steps so that every BatchNorm has nontrivial running statistics and affine terms."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(steps):
        x = 3 * torch.randn(64, d) + 1
        loss = model(x).pow(2).mean()
        opt.zero_grad(), loss.backward(), opt.step()
    model.eval()


def test_batchnorm_after_linear_is_folded(tmp_path):
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 12, bias=False),
                          nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.2), nn.Linear(12, 3))
    _train_bn(model, 8)
    assert model[1].running_var.std() > 0.01 and model[4].running_mean.abs().max() > 0.01
    data = safetensors_bytes(tmp_path, model)
    arrays = parse_network(data, "m.safetensors")
    assert [r.folded is not None for r in arrays.layers] == [True, True, False]
    assert_reads_as_it_runs(arrays, model, "relu", 8)
    lines = arrays.describe()
    assert lines[0] == ("W1 <- 0.weight (16 x 8, float32), b1 <- 0.bias, BatchNorm1d 1 folded (eps 1e-05, "
                        "PyTorch's default: a state dict does not store eps)")
    assert "b2 is the fold's alone" in lines[1]
    # ONNX stores eps and exports the BatchNormalization node: folded the same way
    onnx_arrays = parse_network(onnx_bytes(model, 8), "m.onnx")
    assert onnx_arrays.describe()[0].endswith("BatchNormalization /1/BatchNormalization folded (eps 1e-05)")
    assert_reads_as_it_runs(onnx_arrays, model, "relu", 8)


def test_batchnorm_without_affine_terms_is_folded(tmp_path):
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6, affine=False), nn.ReLU(), nn.Linear(6, 2))
    _train_bn(model, 5)
    arrays = parse_network(safetensors_bytes(tmp_path, model), "m.safetensors")
    assert arrays.layers[0].folded.startswith("1 (eps 1e-05")
    assert_reads_as_it_runs(arrays, model, "relu", 5)


class FCBN(nn.Module):
    def __init__(self, widths=(8, 16, 12, 3)):
        super().__init__()
        d, m1, m2, k = widths
        self.fc1, self.bn1, self.fc2, self.bn2, self.fc3 = (nn.Linear(d, m1), nn.BatchNorm1d(m1), nn.Linear(m1, m2),
                                                            nn.BatchNorm1d(m2), nn.Linear(m2, k))

    def forward(self, x):
        return self.fc3(torch.relu(self.bn2(self.fc2(torch.relu(self.bn1(self.fc1(x)))))))


@pytest.mark.parametrize("widths", [(8, 16, 12, 3), (8, 16, 16, 3)])
def test_numbered_batchnorm_stem_needs_the_order(tmp_path, widths):
    """fc1, bn1, fc2, bn2, fc3: the names do not say whether bnJ comes before or after fcJ's activation
    (a state dict holds no activations); an order that lists bnJ right after fcJ says it comes before."""
    model = FCBN(widths)
    _train_bn(model, 8)
    data = safetensors_bytes(tmp_path, model)
    refusal(data, "m.safetensors", "fc1, bn1, fc2, bn2, fc3", "whether bn1 normalises the output of fc1 before "
            "its activation", "--layer-order first,second", "ONNX")
    arrays = parse_network(data, "m.safetensors", ("fc1", "bn1", "fc2", "bn2", "fc3"))
    assert [r.folded.split()[0] for r in arrays.layers[:2]] == ["bn1", "bn2"]
    assert_reads_as_it_runs(arrays, model, "relu", 8)


@pytest.mark.parametrize("model, words", [
    (nn.Sequential(nn.BatchNorm1d(6), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)),
     ["BatchNorm1d 0 before the first Linear layer", "normalise them"]),
    (nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)),
     ["BatchNorm1d 2 after the BatchNorm1d 1, not a Linear layer"]),
    (nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.BatchNorm1d(4), nn.Linear(4, 2)),
     ["BatchNorm1d 2 does not directly follow the Linear layer 0", "activation", "fold it into the next Linear"]),
    (nn.Sequential(nn.Sequential(nn.Linear(6, 4), nn.ReLU()), nn.BatchNorm1d(4), nn.Linear(4, 2)),
     ["BatchNorm1d 1 does not directly follow the Linear layer 0.0"]),
    (nn.Sequential(nn.Linear(6, 4), nn.LayerNorm(4), nn.ReLU(), nn.Linear(4, 2)), ["1.weight", "LayerNorm"]),
    (nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 2)),
     ["1.weight", "without running statistics"]),
    (nn.Sequential(nn.Linear(6, 4), nn.PReLU(), nn.Linear(4, 2)), ["1.weight", "PReLU"]),
])
def test_batchnorm_elsewhere_and_other_layers_are_refused_by_name(tmp_path, model, words):
    refusal(safetensors_bytes(tmp_path, model), "m.safetensors", *words)


def test_an_order_does_not_override_a_gap_before_a_batchnorm(tmp_path):
    data = safetensors_bytes(tmp_path, nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.BatchNorm1d(4), nn.Linear(4, 2)))
    refusal(data, "m.safetensors", "does not directly follow", order=("0", "2", "3"))


# ---------------------------------------------------------------- dtypes

@pytest.mark.parametrize("dtype, name", [(torch.float16, "float16"), (torch.bfloat16, "bfloat16"),
                                         (torch.float64, "float64")])
def test_half_precision_safetensors_and_pt(tmp_path, dtype, name):
    """Read exactly: the model in float64 with the half-precision values computes what the arrays do."""
    model = mlp((12, 20, 7)).to(dtype)
    for data, path in ((safetensors_bytes(tmp_path, model), "m.safetensors"), (pt_bytes(model.state_dict()), "m.pt")):
        arrays = parse_network(data, path)
        assert {r.dtype for r in arrays.layers} == {name}
        np.testing.assert_array_equal(arrays.weights[0], model[0].weight.double().detach().numpy())
        assert_reads_as_it_runs(arrays, model, "relu", 12)
        assert f"(20 x 12, {name})" in arrays.describe()[0]


def test_bfloat16_bits_are_read_exactly(tmp_path):
    """Every finite bfloat16 bit pattern from the file, against torch's own conversion."""
    bits = torch.arange(0, 2 ** 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    bits = bits[torch.isfinite(bits)]
    w = bits[: (bits.numel() // 97) * 97].reshape(-1, 97)
    arrays = parse_network(safetensors_bytes(tmp_path, {"W1": w}), "m.safetensors")
    np.testing.assert_array_equal(arrays.weights[0], w.double().numpy())


def test_unsupported_dtypes_are_refused_by_name(tmp_path):
    head = json.dumps({"0.weight": {"dtype": "F8_E4M3", "shape": [2, 2], "data_offsets": [0, 4]}}).encode()
    data = struct.pack("<Q", len(head)) + head + bytes(4)
    refusal(data, "m.safetensors", "0.weight", "F8_E4M3", "float32")
    sd = {"0.weight": torch.ones(2, 2, dtype=torch.complex64)}
    refusal(pt_bytes(sd), "m.pt", "0.weight", "complex64", "float32")
    refusal(safetensors_bytes(tmp_path, {"0.weight": torch.ones(2, 2, dtype=torch.bool)}), "m.safetensors",
            "0.weight", "BOOL")


# ---------------------------------------------------------------- torch.save files

def test_pt_state_dict_and_checkpoint(tmp_path):
    model = FC().eval()
    arrays = parse_network(pt_bytes(model.state_dict()), "m.pth")
    assert arrays.format == "pt"
    assert_reads_as_it_runs(arrays, model, "relu", 12)
    ckpt = {"epoch": 3, "model_state_dict": model.state_dict(), "optimizer_state_dict": {"lr": 0.1}}
    np.testing.assert_array_equal(parse_network(pt_bytes(ckpt), "m.pt").weights[2], arrays.weights[2])
    refusal(pt_bytes({"epoch": 3, "weights": [1, 2]}), "m.pt", "'epoch', 'weights'",
            "torch.save(model.state_dict(), 'model.pt')")


def test_pickled_whole_model_is_refused_saying_why(tmp_path):
    refusal(pt_bytes(mlp((4, 6, 2))), "m.pt", "pickled whole model", "torch.nn.modules.container.Sequential",
            "does not run code", "torch.save(model.state_dict(), 'model.pt')", "torch.onnx.export")


def test_pt_without_torch_says_how_to_convert(monkeypatch):
    data = pt_bytes(mlp((4, 6, 2)).state_dict())
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    refusal(data, "m.pt", "torch is not installed", "pip install torch", "save_file(", "weights_only=True")


def test_junk_pt_is_refused(tmp_path):
    refusal(b"not a torch file", "m.pt", "not a readable torch.save file")


# ---------------------------------------------------------------- ONNX

@pytest.mark.parametrize("act, name", [(nn.ReLU, "relu"), (lambda: nn.LeakyReLU(0.2), "leaky_relu(0.2)"),
                                       (nn.Tanh, "tanh"), (nn.Sigmoid, "sigmoid"), (nn.GELU, "gelu"),
                                       (lambda: nn.GELU("tanh"), "gelu_tanh"), (nn.SiLU, "silu")])
def test_onnx_mlp_gives_the_safetensors_arrays_and_its_activations(tmp_path, act, name):
    model = mlp((10, 24, 16, 3), act)
    arrays = parse_network(onnx_bytes(model, 10), "m.onnx")
    assert arrays.activations == (name, name) and arrays.format == "onnx"
    assert_reads_as_it_runs(arrays, model, name, 10)
    st = parse_network(safetensors_bytes(tmp_path, model), "m.safetensors")
    for a, b in zip(arrays.weights + arrays.biases, st.weights + st.biases):
        np.testing.assert_array_equal(a, b)
    assert arrays.describe()[0] == "W1 <- 0.weight (24 x 10, float32), b1 <- 0.bias"


@pytest.mark.parametrize("act, name", [(nn.GELU, "gelu"), (lambda: nn.GELU("tanh"), "gelu_tanh"),
                                       (nn.SiLU, "silu"), (lambda: nn.LeakyReLU(0.2), "leaky_relu(0.2)")])
def test_onnx_decomposed_activations_of_older_opsets(act, name):
    """Opset 17 has no Gelu: the exporter writes erf or tanh arithmetic, recognised as GELU."""
    model = mlp((6, 9, 4), act)
    arrays = parse_network(onnx_bytes(model, 6, opset_version=17), "m.onnx")
    assert arrays.activations == (name,)
    assert_reads_as_it_runs(arrays, model, name, 6)


def test_onnx_constants_shared_through_identity_nodes():
    """A fresh BatchNorm's weight equals its running_var (ones): the exporter shares them via Identity nodes."""
    model = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 2)).eval()
    data = onnx_bytes(model, 5)
    assert "Identity" in [n.op_type for n in onnx.load_from_string(data).graph.node]
    assert_reads_as_it_runs(parse_network(data, "m.onnx"), model, "relu", 5)


def test_onnx_external_data_is_refused(tmp_path):
    model = onnx.load_from_string(onnx_bytes(mlp((64, 64, 2)), 64))
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.data", size_threshold=0)
    refusal((tmp_path / "m.onnx").read_bytes(), "m.onnx", "0.weight", "external data file",
            "save_as_external_data=False")


def test_onnx_without_biases_is_matmul_transposed():
    model = mlp((6, 9, 4), nn.Tanh, bias=False)
    arrays = parse_network(onnx_bytes(model, 6), "m.onnx")
    assert arrays.biases is None and [r.transposed for r in arrays.layers] == [True, True]
    assert arrays.describe()[0].startswith("W1 <- ") and " transposed (9 x 6, float32), no bias" in arrays.describe()[0]
    assert_reads_as_it_runs(arrays, model, "tanh", 6)


def test_onnx_without_the_onnx_package_says_what_to_install(monkeypatch):
    data = onnx_bytes(mlp((4, 6, 2)), 4)
    monkeypatch.setitem(sys.modules, "onnx", None)
    refusal(data, "m.onnx", "needs the onnx package", "pip install onnx")


def _graph(nodes, inits, d=4, out="y", **inputs):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])
    y = helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", None])
    g = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(a.astype(np.float32), n)
                                               for n, a in inits.items()])
    return helper.make_model(g).SerializeToString()


def test_hand_written_matmul_add_and_gemm_attributes():
    """MatMul computes x @ B (W = B^T); Gemm's alpha, beta, transB; a Flatten(axis 1) no-op."""
    rng = np.random.default_rng(0)
    B1, c1, B2, c2 = (rng.standard_normal(s).astype(np.float32).astype(np.float64) for s in ((4, 5), 5, (5, 3), (1, 3)))
    nodes = [helper.make_node("MatMul", ["x", "B1"], ["h"], name="mm"),
             helper.make_node("Add", ["c1", "h"], ["z"], name="add"),
             helper.make_node("Flatten", ["z"], ["f0"], name="flat", axis=1),
             helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.array([-1, 5], np.int64))),
             helper.make_node("Reshape", ["f0", "s"], ["f"], name="noop"),
             helper.make_node("LeakyRelu", ["f"], ["a"], name="act", alpha=0.1),
             helper.make_node("Gemm", ["a", "B2", "c2"], ["y"], name="gemm", alpha=0.5, beta=2.0, transB=0)]
    arrays = parse_network(_graph(nodes, {"B1": B1, "c1": c1, "B2": B2, "c2": c2}), "m.onnx")
    np.testing.assert_array_equal(arrays.weights[0], B1.T)
    np.testing.assert_array_equal(arrays.weights[1], 0.5 * B2.T)
    np.testing.assert_array_equal(arrays.biases[1], 2.0 * c2[0])
    assert arrays.activations == ("leaky_relu(0.1)",)
    assert arrays.layers[1].weight == "B2 (times Gemm alpha 0.5)" and arrays.layers[0].bias == "c1"


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.fc3(h + torch.relu(self.fc2(h)))


def test_onnx_refusals_name_the_node(tmp_path):
    refusal(onnx_bytes(Residual(), 6), "m.onnx", "/Add", "(Add)", "residual or skip connection")
    refusal(onnx_bytes(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3), nn.Softmax(-1)), 6), "m.onnx",
            "Softmax", "read-out must be linear", "without its final activation")
    refusal(onnx_bytes(mlp((6, 4, 3)).append(nn.ReLU()), 6), "m.onnx", "/3/Relu (Relu) after the last linear layer",
            "read-out must be linear")
    refusal(onnx_bytes(nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 3)), 6), "m.onnx", "/1/Gemm",
            "no activation between")
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    buf = io.BytesIO()
    torch.onnx.export(cnn, torch.randn(1, 1, 6, 6), buf, dynamo=False)
    refusal(buf.getvalue(), "m.onnx", "rank 4", "flatten images")
    w = {"B": np.ones((4, 4)), "K": np.ones((1, 1, 1))}
    conv = [helper.make_node("Gemm", ["x", "B"], ["h"], name="fc"),
            helper.make_node("Conv", ["h", "K"], ["c"], name="conv"),
            helper.make_node("Gemm", ["c", "B"], ["y"], name="fc2")]
    refusal(_graph(conv, w), "m.onnx", "node conv (Conv)", "a convolution", "MLPs only")
    trans_a = [helper.make_node("Gemm", ["x", "B"], ["y"], name="g", transA=1)]
    refusal(_graph(trans_a, w), "m.onnx", "node g (Gemm) with transA = 1")
    weird = [helper.make_node("Gemm", ["x", "B"], ["h"], name="fc"),
             helper.make_node("Mul", ["h", "h"], ["s"], name="sq"),
             helper.make_node("Gemm", ["s", "B"], ["y"], name="fc2")]
    refusal(_graph(weird, w), "m.onnx", "node sq (Mul)", "none of the activations nnsweep supports")
    attention = [helper.make_node("MatMul", ["x", "x"], ["y"], name="qk")]
    refusal(_graph(attention, w), "m.onnx", "node qk (MatMul)", "two computed tensors")
    refusal(b"not onnx at all", "m.onnx", "not a readable ONNX model")
    two_out = helper.make_model(helper.make_graph(
        [helper.make_node("Gemm", ["x", "B"], ["y"], name="fc"), helper.make_node("ArgMax", ["y"], ["label"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("label", "y")],
        [numpy_helper.from_array(np.ones((4, 4), np.float32), "B")])).SerializeToString()
    refusal(two_out, "m.onnx", "2 outputs", "one output")
    shape = helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.array([2, -1], np.int64)))
    reshape = [helper.make_node("Gemm", ["x", "B"], ["h"], name="fc"), shape,
               helper.make_node("Reshape", ["h", "s"], ["r"], name="rs"), helper.make_node("Relu", ["r"], ["a"]),
               helper.make_node("Gemm", ["a", "B"], ["y"], name="fc2")]
    refusal(_graph(reshape, w), "m.onnx", "node rs (Reshape)", "a Reshape that changes the 2-D chain")
    refusal(onnx_bytes(mlp((6, 4, 2)), 6), "m.onnx", "gives its layer order", order=("0", "2"))
