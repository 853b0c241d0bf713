"""compute.precision and streamed weights: float32's rounding error, its statistics, and memory.

float32 runs weights, noise and the matrix products in float32 while norms
and sums stay float64. The kernel carries differences from the clean pass,
so the rounding error of ||v - v*|| is relative to the change itself and
does not grow as the ratio shrinks; these tests hold it to 1e-3 from
r = 1e-10 (the smallest ratio a spec allows) to r = 1.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from pipeline.measure import measure_block, measure_network
from pipeline.network import Network, build_network, make_inputs, stream, NOISE_STREAM
from pipeline.spec import Spec
from pipeline_helpers import make_spec

RATIOS = np.array([1e-10, 1e-6, 1e-3, 0.1, 1.0])


def he_arrays(rng, L, d, m, k, biases):
    widths = [d] + [m] * (L - 1) + [k]
    ws = tuple(rng.standard_normal((widths[j + 1], widths[j])) * np.sqrt(2 / widths[j]) for j in range(L))
    bs = tuple(0.1 * rng.standard_normal(widths[j + 1]) for j in range(L)) if biases else None
    return ws, bs


@pytest.mark.parametrize("model", [("gaussian", "frobenius"), ("rademacher", "spectral")])
@pytest.mark.parametrize("biases", [False, True])
def test_float32_rounding_error_is_relative_to_the_change(model, biases):
    """The same network (float64 arrays) and the same noise streams, in both precisions."""
    rng = np.random.default_rng(12)
    ws, bs = he_arrays(rng, 6, 48, 256, 10, biases)
    x = rng.standard_normal((3, 48))
    layers = tuple(range(1, 7))

    def run(dtype):
        return measure_network(Network(ws, bs, dtype), x, RATIOS, layers, 8, *model,
                               lambda i: np.random.default_rng([5, i]))

    r64, r32 = run(np.float64), run(np.float32)
    rel = np.abs(r32.delta_norm - r64.delta_norm) / r64.delta_norm  # (ratio, layer, input, draw)
    worst_by_ratio = rel.max(axis=(1, 2, 3))
    assert np.all(worst_by_ratio < 1e-3), dict(zip(RATIOS, worst_by_ratio))
    # it does not grow as r shrinks: r = 1e-10 is no worse than r = 0.1, bar float32's own scatter
    assert worst_by_ratio[0] < 10 * worst_by_ratio[3] + 1e-5
    assert np.all(r32.delta_norm > 0)
    for name in ("bound", "linear_rms", "worst_linear", "worst_realised"):
        a, b = getattr(r32, name), getattr(r64, name)
        np.testing.assert_allclose(a[np.isfinite(b)], b[np.isfinite(b)], rtol=1e-3)
    np.testing.assert_allclose(r32.output_norm, r64.output_norm, rtol=1e-5)
    # the same perturbed networks: predictions and flips agree but for rare ties at the float32 rounding
    assert np.mean(r32.pred_changed != r64.pred_changed) < 0.01
    assert np.mean(np.abs(r32.hidden_flip_fraction - r64.hidden_flip_fraction)) < 1e-3


def test_float32_statistics_agree_with_float64_within_monte_carlo_error():
    """Different networks (float32 weights are drawn in float32), the same cell means."""
    base = {"network": {"input_dim": 32, "output_dim": 10}, "random_seed": 3,
            "grid": {"L": [4], "m": [96], "ratio": [0.01, 0.3], "layer": "all", "seeds": 24},
            "noise": {"draws": 8}}
    means = {}
    for precision in ("float64", "float32"):
        spec = make_spec(base, compute={"precision": precision})
        block = measure_block(spec, 4, 96, spec.grid.seeds)
        rel = block.delta_norm / block.output_norm[None, None, :, :, None]  # (ratio, layer, seed, input, draw)
        means[precision] = rel.mean(axis=(3, 4))  # one sample per network
        means[precision + " flips"] = block.hidden_flip_fraction.mean(axis=(3, 4))
    for key in ("", " flips"):
        a, b = means["float64" + key], means["float32" + key]
        if key:  # nothing after the read-out can flip
            assert np.all(a[:, -1] == 0) and np.all(b[:, -1] == 0)
            a, b = a[:, :-1], b[:, :-1]
        sem = np.sqrt(a.var(axis=2, ddof=1) / a.shape[2] + b.var(axis=2, ddof=1) / b.shape[2])
        z = (a.mean(axis=2) - b.mean(axis=2)) / sem
        assert np.all(np.abs(z) < 4.5), (key, z)
    assert not np.allclose(means["float64"], means["float32"])  # they are other networks


def test_precision_is_part_of_the_spec_hash(tiny_spec):
    assert tiny_spec().compute.precision == "float64"
    assert tiny_spec(compute={"precision": "float32"}).hash != tiny_spec().hash
    assert tiny_spec(compute={"precision": "float64"}).hash == tiny_spec().hash


@pytest.mark.parametrize("keep", [True, False])
def test_streamed_weights_give_the_same_numbers_as_kept_ones(tiny_spec, keep):
    spec = tiny_spec(grid={"L": [4], "m": [12]}, network={"bias_std": 0.2, "weight_norm_bound": 1.5})
    x = make_inputs(spec)
    results = []
    for net in (build_network(spec, 4, 12, 1, keep=keep), Network(*_arrays(build_network(spec, 4, 12, 1)))):
        results.append(measure_network(net, x, np.array([0.1, 0.5]), (1, 2, 3, 4), 5, "gaussian", "frobenius",
                                       lambda i: stream(spec, NOISE_STREAM, 4, 12, 1, i)))
    for name in ("delta_norm", "hidden_flip_fraction", "bound", "worst_realised", "linear_rms"):
        np.testing.assert_array_equal(getattr(results[0], name), getattr(results[1], name))
    # each layer has its own stream: drawing layer 3 alone gives the same matrix
    alone = build_network(spec, 4, 12, 1, keep=False).params(3)[0]
    np.testing.assert_array_equal(alone, build_network(spec, 4, 12, 1).weights[2])
    assert abs(np.linalg.norm(alone, 2) - 1.5) < 1e-9  # the norm bound applied to a lone draw too


def _arrays(net: Network):
    return net.weights, net.biases


def test_a_streamed_network_holds_about_one_matrix_at_a_time():
    """Peak traced memory of measuring an L = 12, m = 512 network that does not keep its weights."""
    L, m = 12, 512
    spec = make_spec(network={"input_dim": m, "output_dim": 10},
                     grid={"L": [L], "m": [m], "ratio": [0.1], "layer": "all", "seeds": 1}, noise={"draws": 2})
    x = make_inputs(spec)
    matrix = m * m * 8
    peaks = {}
    for keep in (False, True):
        net = build_network(spec, L, m, 0, keep=keep)
        tracemalloc.start()
        measure_network(net, x, np.array(spec.grid.ratio), spec.grid.layer, 2, "gaussian", "frobenius",
                        lambda i: stream(spec, NOISE_STREAM, L, m, 0, i))
        peaks[keep] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[True] > (L - 1) * matrix  # the kept network holds every matrix ...
    assert peaks[False] < 3.5 * matrix, peaks[False] / matrix  # ... the streamed one a matrix or two


def test_float32_estimate_from_the_cli(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import main

    args = ["estimate", "--L", "3", "--m", "64", "--d", "16", "--k", "4", "--seeds", "6", "--draws", "8",
            "--ratio", "0.1", "--layer", "all", "--json"]
    import json

    out = {}
    for precision in ("float64", "float32"):
        res = CliRunner().invoke(main, args + ["--precision", precision])
        assert res.exit_code == 0, res.output
        out[precision] = json.loads(res.stdout)
    lo, hi = out["float64"]["ci95"]
    assert lo - (hi - lo) < out["float32"]["mean_rel_change"] < hi + (hi - lo)
    res = CliRunner().invoke(main, args + ["--precision", "float16"])
    assert res.exit_code == 2 and "--precision" in res.output


def test_a_bad_precision_names_the_field(tiny_raw):
    from pipeline.errors import SpecError

    with pytest.raises(SpecError, match=r"compute.precision: 'half' is not allowed; expected one of float64, float32"):
        Spec.from_dict(tiny_raw(compute={"precision": "half"}))
