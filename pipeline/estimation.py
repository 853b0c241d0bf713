"""Answer the question for one configuration: no store, no cluster.

Statistics are over networks: each network's mean over draws is one sample,
so the confidence interval reflects network-to-network variation.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from .analysis.theory import attenuation
from .measure import measure_block
from .spec import Spec


def summarise(delta: np.ndarray, output_norm: np.ndarray, bound: np.ndarray, ratio: float,
              depth_after: int | None) -> dict:
    """Summary of one (ratio, layer): delta (seed, draw), output_norm (seed,), bound (seed,)."""
    rel = delta / output_norm[:, None]
    per_net = rel.mean(axis=1)
    n = len(per_net)
    mean = float(per_net.mean())
    ci95 = None  # undefined for one network: JSON null, not NaN
    if n > 1 and per_net.std() > 0:
        lo, hi = stats.t.interval(0.95, n - 1, loc=mean, scale=stats.sem(per_net))
        ci95 = [float(lo), float(hi)]
    out = {
        "mean_abs_change": float(delta.mean()),
        "mean_rel_change": mean,
        "ci95": ci95,
        "median_rel_change": float(np.median(rel)),
        "rms_rel_change": float(np.sqrt(np.mean(rel**2))),
        "bound": float(bound.mean()),
        "theory_first_order": float(ratio),
        "n_networks": n,
        "n_draws": int(delta.shape[1]),
    }
    if depth_after is not None:
        out["theory_attenuation"] = float(attenuation(ratio, depth_after))
    return out


def estimate(spec: Spec) -> dict:
    """E||v - v*|| and E R for the single (L, m, ratio) of ``spec``, per layer and overall.

    Returns:
        The summary of every listed layer together, with ``by_layer`` holding
        one summary per layer when more than one layer is listed.
    """
    (L,), (m,), (ratio,) = spec.grid.L, spec.grid.m, spec.grid.ratio
    block = measure_block(spec, L, m, spec.grid.seeds)
    layers = spec.grid.layer
    by_layer = {
        str(i): summarise(block.delta_norm[0, c], block.output_norm, block.bound[0, c], ratio, L - i)
        for c, i in enumerate(layers)
    }
    # every layer together: one sample per network, averaged over layers and draws
    delta = block.delta_norm[0].transpose(1, 0, 2).reshape(len(spec.grid.seeds), -1)
    overall = summarise(delta, block.output_norm, block.bound[0].mean(axis=0), ratio,
                        L - layers[0] if len(layers) == 1 else None)
    if len(layers) > 1:
        overall["by_layer"] = by_layer
    return overall
