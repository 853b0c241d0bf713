"""Network construction (init schemes, norm bound, weight files) and the forward pass."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import SpecError
from pipeline.files import parse_network
from pipeline.network import (Network, build_network, layer_shapes, make_inputs, spectral_norm,
                              spectral_norm_estimate)
from pipeline.spec import Spec


def load_weight_file(path: str):
    arrays = parse_network(open(path, "rb").read(), path)
    return arrays.weights, arrays.biases


def _spec(init="he", d=256, k=10, bias_std=0.0, bound=None, **grid):
    return Spec.from_dict({
        "random_seed": 3,
        "network": {"input_dim": d, "output_dim": k, "init": init, "bias_std": bias_std,
                    "weight_norm_bound": bound},
        "grid": {"L": [3], "m": [512], "ratio": [0.1], **grid},
    })


def test_layer_shapes():
    assert layer_shapes(1, 7, 5, 2) == [(2, 5)]
    assert layer_shapes(3, 7, 5, 2) == [(7, 5), (7, 7), (2, 7)]


def test_shapes_and_depth(tiny_spec):
    spec = tiny_spec(grid={"L": [1, 4]})
    net = build_network(spec, 4, 5, 0)
    assert net.depth == 4
    assert [w.shape for w in net.weights] == [(5, 6), (5, 5), (5, 5), (3, 5)]
    assert net.biases is None
    assert [w.shape for w in build_network(spec, 1, 5, 0).weights] == [(3, 6)]


def test_he_variance():
    net = build_network(_spec("he", d=256), 3, 512, 0)
    for w in net.weights[:2]:  # 512 x 256 and 512 x 512: enough entries for a 2% check
        n_in = w.shape[1]
        assert abs(w.mean()) < 4 * np.sqrt(2 / n_in / w.size)
        assert w.var() == pytest.approx(2.0 / n_in, rel=0.02)


def test_xavier_variance():
    net = build_network(_spec("xavier", d=256), 3, 512, 0)
    for w in net.weights[:2]:
        n_out, n_in = w.shape
        assert w.var() == pytest.approx(2.0 / (n_in + n_out), rel=0.02)


@pytest.mark.parametrize("d", [16, 64])
def test_orthogonal_rows_or_columns_orthonormal_times_sqrt2(d):
    spec = _spec("orthogonal", d=d, k=10, m=[32])
    net = build_network(spec, 3, 32, 1)
    for w in net.weights:
        n_out, n_in = w.shape
        gram = w @ w.T if n_out <= n_in else w.T @ w
        np.testing.assert_allclose(gram, 2.0 * np.eye(min(n_out, n_in)), atol=1e-12)
    # it is a random orthogonal matrix, not a fixed one
    other = build_network(spec, 3, 32, 2)
    assert not np.allclose(net.weights[1], other.weights[1])


def test_networks_differ_by_seed_and_repeat_exactly(tiny_spec):
    spec = tiny_spec()
    a, b, c = build_network(spec, 3, 5, 0), build_network(spec, 3, 5, 0), build_network(spec, 3, 5, 1)
    for wa, wb, wc in zip(a.weights, b.weights, c.weights):
        np.testing.assert_array_equal(wa, wb)
        assert not np.allclose(wa, wc)


def test_biases(tiny_spec):
    net = build_network(tiny_spec(network={"bias_std": 0.5}), 3, 5, 0)
    assert [b.shape for b in net.biases] == [(5,), (5,), (3,)]
    assert all(np.all(b != 0) for b in net.biases)


@pytest.mark.parametrize("m, init", [(16, "he"), (200, "he"), (200, "orthogonal")])
def test_weight_norm_bound_gives_spectral_norm_M(m, init):
    spec = _spec(init, d=150, k=10, bound=2.5, m=[m])
    net = build_network(spec, 3, m, 0)
    for w in net.weights:
        assert np.linalg.norm(w, 2) == pytest.approx(2.5, rel=1e-9)


@pytest.mark.parametrize("make", [
    lambda rng: rng.standard_normal((200, 200)),
    lambda rng: rng.standard_normal((300, 150)),
    lambda rng: rng.standard_normal((128, 400)),
    lambda rng: np.linalg.qr(rng.standard_normal((128, 128)))[0] * 3.0,  # all singular values equal
    lambda rng: rng.standard_normal((256, 2)) @ rng.standard_normal((2, 256)),  # rank 2
    lambda rng: rng.standard_normal((256, 256)) + 5.0,  # one dominant singular value
])
def test_spectral_norm_matches_numpy_on_large_matrices(make):
    w = make(np.random.default_rng(0))
    assert min(w.shape) >= 128  # the Lanczos (svds) path
    assert spectral_norm(w) == pytest.approx(np.linalg.norm(w, 2), rel=1e-9)


@pytest.mark.parametrize("w", [
    np.zeros((200, 200)),  # e.g. a pruned or zero-initialised layer in a weight file
    np.outer(np.eye(200)[5], np.tile([1.0, -1.0], 100)),  # rows orthogonal to the all-ones vector
    np.outer(np.tile([1.0, -1.0], 64), np.ones(300)),  # wide: columns orthogonal to the all-ones vector
], ids=["zero", "rows-sum-to-zero", "columns-sum-to-zero"])
def test_spectral_norm_of_large_degenerate_matrices(w):
    assert min(w.shape) >= 128
    assert spectral_norm(w) == pytest.approx(np.linalg.norm(w, 2), rel=1e-9, abs=1e-12)


def test_spectral_norm_small():
    w = np.random.default_rng(1).standard_normal((7, 3))
    assert spectral_norm(w) == pytest.approx(np.linalg.svd(w, compute_uv=False)[0], rel=1e-12)
    assert spectral_norm_estimate(w) == spectral_norm(w)  # exact below 128 rows or columns


def test_forward_matches_manual_computation():
    rng = np.random.default_rng(5)
    ws = [rng.standard_normal(s) for s in [(4, 3), (4, 4), (2, 4)]]
    bs = [rng.standard_normal(s[0]) for s in [(4, 3), (4, 4), (2, 4)]]
    x = rng.standard_normal(3)
    for biases in (None, bs):
        net = Network(tuple(ws), None if biases is None else tuple(biases))
        fwd = net.forward(x)
        b = biases or [np.zeros(4), np.zeros(4), np.zeros(2)]
        z1 = ws[0] @ x + b[0]
        h1 = np.where(z1 > 0, z1, 0)
        z2 = ws[1] @ h1 + b[1]
        h2 = np.where(z2 > 0, z2, 0)
        z3 = ws[2] @ h2 + b[2]
        for got, want in zip(fwd.pre, (z1, z2, z3)):
            np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
        for got, want in zip(fwd.post, (x, h1, h2)):
            np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
        np.testing.assert_array_equal(fwd.output, fwd.pre[-1])
        # columns: the layer function takes a batch, with the bias broadcast
        cols = np.stack([h1, 2 * h1], axis=1)
        np.testing.assert_allclose(net.layer(2, cols)[:, 1], ws[1] @ (2 * h1) + b[1], rtol=1e-13)


def test_forward_does_not_alias_activations():
    rng = np.random.default_rng(6)
    net = Network((rng.standard_normal((4, 3)), rng.standard_normal((2, 4))), (np.ones(4), np.ones(2)))
    x = rng.standard_normal(3)
    x0 = x.copy()
    fwd = net.forward(x)
    np.testing.assert_array_equal(x, x0)
    assert np.any(fwd.pre[0] < 0)  # the ReLU did not clobber the stored pre-activation
    np.testing.assert_array_equal(fwd.post[1], np.maximum(fwd.pre[0], 0))


def test_npz_round_trip_with_biases(tmp_path):
    rng = np.random.default_rng(2)
    shapes = [(5, 6), (5, 5), (3, 5)]
    ws = {f"W{j}": rng.standard_normal(s) for j, s in enumerate(shapes, 1)}
    bs = {f"b{j}": rng.standard_normal(s[0]) for j, s in enumerate(shapes, 1)}
    path = tmp_path / "w.npz"
    np.savez(path, **ws, **bs)
    weights, biases = load_weight_file(str(path))
    assert len(weights) == 3
    for j in range(3):
        np.testing.assert_array_equal(weights[j], ws[f"W{j + 1}"])
        np.testing.assert_array_equal(biases[j], bs[f"b{j + 1}"])
    spec = Spec.from_dict({"network": {"init": str(path), "input_dim": 6, "output_dim": 3},
                           "grid": {"L": [3], "m": [5], "ratio": [0.1]}})
    net = build_network(spec, 3, 5, 0)
    for j in range(3):
        np.testing.assert_array_equal(net.weights[j], ws[f"W{j + 1}"])
        np.testing.assert_array_equal(net.biases[j], bs[f"b{j + 1}"])


def test_npz_without_biases_and_partial_biases(tmp_path):
    rng = np.random.default_rng(3)
    w1, w2 = rng.standard_normal((4, 2)), rng.standard_normal((1, 4)).astype(np.float32)
    np.savez(tmp_path / "a.npz", W1=w1, W2=w2)
    weights, biases = load_weight_file(str(tmp_path / "a.npz"))
    assert biases is None and weights[1].dtype == np.float64
    np.testing.assert_array_equal(weights[1], w2.astype(np.float64))
    np.savez(tmp_path / "b.npz", W1=w1, W2=w2, b2=np.ones(1))  # biases for some layers only: refused
    with pytest.raises(SpecError, match=r"b2.*only 1 of its 2 layers"):
        load_weight_file(str(tmp_path / "b.npz"))


def test_npz_norm_bound_rescales_file_weights(tmp_path):
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "w.npz", W1=rng.standard_normal((5, 6)), W2=rng.standard_normal((3, 5)))
    spec = Spec.from_dict({"network": {"init": str(tmp_path / "w.npz"), "input_dim": 6, "output_dim": 3,
                                       "weight_norm_bound": 0.5},
                           "grid": {"L": [2], "m": [5], "ratio": [0.1]}})
    for w in build_network(spec, 2, 5, 0).weights:
        assert np.linalg.norm(w, 2) == pytest.approx(0.5, rel=1e-9)


@pytest.mark.parametrize("arrays, words", [
    ({"W1": np.ones((5, 6)), "W2": np.ones((3, 4))}, ["W1", "W2", "chain"]),
    ({"W1": np.ones((5, 6)), "W2": np.ones((3, 5)), "b1": np.ones(4), "b2": np.ones(3)}, ["b1", "(4,)"]),
    ({"W1": np.ones((5, 6)), "W2": np.ones((3, 5)), "extra": np.ones(4)}, ["extra"]),
    ({"W1": np.ones((5, 6)), "W2": np.full((3, 5), np.inf)}, ["W2", "non-finite"]),
    ({"W1": np.ones((5, 6)), "W2": np.ones((3, 5)), "b1": np.full(5, np.nan), "b2": np.ones(3)}, ["b1", "non-finite"]),
    ({"W1": np.ones((5, 6)) + 1j, "W2": np.ones((3, 5))}, ["W1", "complex"]),
    ({"W1": np.array([["a"] * 6] * 5), "W2": np.ones((3, 5))}, ["W1", "dtype"]),
    ({"W1": np.ones(5)}, ["W1"]),
    ({"V1": np.ones((5, 6))}, ["V1"]),
])
def test_npz_bad_contents(tmp_path, arrays, words):
    path = tmp_path / "w.npz"
    np.savez(path, **arrays)
    with pytest.raises(SpecError) as info:
        load_weight_file(str(path))
    msg = str(info.value)
    assert "network.init" in msg and all(w in msg for w in words)


def test_npz_refuses_pickles(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, W1=np.array([{"a": 1}], dtype=object))
    with pytest.raises(SpecError, match="not a readable .npz"):
        load_weight_file(str(path))


def test_input_gaussian_and_from_file(tmp_path, tiny_spec):
    x = make_inputs(tiny_spec())
    assert x.shape == (1, 6)
    np.testing.assert_array_equal(x, make_inputs(tiny_spec(grid={"L": [5]})))  # one x* for the sweep
    assert not np.array_equal(x, make_inputs(tiny_spec(random_seed=8)))
    many = make_inputs(tiny_spec(network={"n_inputs": 4}))
    assert many.shape == (4, 6)
    np.testing.assert_array_equal(many[0], x[0])  # the first input does not depend on how many there are
    np.save(tmp_path / "x.npy", np.arange(1, 7))
    x = make_inputs(tiny_spec(network={"input": str(tmp_path / "x.npy")}))
    assert x.dtype == np.float64
    np.testing.assert_array_equal(x, np.arange(1.0, 7.0)[None])
    np.save(tmp_path / "y.npy", np.ones(5))
    with pytest.raises(SpecError, match="network.input"):
        make_inputs(tiny_spec(network={"input": str(tmp_path / "y.npy")}))


@pytest.mark.parametrize("shape", [(256, 256), (512, 384), (300, 700), (2048, 2048)])
def test_lanczos_estimate_is_a_slight_underestimate(shape):
    """The bound's spectral norms: never above ||W||_2 (but for float32 rounding), within 0.5% below."""
    from scipy.sparse.linalg import svds

    from pipeline.network import spectral_norm_estimate

    w = np.random.default_rng(sum(shape)).standard_normal(shape) * np.sqrt(2.0 / shape[1])
    exact = svds(w, k=1, tol=1e-12, return_singular_vectors=False)[0] if shape[0] > 1000 \
        else np.linalg.norm(w, 2)
    est = spectral_norm_estimate(w)
    assert exact * (1 - 5e-3) <= est <= exact * (1 + 1e-5)


def test_lanczos_estimate_is_exact_for_low_rank_matrices():
    """Trained weights are often near low rank: with rank < steps the Krylov space is invariant."""
    from pipeline.network import spectral_norm_estimate

    rng = np.random.default_rng(3)
    w = rng.standard_normal((400, 5)) @ rng.standard_normal((5, 300))
    assert spectral_norm_estimate(w) == pytest.approx(np.linalg.norm(w, 2), rel=1e-5)


def test_float32_normals_have_the_normal_law():
    """Box-Muller float32 normals: KS against N(0, 1), moments, independent halves, odd sizes."""
    from scipy import stats

    from pipeline.network import standard_normal32

    z = standard_normal32(np.random.default_rng(1), (1001, 999))
    assert z.dtype == np.float32 and z.shape == (1001, 999)
    flat = z.ravel().astype(np.float64)
    assert stats.kstest(flat, "norm").pvalue > 1e-3
    assert abs(flat.mean()) < 5 / np.sqrt(flat.size) and abs(flat.var() - 1) < 5 * np.sqrt(2 / flat.size)
    assert abs(stats.kurtosis(flat)) < 5 * np.sqrt(24 / flat.size)
    half = flat.size // 2  # the cosine and sine halves of each pair are independent
    assert abs(np.corrcoef(flat[:half], flat[half:2 * half])[0, 1]) < 5 / np.sqrt(half)
    assert abs(np.corrcoef(flat[:half] ** 2, flat[half:2 * half] ** 2)[0, 1]) < 5 / np.sqrt(half)
    assert np.abs(flat).max() <= np.sqrt(-2 * np.log(2.0**-24)) + 1e-6
    # the same stream gives the same numbers
    a, b = (standard_normal32(np.random.default_rng(7), (3, 5)) for _ in range(2))
    np.testing.assert_array_equal(a, b)
