"""Loading and validating sweep specs; the content hash."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import SpecError
from pipeline.spec import Spec, load_spec


def _error(raw) -> str:
    with pytest.raises(SpecError) as info:
        Spec.from_dict(raw)
    return str(info.value)


# ---------------------------------------------------------------- loading


def test_from_dict_fills_defaults_and_sorts_axes():
    spec = Spec.from_dict({"grid": {"L": [4, 2], "m": 16, "ratio": [0.3, 0.1], "seeds": 3}})
    g = spec.grid
    assert g.L == (2, 4) and g.m == (16,) and g.ratio == (0.1, 0.3)
    assert g.layer == (1, 2, 3, 4)  # 'all' runs to the largest L
    assert g.seeds == (0, 1, 2)
    assert spec.noise.distribution == "gaussian" and spec.noise.norm == "frobenius"
    assert spec.network.init == "he" and spec.network.bias_std == 0.0
    # cells with layer > L do not exist: L=2 has 2 layers, L=4 has 4
    from pipeline.plan import n_cells

    assert n_cells(spec) == (2 + 4) * 1 * 2 * 3 * spec.noise.draws


def test_explicit_layers_and_seed_list(tiny_spec):
    spec = tiny_spec(grid={"L": [2, 5], "layer": [5, 1], "seeds": [3, 10]})
    assert spec.grid.layer == (1, 5) and spec.grid.seeds == (3, 10)
    from pipeline.plan import n_cells

    assert n_cells(spec) == (1 + 2) * 1 * 1 * 2 * spec.noise.draws


def test_load_spec_reads_yaml_and_names_from_file(tmp_path, tiny_raw):
    path = tmp_path / "mysweep.yaml"
    path.write_text(yaml.safe_dump(tiny_raw()))
    spec = load_spec(path)
    assert spec.name == "mysweep"
    assert spec.source == str(path)
    assert spec == Spec.from_dict(tiny_raw(name="mysweep"), source=str(path))
    assert spec.hash == Spec.from_dict(tiny_raw()).hash


def test_load_spec_resolves_files_relative_to_the_spec(tmp_path, tiny_raw):
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "x.npy", np.ones(6))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_raw(network={"input": "data/x.npy"})))
    spec = load_spec(path)
    assert spec.network.input == str((tmp_path / "data" / "x.npy").resolve())


def test_shipped_sweeps_load(tmp_path):
    """Every shipped spec loads; sweeps/digits.yaml once examples/digits/train.py has written its zoo
    (here a quick one, into a copy of the repository's layout), and before that it names the missing file."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from pipeline.plan import n_cells

    root = Path(__file__).parent.parent
    sweeps = sorted((root / "sweeps").glob("*.yaml"))
    assert sweeps
    for path in sweeps:
        if path.name != "digits.yaml":
            assert n_cells(load_spec(path)) > 0
    (tmp_path / "sweeps").mkdir()
    shutil.copy(root / "sweeps" / "digits.yaml", tmp_path / "sweeps")
    with pytest.raises(SpecError, match=r"L3_m32_seed0.safetensors.*grid cell L=3, m=32, seed=0"):
        load_spec(tmp_path / "sweeps" / "digits.yaml")
    subprocess.run([sys.executable, str(root / "examples" / "digits" / "train.py"), "--out",
                    str(tmp_path / "examples" / "digits"), "--max-iter", "3"], check=True, capture_output=True)
    spec = load_spec(tmp_path / "sweeps" / "digits.yaml")
    assert spec.network.n_inputs == 360 and spec.network.labels and len(spec.network.files) == 14
    assert n_cells(spec) == 360 * 32 * 5 * 3 * 2 * (3 + 4)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("changes, field, value", [
    ({"foo": 1}, "foo", "foo"),
    ({"grid": {"width": 3}}, "grid.width", "width"),
    ({"network": {"depth": 3}}, "network.depth", "depth"),
    ({"noise": {"sigma": 1}}, "noise.sigma", "sigma"),
    ({"execution": {"workers": 2}}, "execution.workers", "workers"),
])
def test_unknown_key(tiny_raw, changes, field, value):
    msg = _error(tiny_raw(**changes))
    assert "unknown key" in msg and field in msg and value in msg


@pytest.mark.parametrize("changes, field, value", [
    ({"grid": {"m": [-5]}}, "grid.m", "-5"),
    ({"grid": {"m": [0]}}, "grid.m", "0"),
    ({"grid": {"L": [2, -1]}}, "grid.L", "-1"),
    ({"grid": {"L": [2.5]}}, "grid.L", "2.5"),
    ({"grid": {"L": [True]}}, "grid.L", "True"),
    ({"grid": {"ratio": [0]}}, "grid.ratio", "0"),
    ({"grid": {"ratio": [0.1, -0.2]}}, "grid.ratio", "-0.2"),
    ({"grid": {"ratio": [math.nan]}}, "grid.ratio", "nan"),
    ({"grid": {"ratio": [math.inf]}}, "grid.ratio", "inf"),
    ({"grid": {"ratio": ["abc"]}}, "grid.ratio", "abc"),
    ({"grid": {"ratio": [0.1, 0.1]}}, "grid.ratio", "0.1"),
    ({"grid": {"ratio": []}}, "grid.ratio", "[]"),
    ({"grid": {"layer": [4]}}, "grid.layer", "4"),
    ({"grid": {"layer": "first"}}, "grid.layer", "first"),
    ({"grid": {"seeds": 0}}, "grid.seeds", "0"),
    ({"grid": {"seeds": [-1]}}, "grid.seeds", "-1"),
    ({"network": {"input_dim": -3}}, "network.input_dim", "-3"),
    ({"network": {"output_dim": 0}}, "network.output_dim", "0"),
    ({"network": {"bias_std": -1.0}}, "network.bias_std", "-1.0"),
    ({"network": {"weight_norm_bound": 0}}, "network.weight_norm_bound", "0"),
    ({"network": {"init": "kaiming"}}, "network.init", "kaiming"),
    ({"network": {"init": "missing.npz"}}, "network.init", "missing.npz"),
    ({"network": {"input": "missing.npy"}}, "network.input", "missing.npy"),
    ({"noise": {"distribution": "cauchy"}}, "noise.distribution", "cauchy"),
    ({"noise": {"norm": "nuclear"}}, "noise.norm", "nuclear"),
    ({"noise": {"draws": 0}}, "noise.draws", "0"),
    ({"execution": {"seeds_per_block": 0}}, "execution.seeds_per_block", "0"),
    ({"random_seed": -1}, "random_seed", "-1"),
    ({"name": "a b"}, "name", "a b"),
    ({"grid": 5}, "grid", "5"),
])
def test_invalid_value_names_field_and_value(tiny_raw, changes, field, value):
    msg = _error(tiny_raw(**changes))
    assert field in msg
    assert value in msg


def test_layer_beyond_every_L_but_within_one_is_fine(tiny_spec):
    assert tiny_spec(grid={"L": [2, 4], "layer": [3]}).grid.layer == (3,)
    msg = _error({"grid": {"L": [2, 4], "m": [4], "ratio": [0.1], "layer": [1, 5]}})
    assert "grid.layer" in msg and "5" in msg


def test_required_grid_keys():
    msg = _error({"grid": {"L": [2], "ratio": [0.1]}})
    assert "grid.m" in msg


def test_not_a_mapping():
    assert "spec" in _error([1, 2, 3])


def test_missing_spec_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match="nope.yaml"):
        load_spec(path)
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path)  # a directory is not a spec file


def test_malformed_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("grid: {L: [2, m: 4\n  ratio: : :\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert "broken.yaml" in str(info.value) and "YAML" in str(info.value)


def test_error_in_file_names_the_file(tmp_path, tiny_raw):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny_raw(grid={"m": [-5]})))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    msg = str(info.value)
    assert str(path) in msg and "grid.m" in msg and "-5" in msg


def _weights_npz(path, shapes, biases=False, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {f"W{j}": rng.standard_normal(s) for j, s in enumerate(shapes, 1)}
    if biases:
        arrays.update({f"b{j}": rng.standard_normal(s[0]) for j, s in enumerate(shapes, 1)})
    np.savez(path, **arrays)
    return path


def _file_raw(path, **grid):
    return {"network": {"init": str(path), "input_dim": 6, "output_dim": 3},
            "grid": {"L": [3], "m": [5], "ratio": [0.1], **grid}}


def test_npz_init_is_accepted_when_it_matches(tmp_path):
    path = _weights_npz(tmp_path / "w.npz", [(5, 6), (5, 5), (3, 5)])
    spec = Spec.from_dict(_file_raw(path))
    assert spec.network.init_is_file and spec.network.init == str(path.resolve())


def test_npz_whose_shapes_do_not_chain(tmp_path):
    path = _weights_npz(tmp_path / "w.npz", [(5, 6), (5, 4), (3, 5)])
    msg = _error(_file_raw(path))
    assert "network.init" in msg and "W2" in msg and "chain" in msg


def test_npz_garbage(tmp_path):
    path = tmp_path / "w.npz"
    path.write_bytes(b"not a zip file at all" * 10)
    msg = _error(_file_raw(path))
    assert "network.init" in msg and "not a readable .npz" in msg


def test_npz_missing_matrix(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, W1=np.ones((5, 6)), W3=np.ones((3, 5)))
    msg = _error(_file_raw(path))
    assert "network.init" in msg and "W3" in msg


@pytest.mark.parametrize("grid, network, field", [
    ({"L": [4]}, {}, "grid.L"),
    ({"m": [7]}, {}, "grid.m"),
    ({}, {"input_dim": 9}, "network.input_dim"),
    ({}, {"output_dim": 9}, "network.output_dim"),
])
def test_npz_must_match_the_grid(tmp_path, grid, network, field):
    path = _weights_npz(tmp_path / "w.npz", [(5, 6), (5, 5), (3, 5)])
    raw = _file_raw(path, **grid)
    raw["network"].update(network)
    msg = _error(raw)
    assert field in msg


def test_bias_std_with_weight_file_is_refused(tmp_path):
    """bias_std draws random biases for generated networks; with an .npz init the
    biases come from the file (b1..bL), so a bias_std > 0 would be silently ignored."""
    path = _weights_npz(tmp_path / "w.npz", [(5, 6), (5, 5), (3, 5)])
    raw = _file_raw(path)
    raw["network"]["bias_std"] = 0.5
    msg = _error(raw)
    assert "network.bias_std" in msg and "0.5" in msg


# ---------------------------------------------------------------- hash


def test_hash_ignores_name_description_and_execution(tiny_spec, tiny_raw):
    spec = tiny_spec()
    assert len(spec.hash) == 64
    assert tiny_spec(name="other", description="words").hash == spec.hash
    assert tiny_spec(execution={"seeds_per_block": 1}).hash == spec.hash
    assert spec.with_execution(seeds_per_block=7).hash == spec.hash
    assert spec.with_execution(seeds_per_block=7).execution.seeds_per_block == 7
    assert Spec.from_dict(tiny_raw(), source="elsewhere.yaml").hash == spec.hash


@pytest.mark.parametrize("changes", [
    {"grid": {"ratio": [0.2]}},
    {"grid": {"ratio": [0.1, 0.2]}},
    {"grid": {"L": [4]}},
    {"grid": {"m": [6]}},
    {"grid": {"layer": [1, 2]}},
    {"grid": {"seeds": 3}},
    {"random_seed": 8},
    {"network": {"input_dim": 7}},
    {"network": {"init": "orthogonal"}},
    {"network": {"bias_std": 0.1}},
    {"network": {"weight_norm_bound": 2.0}},
    {"noise": {"distribution": "rademacher"}},
    {"noise": {"norm": "spectral"}},
    {"noise": {"draws": 5}},
])
def test_hash_changes_with_every_result_field(tiny_spec, changes):
    assert tiny_spec(**changes).hash != tiny_spec().hash


def test_hash_follows_file_content_not_path(tmp_path):
    a = _weights_npz(tmp_path / "a.npz", [(5, 6), (5, 5), (3, 5)], seed=1)
    b = _weights_npz(tmp_path / "b.npz", [(5, 6), (5, 5), (3, 5)], seed=1)
    c = _weights_npz(tmp_path / "c.npz", [(5, 6), (5, 5), (3, 5)], seed=2)
    ha, hb, hc = (Spec.from_dict(_file_raw(p)).hash for p in (a, b, c))
    assert ha == hb != hc
    # the hash is taken when the spec is loaded: a rewritten file gives a new hash when loaded again,
    # and the spec loaded before refuses to build a network from the new bytes
    spec = Spec.from_dict(_file_raw(a))
    _weights_npz(a, [(5, 6), (5, 5), (3, 5)], seed=3)
    assert spec.hash == ha != Spec.from_dict(_file_raw(a)).hash
    from pipeline.network import build_network

    with pytest.raises(SpecError, match="changed after the sweep started"):
        build_network(spec, 3, 5, 0)


def _shuffled(obj, rnd: random.Random):
    if isinstance(obj, dict):
        items = list(obj.items())
        rnd.shuffle(items)
        return {k: _shuffled(v, rnd) for k, v in items}
    if isinstance(obj, list):
        items = list(obj)
        rnd.shuffle(items)
        return items
    return obj


@settings(max_examples=40, deadline=None)
@given(
    L=st.lists(st.integers(1, 12), min_size=1, max_size=4, unique=True),
    m=st.lists(st.integers(1, 4096), min_size=1, max_size=3, unique=True),
    ratio=st.lists(st.floats(1e-6, 10.0), min_size=1, max_size=4, unique=True),
    seeds=st.integers(1, 50),
    random_seed=st.integers(0, 2**63),
    distribution=st.sampled_from(["gaussian", "rademacher", "sphere"]),
    norm=st.sampled_from(["frobenius", "spectral"]),
    shuffle_seed=st.integers(0, 2**32),
    seeds_per_block=st.integers(1, 64),
)
def test_hash_is_stable(L, m, ratio, seeds, random_seed, distribution, norm, shuffle_seed, seeds_per_block):
    raw = {
        "name": "a", "random_seed": random_seed,
        "network": {"input_dim": 5, "output_dim": 2, "init": "xavier"},
        "grid": {"L": L, "m": m, "ratio": ratio, "seeds": seeds},
        "noise": {"distribution": distribution, "norm": norm, "draws": 3},
    }
    spec = Spec.from_dict(raw)
    # same spec: key order, list order, name and execution settings do not matter
    other = _shuffled(raw, random.Random(shuffle_seed))
    other["name"] = "b"
    other["execution"] = {"seeds_per_block": seeds_per_block}
    again = Spec.from_dict(other)
    assert again.hash == spec.hash == Spec.from_dict(raw).hash
    assert again.grid == spec.grid
    # a different ratio list is a different sweep
    changed = dict(raw, grid=dict(raw["grid"], ratio=[*ratio, max(ratio) * 2]))
    assert Spec.from_dict(changed).hash != spec.hash


@pytest.mark.parametrize("array", [np.ones((3, 3)), np.ones(5), np.array([1.0, np.nan, 0, 0]),
                                   np.array(["a", "b", "c", "d"])])
def test_input_file_must_be_a_finite_vector_of_input_dim(tmp_path, array):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(SpecError, match="network.input"):
        Spec.from_dict({"network": {"input_dim": 4, "input": "x.npy"},
                        "grid": {"L": [2], "m": [4], "ratio": [0.1]}}, base_dir=tmp_path)


# ---------------------------------------------------------------- YAML pitfalls, names, sizes


def _load_text(tmp_path, text: str):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return load_spec(path)


def test_exponent_numbers_are_numbers(tmp_path):
    spec = _load_text(tmp_path, "grid: {L: [2], m: [4], ratio: [1e-3, 2E-1, 1.5e-2]}\n")
    assert spec.grid.ratio == (0.001, 0.015, 0.2)


def test_duplicate_key_is_an_error(tmp_path):
    with pytest.raises(SpecError) as info:
        _load_text(tmp_path, "grid: {L: [2], m: [4], ratio: [0.1]}\nrandom_seed: 1\nrandom_seed: 2\n")
    assert "found the key 'random_seed' a second time (first at line 2)" in str(info.value)


@pytest.mark.parametrize("name", ["a\tb", "a\x00b", "x" * 101, ".hidden", "a b", "a/b", "é"])
def test_names_follow_the_rule(tiny_raw, name):
    msg = _error(tiny_raw(name=name))
    assert "name:" in msg and "letters, digits" in msg and len(msg) < 400


def test_a_good_name(tiny_spec):
    assert tiny_spec(name="run-2.v1_x").name == "run-2.v1_x"


def test_ratios_that_cannot_be_told_apart_are_refused(tiny_raw):
    msg = _error(tiny_raw(grid={"ratio": [0.1, np.nextafter(0.1, 1)]}))
    assert "grid.ratio" in msg and "differ by more than 1e-09" in msg and "--sel" in msg


@pytest.mark.parametrize("a, b", [(1e-10, 1.5e-10), (1e-10, 1e-10 * (1 + 3e-9)), (1.0, 1.0 + 3e-9),
                                  (1e3, 1e3 * (1 + 3e-9))])
def test_distinct_ratios_are_told_apart_relative_to_their_size(tiny_raw, a, b):
    """Two ratios 5e-11 apart at 1e-10 are 50% apart: distinct, though an absolute 1e-9 rule would merge them."""
    spec = Spec.from_dict(tiny_raw(grid={"ratio": [b, a]}))
    assert spec.grid.ratio == (a, b)


@pytest.mark.parametrize("a, b", [(1.0, 1.0 + 1e-12), (1e-10, 1e-10 * (1 + 1e-10)), (1e3, 1e3 + 1e-7)])
def test_ratios_within_a_relative_1e_9_are_refused(tiny_raw, a, b):
    """1e3 and 1e3 + 1e-7 differ by 1e-10 relative: refused, though an absolute 1e-9 rule would keep both."""
    msg = _error(tiny_raw(grid={"ratio": [a, b]}))
    assert "grid.ratio" in msg and "differ by more than 1e-09 relative" in msg and repr(a) in msg


def test_ratio_below_the_tested_range_is_refused_with_the_reason(tiny_raw):
    msg = _error(tiny_raw(grid={"ratio": [1e-14, 0.1]}))
    assert "grid.ratio: 1e-14 is not allowed" in msg and "ratios >= 1e-10, the smallest ratio whose accuracy" in msg


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_min_ratio_is_resolved(precision):
    """At MIN_RATIO the measured change, divided by r, is the small-r limit to 1e-4 (L = 16, m = 256)."""
    from pipeline.measure import measure_block
    from pipeline.spec import MIN_RATIO

    spec = Spec.from_dict({"network": {"input_dim": 64}, "grid": {"L": [16], "m": [256],
                           "ratio": [MIN_RATIO, 1e-6], "seeds": 2}, "noise": {"draws": 8},
                           "compute": {"precision": precision}})
    d = measure_block(spec, 16, 256, (0, 1)).delta_norm
    scaled = d[0] / MIN_RATIO, d[1] / 1e-6
    assert np.nanmax(np.abs(scaled[0] / scaled[1] - 1)) < 1e-4


def test_alias_bomb_fails_fast_with_a_short_message(tmp_path):
    # nine levels of nine aliases: 9**9 (387 million) strings once expanded, in about 400 bytes
    bomb = "description:\n  - &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"  - &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    import time

    t0 = time.monotonic()
    with pytest.raises(SpecError) as info:
        _load_text(tmp_path, bomb + "grid: {L: [2], m: [4], ratio: [0.1]}\n")
    assert time.monotonic() - t0 < 5
    assert len(str(info.value)) < 500 and "description: [[" in str(info.value)


@pytest.mark.parametrize("changes, needle", [
    ({"grid": {"seeds": 10**9}}, "the number of blocks"),
    ({"noise": {"draws": 10**9}}, "the estimated peak memory of one block"),
    ({"grid": {"m": [200000]}}, "the estimated peak memory of one block"),
    ({"grid": {"seeds": 10**6}, "noise": {"draws": 10**5}}, "the store's uncompressed size"),
])
def test_grids_beyond_the_limits_are_refused_before_anything_is_built(tiny_raw, changes, needle):
    import time

    t0 = time.monotonic()
    msg = _error(tiny_raw(**changes))
    assert time.monotonic() - t0 < 5
    assert "this sweep is too large" in msg and needle in msg and "NNSWEEP_MAX_" in msg


def test_limits_can_be_raised(tiny_raw, monkeypatch):
    raw = tiny_raw(grid={"seeds": 40}, execution={"seeds_per_block": 1})
    monkeypatch.setenv("NNSWEEP_MAX_BLOCKS", "39")
    assert "above the limit of 39" in _error(raw)
    monkeypatch.setenv("NNSWEEP_MAX_BLOCKS", "40")
    assert len(Spec.from_dict(raw).grid.seeds) == 40
    monkeypatch.setenv("NNSWEEP_MAX_STORE_BYTES", "lots")
    assert "NNSWEEP_MAX_STORE_BYTES='lots' is not allowed" in _error(raw)
