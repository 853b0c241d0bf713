"""The store's schema: its dimensions and variables, from the spec alone.

The contract that users, analysis and tests rely on (docs/store.md). It is kept
apart from :mod:`pipeline.store` so that sizing a sweep while its spec is
validated needs neither zarr nor xarray (``nnsweep estimate`` never opens a
store).

>>> VARIABLES["delta_norm"][0]
('L', 'm', 'ratio', 'layer', 'seed', 'input', 'draw')
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .spec import Spec

TOGETHER = 0  # the layer coordinate of the cells whose noise is in every layer at once
TOGETHER_NAME = "together"  # how specs, the CLI and reports write it


def layer_name(i: int) -> str:
    """A layer coordinate as specs and reports write it.

    >>> layer_name(0), layer_name(3)
    ('together', '3')
    """
    return TOGETHER_NAME if i == TOGETHER else str(i)


FULL = ("L", "m", "ratio", "layer", "seed", "input", "draw")
NET = ("L", "m", "seed")
CELL_INPUT = ("L", "m", "ratio", "layer", "seed", "input")

# name -> (dims, dtype, units, description)
VARIABLES = {
    "delta_norm": (FULL, "f8", "output units",
                   "||v - v*||_2, the change of the output when W_layer is perturbed (layer 0: every W_j at "
                   "once, each by its own eta_j, and every b_j with noise.biases)"),
    "linear_change": (FULL, "f8", "output units", "||J_i eta h_{i-1}||_2, the first-order change of the output "
                      "for the same eta as delta_norm (J_i = dv/dz_i): the control variate of nnsweep estimate "
                      "(docs/linear-answer.md); NaN for layer 0 (every layer at once)"),
    "linear_pred_changed": (FULL, "f8", "1",
                            "1 if the first-order output v + J_i eta h_{i-1} (the same eta) predicts another class "
                            "than v, else 0: the control variate of pred_changed; NaN for layer 0"),
    "hidden_flip_fraction": (FULL, "f8", "1",
                             "share of the network's hidden ReLU units whose on/off state differs from the "
                             "clean pass (units, not predictions; see pred_changed)"),
    "pred_changed": (FULL, "f8", "1",
                     "1 if the perturbed network's predicted class (argmax of the output) differs from the "
                     "clean one, else 0 (always 0 for k = 1)"),
    "accuracy": (("L", "m", "ratio", "layer", "seed", "draw"), "f8", "1",
                 "accuracy over all inputs of the perturbed network of this draw (one eta for every input); "
                 "NaN without network.labels"),
    "bound": (CELL_INPUT, "f8", "output units",
              "worst-case Lipschitz bound on ||v - v*||: ||eta||_2 prod_{j != i} ||W_j||_2 ||x*||; each "
              "||W_j||_2 from 20 Lanczos steps, which never overestimate it (but for float32 rounding) and fall short by under 0.5% for "
              "He-init matrices up to m = 2048 (tests/test_network.py), far less than the bound's looseness "
              "(bound / delta_norm, see nnsweep report), so it remains an upper bound in practice; layer 0: "
              "(prod_j (||W_j||_2 + ||eta_j||_2) - prod_j ||W_j||_2) ||x*|| (Neyshabur et al. 2018), or its "
              "recursion on the clean ||h_{j-1}|| with biases (docs/linear-answer.md)"),
    "linear_rms": (CELL_INPUT, "f8", "output units",
                   "first-order root mean square change of this network, exact for small r: r ||W_i||_F "
                   "||h_{i-1}|| ||J_i||_F / sqrt(n_i n_{i-1}), J_i = dv/dz_i (Frobenius scaling, any of the "
                   "three distributions); NaN for spectral scaling, where eta is divided by its own random "
                   "spectral norm and no closed form applies; layer 0: the root of the sum of every layer's "
                   "mean square (independent eta_j), plus r^2 ||b_j||^2 ||J_j||_F^2 / n_j per layer with "
                   "noise.biases"),
    "worst_linear": (CELL_INPUT, "f8", "output units",
                     "first-order change in the worst direction of the same size: r ||W_i|| ||h_{i-1}|| ||J_i||_2; "
                     "layer 0: the largest first-order change with ||eta_j|| <= r ||W_j|| for every j at once, "
                     "by ascent (docs/linear-answer.md)"),
    "worst_realised": (CELL_INPUT, "f8", "output units",
                       "||v - v*|| when that worst rank-one eta = r ||W_i|| u h_{i-1}^T / ||h_{i-1}|| (u the top "
                       "right singular vector of J_i) is applied through the nonlinear network; 0 where J_i = 0 "
                       "(no first-order direction exists); layer 0: the worst joint direction applied through "
                       "the nonlinear network"),
    "output_norm": (("L", "m", "seed", "input"), "f8", "output units", "||v||_2, the norm of the clean output"),
    "margin": (("L", "m", "seed", "input"), "f8", "output units",
               "clean top-1 output minus the runner-up (NaN for k = 1)"),
    "clean_accuracy": (NET, "f8", "1", "accuracy of the clean network over all inputs; NaN without labels"),
    "wall_time": (NET, "f8", "s", "wall time of the block that computed this seed"),
    "done": (NET, "i1", "1", "1 once the block holding this seed is written completely"),
}
RESULT_VARIABLES = tuple(v for v in VARIABLES if v not in ("wall_time", "done"))
# Variables that may be NaN by design (no labels, k = 1, spectral scaling) though never infinite;
# every other variable must be finite wherever "layer" <= "L", or write_block refuses the block.
NAN_ALLOWED = frozenset({"accuracy", "clean_accuracy", "margin", "linear_rms"})
# Variables that are NaN in the together cells (layer 0), where no single layer's first-order term exists,
# and finite in every other cell of an existing layer.
NAN_AT_TOGETHER = frozenset({"linear_change", "linear_pred_changed"})


def dim_lengths(spec: Spec) -> dict[str, int]:
    """The length of every dimension of the store: the one place that knows them.

    Works before the spec's seed list exists (``grid.seeds`` may still be a range).
    """
    g = spec.grid
    return {"L": len(g.L), "m": len(g.m), "ratio": len(g.ratio), "layer": len(g.layer), "seed": len(g.seeds),
            "input": spec.network.n_inputs, "draw": spec.noise.draws}


def chunk_lengths(spec: Spec) -> dict[str, int]:
    """The chunk length along every dimension: one L, one m, a block's seeds, everything else whole."""
    return {**dim_lengths(spec), "L": 1, "m": 1, "seed": spec.execution.seeds_per_block}
