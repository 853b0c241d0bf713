"""What one draw costs, modelled from the shapes alone: the full draw of one layer, and a cheap draw of the
control variate's first-order change (and of its prediction change) per input.

The control variate (:mod:`pipeline.control`) trades full draws against cheap ones, so it needs their
relative cost. A timing would make the number of cheap draws, and so the printed numbers, depend on the
machine and its load; this model depends on the spec alone. It counts what the kernel does per draw of
layer i, the way ``benchmarks/bench_inputs.py`` counts the limit of ``nnsweep estimate``:

- GEMM flops: eta H (q = min(n, n_{i-1}): eta formed, or Z R of the thin QR), every column (one per input
  and ratio) through the layers after i, and the first-order change J_i eta h of every input;
- normals: n_i q;
- elements: the columns' values at layer i and after (the activation's difference, the flips), which the
  limit leaves out but which take most of the kernel's time above it,

and a cheap draw's per-input work: r = min(k, n_i) normals, one chi-square and a few passes over r values
for the change; the product U S w (k r) and the crossing threshold (a few passes over k) for the
prediction change. The seconds per unit below were calibrated once, by
``python benchmarks/bench_cheap_cost.py`` on the development machine (docs/linear-answer.md gives the
run). They only set how many cheap draws are taken: any values keep the control-variate estimate
unbiased and its interval honest, and an error of a factor 2 in the ratio of the two costs moves the
count by a factor sqrt(2), which changes variance x time by a few percent (the optimum is flat).

>>> shapes = [(4, 3), (2, 4)]  # d = 3, m = 4, k = 2
>>> w = full_draw_work(shapes, 1, n=5, ratios=1)
>>> w.flops == 2 * 4 * 3 * 5 + 2 * 2 * 4 * 5 + 2 * 2 * 4 * 5, w.normals == 4 * 3, w.elements == 5 * (4 + 2)
(True, True, True)
"""

from __future__ import annotations

import dataclasses

# Seconds per unit of work on the development machine (2-core AMD EPYC, one BLAS thread, float64 kernel), from
# two runs of benchmarks/bench_cheap_cost.py, rounded to two digits.
GEMM_FLOP_SECONDS = 2.0e-11         # a flop of the kernel's GEMMs (50 GFlop/s)
NORMAL_SECONDS = 1.0e-8             # a standard normal of the kernel's noise (100 M/s)
ELEMENT_SECONDS = 6.4e-9            # a value of a column at or after the perturbed layer
CHEAP_RANK_SECONDS = 1.1e-8         # per input and cheap draw, per singular value of J_i: a normal and its passes
CHEAP_INPUT_SECONDS = 3.0e-8        # per input and cheap draw: the chi-square and the rest
CROSSING_PRODUCT_SECONDS = 3.0e-10  # per input, crossing draw and entry of U S (k r): the product U S w
CROSSING_CLASS_SECONDS = 1.0e-8     # per input, crossing draw and class: the crossing threshold's passes


@dataclasses.dataclass(frozen=True)
class Work:
    """The modelled work of one full draw of one layer (every ratio, every input)."""

    flops: float
    normals: float
    elements: float

    @property
    def seconds(self) -> float:
        return self.flops * GEMM_FLOP_SECONDS + self.normals * NORMAL_SECONDS + self.elements * ELEMENT_SECONDS


def full_draw_work(shapes, layer: int, n: int, ratios: int, linear: bool = True) -> Work:
    """One full draw of eta in layer ``layer`` (1-based) of a network of ``shapes`` ((n_out, n_in) per layer),
    with ``n`` inputs sharing it and ``ratios`` ratios; ``linear`` counts the first-order change J_i eta h."""
    n_out, n_in = shapes[layer - 1]
    k = shapes[-1][0]
    q = min(n, n_in)
    later = sum(2 * a * b for a, b in shapes[layer:])
    flops = 2 * n_out * q * n + later * ratios * n + (2 * k * n_out * n if linear else 0)
    elements = ratios * n * sum(a for a, _ in shapes[layer - 1:])
    return Work(float(flops), float(n_out * q), float(elements))


def cheap_draw_seconds(shapes, layer: int, n: int) -> tuple[float, float]:
    """The modelled seconds of one cheap draw of layer ``layer`` for all ``n`` inputs (each input's own draw,
    rotation-invariant noise): (the first-order change alone, what the prediction change adds)."""
    k, n_out = shapes[-1][0], shapes[layer - 1][0]
    r = min(k, n_out)
    change = n * (r * CHEAP_RANK_SECONDS + CHEAP_INPUT_SECONDS)
    crossing = n * (k * r * CROSSING_PRODUCT_SECONDS + k * CROSSING_CLASS_SECONDS)
    return change, crossing
