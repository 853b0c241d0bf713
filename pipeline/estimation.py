"""Answer the question for one configuration: no store, no cluster.

The statistical unit is what varies independently. With several networks
(random init, or one file per seed) it is the network: each network's mean
over inputs and draws is one sample, so the confidence interval reflects
network-to-network variation. With one network (a single file, or one seed)
it is the noise draw: each draw is one perturbed network applied to every
input, so its mean over the inputs is one sample.
"""

from __future__ import annotations

import numpy as np

from .jsonout import num
from .measure import BlockResult, measure_block
from .schema import TOGETHER, layer_name
from .spec import Spec


def t_interval(samples: np.ndarray) -> list[float] | None:
    """95% Student-t interval for the mean of independent samples, as a JSON list; None when undefined."""
    from .analysis.intervals import t_interval as interval

    ci = interval(samples)
    return None if ci is None else list(ci)


def summarise(block: BlockResult, ratio_index: list[int], layer_index: list[int], units: str) -> dict:
    """Statistics of the cells (ratio, layer) given, pooled; ``units`` is ``networks`` or ``draws``.

    Draws of different (ratio, layer) cells are independent samples of their
    own cell; pooling them treats every cell as equally likely.
    """
    def cells(a: np.ndarray) -> np.ndarray:  # (ratio, layer, seed, ...) -> (seed, ..., cells)
        sub = a[np.ix_(ratio_index, layer_index)].reshape(-1, *a.shape[2:])
        return np.moveaxis(sub, 0, -1)

    delta = cells(block.delta_norm)  # (seed, input, draw, cell)
    rel = delta / block.output_norm[:, :, None, None]
    per_draw = rel.mean(axis=1)  # (seed, draw, cell): one perturbed network each
    # one network: a draw is one sample, whatever the cells pooled (every ratio reuses the same draws)
    per_unit = per_draw.mean(axis=(1, 2)) if units == "networks" else per_draw.mean(axis=2).ravel()
    out = {
        "mean_abs_change": num(delta.mean()),
        "mean_rel_change": num(rel.mean()),
        "ci95": t_interval(per_unit),
        "ci95_over": units,
        "median_rel_change": num(np.median(rel)),
        "rms_rel_change": num(np.sqrt(np.mean(rel**2))),
        "bound": num(cells(block.bound).mean()),
        "pred_change_rate": num(cells(block.pred_changed).mean()),
        # the network's own first-order answer: the small-r prediction of rms_rel_change, and the worst direction
        "linear_rms_rel": num(np.sqrt(np.mean((cells(block.linear_rms) / block.output_norm[:, :, None]) ** 2))),
        "worst_linear_rel": num(np.mean(cells(block.worst_linear) / block.output_norm[:, :, None])),
        "worst_rel": num(np.mean(cells(block.worst_realised) / block.output_norm[:, :, None])),
    }
    accuracy = cells(block.accuracy)
    if np.all(np.isfinite(accuracy)):
        out["accuracy"] = num(accuracy.mean())
        out["accuracy_ci95"] = t_interval(accuracy.mean(axis=(1, 2)) if units == "networks"
                                          else accuracy.mean(axis=2).ravel())
        out["clean_accuracy"] = num(block.clean_accuracy.mean())
    return out


def per_draw(block: BlockResult, field: str, relative: bool = True) -> np.ndarray:
    """The mean over inputs of ``field`` (/ ||v|| if ``relative``) of the first network, (ratio, layer, draw):
    its draws' samples."""
    values = getattr(block, field)[:, :, 0]
    return (values / block.output_norm[0][None, None, :, None] if relative else values).mean(axis=2)


def _draw_samples(block: BlockResult) -> dict[str, np.ndarray]:
    """What :func:`pipeline.control.cv_summary` reads: the per-draw means of the first network."""
    return {"delta_norm": per_draw(block, "delta_norm"), "linear_change": per_draw(block, "linear_change"),
            "pred_changed": per_draw(block, "pred_changed", False),
            "linear_pred_changed": per_draw(block, "linear_pred_changed", False)}


def _cheap_draws(spec: Spec, block: BlockResult, L: int, m: int, units: str):
    """The cheap draws of the first-order change for the one network of ``block``, or why they do not apply."""
    from .control import cheap_draws_for

    if units == "networks":
        return "several networks: the interval is over networks, where no control variate applies"
    if len(spec.grid.seeds) != 1:
        return "one network measured as several seeds: the control variate takes one (--seeds 1)"
    if not np.all(np.isfinite(block.linear_change)):
        return "the first-order change was not computed"
    return cheap_draws_for(spec, L, m, spec.grid.seeds[0], block.delta_norm[:, :, 0], block.linear_change[:, :, 0],
                           block.output_norm[0], block.pred_changed[:, :, 0], block.linear_pred_changed[:, :, 0])


def estimate(spec: Spec) -> dict:
    """E||v - v*||, E R and the prediction-change rate for the single (L, m) of ``spec``.

    Returns:
        The summary of every listed ratio and layer together, with ``by_layer``
        (when several layers are listed) and ``by_ratio`` (when several ratios
        are) holding one summary each, keyed by layer ("together" for noise in
        every layer at once, which the pooled summary leaves out when single
        layers are listed too); ``by_ratio`` entries have their own
        ``by_layer``. Random-init networks also get ``theory_first_order`` (r)
        and ``theory_attenuation`` (the infinite-width arc-cosine prediction);
        a given network, or one with another activation, gets no random-network theory.
    """
    (L,), (m,) = spec.grid.L, spec.grid.m
    return estimate_from(spec, measure_block(spec, L, m, spec.grid.seeds))


def estimate_from(spec: Spec, block: BlockResult) -> dict:
    """:func:`estimate` of measurements already made: ``block`` holds every seed, ratio and layer of ``spec``.

    Also how the network file was read (``network``), for a given network.
    """
    (L,), (m,) = spec.grid.L, spec.grid.m
    one_network = spec.network.one_network or len(spec.grid.seeds) == 1
    units = "draws" if one_network else "networks"
    counts = {"n_networks": 1 if spec.network.one_network else len(spec.grid.seeds),
              "n_inputs": spec.network.n_inputs, "n_draws": spec.noise.draws}
    ratios, layers = spec.grid.ratio, spec.grid.layer
    # the random-network theory is that of ReLU networks at random init
    random_init = not spec.network.init_is_file and spec.network.activation == "relu"
    cheap = _cheap_draws(spec, block, L, m, units)
    samples = _draw_samples(block) if not isinstance(cheap, str) else None

    def summary(ri: list[int], li: list[int]) -> dict:
        from .control import cv_summary

        out = {**summarise(block, ri, li, units), **counts}
        out.update(cv_summary(samples, cheap, ri, li, ratios, layers, out))
        if random_init and len(ri) == 1:
            from .analysis.theory import attenuation

            if layers[li[0]] == TOGETHER:  # L independent first-order terms of r^2 each in E R^2
                out["theory_first_order"] = ratios[ri[0]] * float(np.sqrt(L))
            else:
                out["theory_first_order"] = ratios[ri[0]]
                if len(li) == 1:
                    out["theory_attenuation"] = float(attenuation(ratios[ri[0]], L - layers[li[0]]))
        return out

    # the pooled summary is over the single layers; the together cells (noise in every layer at once)
    # answer another question and are pooled only when they are all there is
    single = [c for c, i in enumerate(layers) if i != TOGETHER] or list(range(len(layers)))

    def with_layers(ri: list[int]) -> dict:
        out = summary(ri, single)
        if len(layers) > 1:
            out["by_layer"] = {layer_name(i): summary(ri, [c]) for c, i in enumerate(layers)}
        return out

    result = with_layers(list(range(len(ratios))))
    if len(ratios) > 1:
        result["by_ratio"] = {repr(r): with_layers([c]) for c, r in enumerate(ratios)}
    if spec.network.read:
        r = spec.network.read[0]
        result["network"] = {"path": r.path, "format": r.format, "widths": list(r.widths),
                             "activations": list(r.activations), "activation_source": r.activation_source,
                             "layers": list(r.lines)}
    return result
