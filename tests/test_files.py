"""Network, input and label files: formats, strict validation, templates, and one version per store."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from pipeline import plan, store
from pipeline.errors import SpecError
from pipeline.files import parse_network
from pipeline.measure import measure_block
from pipeline.network import build_network
from pipeline.spec import Spec

from pipeline_helpers import read_arrays

SHAPES = [(6, 5), (6, 6), (3, 6)]


def weights(seed=0, shapes=SHAPES, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes], [rng.standard_normal(s[0]).astype(dtype)
                                                                     for s in shapes]


def torch_state_dict(ws, bs, prefix=""):
    """What nn.Sequential(Linear, ReLU, Linear, ReLU, Linear).state_dict() names its tensors."""
    out = {}
    for j, (w, b) in enumerate(zip(ws, bs)):
        out[f"{prefix}{2 * j}.weight"], out[f"{prefix}{2 * j}.bias"] = w, b
    return out


def raw(init, **network):
    return {"network": {"init": str(init), **network}, "grid": {"ratio": [0.1]}, "noise": {"draws": 3}}


@pytest.mark.parametrize("prefix", ["", "net.", "model.layers."])
def test_pytorch_state_dict_in_safetensors(tmp_path, prefix):
    """Linear layers in order are W1..WL, whatever the Sequential's name; L, m, d, k come from the file."""
    ws, bs = weights()
    save_file(torch_state_dict(ws, bs, prefix), str(tmp_path / "m.safetensors"))
    spec = Spec.from_dict(raw(tmp_path / "m.safetensors"))
    assert (spec.grid.L, spec.grid.m, spec.grid.seeds) == ((3,), (6,), (0,))
    assert (spec.network.input_dim, spec.network.output_dim) == (5, 3)
    net = build_network(spec, 3, 6, 0)
    for j in range(3):
        np.testing.assert_array_equal(net.weights[j], ws[j].astype(np.float64))
        np.testing.assert_array_equal(net.biases[j], bs[j].astype(np.float64))


def test_layer_order_is_numeric_not_alphabetic(tmp_path):
    """Sequential indices 0, 2, ..., 10: '10.weight' sorts before '2.weight' as text."""
    shapes = [(4, 3)] + [(4, 4)] * 4 + [(2, 4)]
    ws, bs = weights(1, shapes)
    arrays = parse_network(_st_bytes(tmp_path, torch_state_dict(ws, bs)), "m.safetensors")
    assert [w.shape for w in arrays.weights] == shapes
    np.testing.assert_array_equal(arrays.weights[5], ws[5].astype(np.float64))


def _st_bytes(tmp_path, tensors):
    save_file(tensors, str(tmp_path / "x.safetensors"))
    return (tmp_path / "x.safetensors").read_bytes()


def test_w_names_in_safetensors_and_npz_give_the_same_network(tmp_path):
    ws, bs = weights(2, dtype=np.float64)
    named = {**{f"W{j}": w for j, w in enumerate(ws, 1)}, **{f"b{j}": b for j, b in enumerate(bs, 1)}}
    save_file(named, str(tmp_path / "a.safetensors"))
    np.savez(tmp_path / "a.npz", **named)
    a = Spec.from_dict(raw(tmp_path / "a.safetensors"))
    b = Spec.from_dict(raw(tmp_path / "a.npz"))
    np.testing.assert_array_equal(measure_block(a, 3, 6, (0,)).delta_norm, measure_block(b, 3, 6, (0,)).delta_norm)


@pytest.mark.parametrize("tensors, words", [
    ({"0.weight": np.ones((4, 3), np.float32), "1.weight": np.ones(4, np.float32)}, ["1.weight", "(4,)", "Linear"]),
    ({"0.weight": np.ones((4, 3), np.float32), "2.weight": np.ones((2, 5), np.float32)}, ["chain"]),
    ({"0.weight": np.ones((4, 3), np.float32), "0.bias": np.ones(4, np.float32),
      "2.weight": np.ones((2, 4), np.float32)}, ["0.bias", "only 1 of its 2"]),
    ({"0.weight": np.ones((4, 3), np.float32), "step": np.ones(1, np.float32)}, ["step"]),
    ({"2.bias": np.ones(4, np.float32)}, ["2.bias", "no 2.weight"]),
    ({"0.weight": np.full((4, 3), np.inf, np.float32)}, ["0.weight", "non-finite"]),
    ({"0.weight": np.ones((4, 3), np.int8) * 0}, None),  # integer weights are numbers: accepted
])
def test_bad_safetensors_are_refused_with_the_key(tmp_path, tensors, words):
    data = _st_bytes(tmp_path, tensors)
    if words is None:
        assert parse_network(data, "x.safetensors").depth == 1
        return
    with pytest.raises(SpecError) as info:
        parse_network(data, "x.safetensors")
    msg = str(info.value)
    assert msg.startswith("network.init: x.safetensors")
    for w in words:
        assert w in msg, (w, msg)


def test_truncated_safetensors(tmp_path):
    data = _st_bytes(tmp_path, {"0.weight": np.ones((4, 3), np.float32)})
    with pytest.raises(SpecError, match="not a readable .safetensors"):
        parse_network(data[:-5], "x.safetensors")


# ---------------------------------------------------------------- templates: a zoo of trained networks


def write_zoo(root, Ls=(2, 3), ms=(4, 6), seeds=(0, 1)):
    for L in Ls:
        for m in ms:
            for seed in seeds:
                shapes = [(m, 5)] + [(m, m)] * (L - 2) + [(3, m)]
                ws, bs = weights(100 * L + 10 * m + seed, shapes)
                save_file(torch_state_dict(ws, bs), str(root / f"net_L{L}_m{m}_s{seed}.safetensors"))


def test_template_loads_each_cell_from_its_own_file(tmp_path):
    write_zoo(tmp_path)
    spec = Spec.from_dict({"network": {"init": str(tmp_path / "net_L{L}_m{m}_s{seed}.safetensors")},
                           "grid": {"L": [2, 3], "m": [4, 6], "ratio": [0.1], "seeds": 2}})
    assert spec.network.init_kind == "template" and not spec.network.one_network
    assert len(spec.network.files) == 8 and spec.network.input_dim == 5
    for L, m, seed in [(2, 4, 0), (3, 6, 1)]:
        net = build_network(spec, L, m, seed)
        arrays = parse_network((tmp_path / f"net_L{L}_m{m}_s{seed}.safetensors").read_bytes(), "x.safetensors")
        np.testing.assert_array_equal(net.weights[0], arrays.weights[0])
    # the hash follows the contents, not where the zoo lives
    other = tmp_path / "copy"
    other.mkdir()
    write_zoo(other)
    moved = Spec.from_dict({"network": {"init": str(other / "net_L{L}_m{m}_s{seed}.safetensors")},
                            "grid": {"L": [2, 3], "m": [4, 6], "ratio": [0.1], "seeds": 2}})
    assert moved.hash == spec.hash


@pytest.mark.parametrize("change, words", [
    (lambda root: (root / "net_L3_m6_s1.safetensors").unlink(), ["net_L3_m6_s1.safetensors", "L=3, m=6, seed=1"]),
    (lambda root: (root / "net_L3_m4_s0.safetensors").write_bytes((root / "net_L2_m4_s0.safetensors").read_bytes()),
     ["net_L3_m4_s0.safetensors", "L=3, m=4, seed=0", "2 layers"]),
    (lambda root: (root / "net_L2_m6_s0.safetensors").write_bytes((root / "net_L2_m4_s0.safetensors").read_bytes()),
     ["net_L2_m6_s0.safetensors", "m = 6", "[4]"]),
    (lambda root: (root / "net_L2_m4_s1.safetensors").write_bytes(b"junk"),
     ["net_L2_m4_s1.safetensors", "L=2, m=4, seed=1", "not a readable"]),
])
def test_template_errors_name_the_cell_and_the_file(tmp_path, change, words):
    write_zoo(tmp_path)
    change(tmp_path)
    with pytest.raises(SpecError) as info:
        Spec.from_dict({"network": {"init": str(tmp_path / "net_L{L}_m{m}_s{seed}.safetensors")},
                        "grid": {"L": [2, 3], "m": [4, 6], "ratio": [0.1], "seeds": 2}})
    msg = str(info.value)
    assert msg.startswith("network.init")
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("init, grid, words", [
    ("net_L{L}_m{m}.safetensors", {"seeds": 2}, ["grid.seeds", "{seed}"]),
    ("net_L{L}_m{m}_s{seed}_{width}.safetensors", {}, ["network.init", "placeholders"]),
    ("net_L{L:02d}_m{m}_s{seed}.safetensors", {}, ["network.init", "formats"]),
    ("net_L{L}_m{m}_s{seed}.pt", {}, ["network.init", ".safetensors"]),
])
def test_bad_templates(tmp_path, init, grid, words):
    write_zoo(tmp_path)
    with pytest.raises(SpecError) as info:
        Spec.from_dict({"network": {"init": str(tmp_path / init)},
                        "grid": {"L": [2], "m": [4], "ratio": [0.1], **grid}})
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_single_file_is_one_network(tmp_path):
    ws, bs = weights()
    save_file(torch_state_dict(ws, bs), str(tmp_path / "m.safetensors"))
    with pytest.raises(SpecError, match=r"grid.seeds: 4 is not allowed; expected 1 with a single network file"):
        Spec.from_dict({**raw(tmp_path / "m.safetensors"), "grid": {"ratio": [0.1], "seeds": 4}})
    for key, value, words in (("L", [2], "[3], the weight layers"), ("m", [4], "[6], the widest hidden layer")):
        with pytest.raises(SpecError) as info:
            Spec.from_dict({**raw(tmp_path / "m.safetensors"), "grid": {"ratio": [0.1], key: value}})
        assert f"grid.{key}: {value} is not allowed; expected {words}" in str(info.value)
    with pytest.raises(SpecError, match=r"network.input_dim: 7 is not allowed; expected 5"):
        Spec.from_dict(raw(tmp_path / "m.safetensors", input_dim=7))
    assert Spec.from_dict(raw(tmp_path / "m.safetensors")).network.one_network


# ---------------------------------------------------------------- one version of each file per store


def test_a_file_replaced_mid_run_cannot_enter_the_store(tmp_path):
    """Half the blocks are written, then a network file and the input file are replaced: the remaining
    blocks fail with a message saying the file changed, nothing of them is marked done, and what the
    store holds was computed entirely from the original files."""
    write_zoo(tmp_path, Ls=(2,), ms=(4,), seeds=(0, 1, 2, 3))
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.standard_normal((3, 5)))
    spec = Spec.from_dict({"network": {"init": str(tmp_path / "net_L{L}_m{m}_s{seed}.safetensors"),
                                       "input": str(tmp_path / "x.npy")},
                           "grid": {"L": [2], "m": [4], "ratio": [0.1], "seeds": 4}, "noise": {"draws": 3},
                           "execution": {"seeds_per_block": 1}})
    reference = {s: measure_block(spec, 2, 4, (s,)) for s in range(4)}
    path = str(tmp_path / "s.zarr")
    spec, _ = store.create_or_resume(spec, path)
    blocks = sorted(plan.all_blocks(spec), key=lambda k: k.seed_start)
    for key in blocks[:2]:
        store.write_block(path, key, measure_block(spec, key.L, key.m, key.seeds), 0.1)
    # another network takes seed 3's place, other inputs take x's
    (tmp_path / "net_L2_m4_s3.safetensors").write_bytes((tmp_path / "net_L2_m4_s0.safetensors").read_bytes())
    np.save(tmp_path / "x.npy", rng.standard_normal((3, 5)))
    from pipeline import files

    files.load_network.cache_clear(), files.load_inputs.cache_clear()  # a fresh worker process
    for key in blocks[2:]:
        with pytest.raises(SpecError, match="changed after the sweep started"):
            measure_block(spec, key.L, key.m, key.seeds)
    assert store.done_mask(path)[0, 0].tolist() == [True, True, False, False]
    got = read_arrays(path, ("delta_norm",))["delta_norm"]
    for s in (0, 1):
        np.testing.assert_array_equal(got[0, 0, :, :, s], reference[s].delta_norm[:, :, 0])
    assert np.isnan(got[0, 0, :, :, 2:]).all()


def test_workers_read_each_file_once_per_process(tmp_path, monkeypatch):
    write_zoo(tmp_path, Ls=(2,), ms=(4,), seeds=(0,))
    spec = Spec.from_dict({"network": {"init": str(tmp_path / "net_L2_m4_s0.safetensors")},
                           "grid": {"ratio": [0.1]}, "noise": {"draws": 2}})
    from pipeline import files

    files.load_network.cache_clear()
    reads = []
    real = files.read_verified
    monkeypatch.setattr(files, "read_verified", lambda p, d: reads.append(p) or real(p, d))
    for _ in range(3):
        build_network(spec, 2, 4, 0)
    assert len(reads) == 1
