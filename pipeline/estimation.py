"""Answer the question for one configuration: no store, no cluster.

The statistical unit is what varies independently. With several networks
(random init, or one file per seed) it is the network: each network's mean
over inputs and draws is one sample, so the confidence interval reflects
network-to-network variation. With one network (a single file, or one seed)
it is the noise draw: each draw is one perturbed network applied to every
input, so its mean over the inputs is one sample.

The draws are pooled batch by batch (:class:`Pool`): the memory is a batch's,
the per-draw means and what the exact medians keep (about z n sqrt(draws)
values per group for n inputs, :mod:`pipeline.pooling`), never every
(input, draw) value; and every number is the same whatever the batches.
"""

from __future__ import annotations

import numpy as np

from .jsonout import num
from .measure import PER_CELL, RESULT_FIELDS, BlockResult, NetworkResult, block_batches
from .pooling import StreamMedian
from .schema import TOGETHER, layer_name
from .spec import Spec


def t_interval(samples: np.ndarray) -> list[float] | None:
    """95% Student-t interval for the mean of independent samples, as a JSON list; None when undefined."""
    from .analysis.intervals import t_interval as interval

    ci = interval(samples)
    return None if ci is None else list(ci)


PER_DRAW_MEANS = ("abs", "rel", "rel2", "pred", "accuracy", "lin", "linpred")  # over the inputs of each draw
HEAD = ("delta_norm", "linear_change", "pred_changed", "linear_pred_changed")  # the first draws, kept whole
HEAD_BYTES = 32 * 2**20  # at most this much of them (at least 16 draws): they size the control variate's cheap draws
FIXED = ("bound", "linear_rms", "worst_linear", "worst_realised")  # per network, (ratio, layer, input)


class Pool:
    """What the summaries need of a block's draws, pooled batch by batch (:func:`pipeline.measure.block_batches`).

    Per draw (a perturbed network): the mean over the inputs of ||v - v*||, of R, of R^2, of the
    prediction changes, of the first-order change (relative) and prediction change, and the accuracy;
    the first network's first draws whole (:data:`HEAD`, which size the control variate's cheap draws); per network the fields that do not depend on the draws; and
    the exact median of R over (network, input, draw) of every group of cells, by
    :class:`pipeline.pooling.StreamMedian`. So the memory is a batch's, the per-draw means and what the
    medians keep, whatever the number of draws; and every number is the same whatever the batches
    (each draw's means are taken over its inputs alone, the rest at the end).
    """

    def __init__(self, spec: Spec, groups: list[tuple[tuple[int, ...], tuple[int, ...]]]):
        self.seeds, self.draws, self.groups = len(spec.grid.seeds), spec.noise.draws, groups
        self.medians: dict = {}
        self.median: dict = {}  # group -> its median, once known
        self._scratch: np.ndarray | None = None

    def _allocate(self, part: NetworkResult) -> None:
        (R, C, n, _), S, D = part.delta_norm.shape, self.seeds, self.draws
        self.per_draw = {name: np.empty((S, R, C, D)) for name in PER_DRAW_MEANS}
        self.fixed = {name: np.empty((S, R, C, n)) for name in FIXED}
        self.output_norm, self.clean_accuracy = np.empty((S, n)), np.empty(S)
        self.medians = {key: StreamMedian(S * n * D * len(key[0]) * len(key[1])) for key in self.groups}
        keep = min(D, max(16, HEAD_BYTES // (8 * len(HEAD) * R * C * n)))
        self.head = {name: np.empty((R, C, n, keep)) for name in HEAD}

    def add(self, s: int, start: int, part: NetworkResult) -> None:
        """Batch ``part`` of network ``s``, its draws from ``start`` on."""
        if not self.medians:
            self._allocate(part)
        b = part.delta_norm.shape[-1]
        if start == 0:
            for name in FIXED:
                self.fixed[name][s] = getattr(part, name)
            self.output_norm[s], self.clean_accuracy[s] = part.output_norm, part.clean_accuracy
        at = (s, slice(None), slice(None), slice(start, start + b))
        # Each draw's mean over its own inputs: a pairwise sum over contiguous values, the same whatever the
        # batches. One scratch array, (ratio, layer, draw, input), takes every field in turn: new arrays
        # of a batch's size each cost more in page faults than the arithmetic.
        buf, v = self._draw_major(part.delta_norm), part.output_norm
        self.per_draw["abs"][at] = buf.mean(axis=3)
        np.divide(buf, v, out=buf)  # R
        self.per_draw["rel"][at] = buf.mean(axis=3)
        self._feed(buf, start, self.medians)
        self.per_draw["rel2"][at] = np.square(buf, out=buf).mean(axis=3)
        self.per_draw["pred"][at] = self._draw_major(part.pred_changed).mean(axis=3)
        self.per_draw["lin"][at] = np.divide(self._draw_major(part.linear_change), v, out=buf).mean(axis=3)
        self.per_draw["linpred"][at] = self._draw_major(part.linear_pred_changed).mean(axis=3)
        keep = self.head["delta_norm"].shape[-1]
        if s == 0 and start < keep:  # the first network's first draws, whole
            for name in HEAD:
                self.head[name][..., start:min(keep, start + b)] = getattr(part, name)[..., :keep - start]
        self.per_draw["accuracy"][at] = part.accuracy

    def _draw_major(self, a: np.ndarray) -> np.ndarray:
        """``a`` (ratio, layer, input, draw) copied into the scratch array as (ratio, layer, draw, input)."""
        shape = a.shape[:2] + (a.shape[3], a.shape[2])
        if self._scratch is None or self._scratch.shape != shape:
            self._scratch = np.empty(shape)
        np.copyto(self._scratch, np.moveaxis(a, 2, 3))
        return self._scratch

    def add_medians(self, s: int, start: int, part: NetworkResult, medians: dict) -> None:
        """Feed ``medians`` alone with batch ``part`` of network ``s``, its draws from ``start`` on."""
        self._feed(np.divide(self._draw_major(part.delta_norm), part.output_norm, out=self._scratch), start, medians)

    def _feed(self, rel: np.ndarray, start: int, medians: dict) -> None:
        """Feed the medians R (ratio, layer, draw, input), which they copy what they keep of: the draws are
        the units of one network, the networks those of several."""
        b = rel.shape[2]
        units = b if self.seeds == 1 else int(start + b == self.draws)
        nan = bool(np.isnan(rel).any())
        for (ri, li), median in medians.items():
            cells = [(r, c) for r in ri for c in li]
            for r, c in cells:  # a cell at a time (a view), the units with the group's last
                median.add(rel[r, c], units if (r, c) == cells[-1] else 0, nan, by_unit=self.seeds == 1)


def summarise(pool: Pool, ratio_index: list[int], layer_index: list[int], units: str) -> dict:
    """Statistics of the cells (ratio, layer) given, pooled; ``units`` is ``networks`` or ``draws``.

    Draws of different (ratio, layer) cells are independent samples of their
    own cell; pooling them treats every cell as equally likely. Every draw
    has the same inputs, so the mean over (input, draw) is the mean of the
    per-draw means.
    """
    def cells(a: np.ndarray) -> np.ndarray:  # (seed, ratio, layer, ...) -> (seed, ..., cells)
        sub = a[:, ratio_index][:, :, layer_index]
        return np.moveaxis(sub.reshape(sub.shape[0], -1, *sub.shape[3:]), 1, -1)

    per_draw = {name: cells(a) for name, a in pool.per_draw.items()}  # (seed, draw, cell)
    rel = per_draw["rel"]
    # one network: a draw is one sample, whatever the cells pooled (every ratio reuses the same draws)
    per_unit = rel.mean(axis=(1, 2)) if units == "networks" else rel.mean(axis=2).ravel()
    v = pool.output_norm[:, :, None]  # (seed, input, 1)
    out = {
        "mean_abs_change": num(per_draw["abs"].mean()),
        "mean_rel_change": num(rel.mean()),
        "ci95": t_interval(per_unit),
        "ci95_over": units,
        "median_rel_change": num(pool.median[(tuple(ratio_index), tuple(layer_index))]),
        "rms_rel_change": num(np.sqrt(per_draw["rel2"].mean())),
        "bound": num(cells(pool.fixed["bound"]).mean()),
        "pred_change_rate": num(per_draw["pred"].mean()),
        # the network's own first-order answer: the small-r prediction of rms_rel_change, and the worst direction
        "linear_rms_rel": num(np.sqrt(np.mean((cells(pool.fixed["linear_rms"]) / v) ** 2))),
        "worst_linear_rel": num(np.mean(cells(pool.fixed["worst_linear"]) / v)),
        "worst_rel": num(np.mean(cells(pool.fixed["worst_realised"]) / v)),
    }
    accuracy = per_draw["accuracy"]
    if np.all(np.isfinite(accuracy)):
        out["accuracy"] = num(accuracy.mean())
        out["accuracy_ci95"] = t_interval(accuracy.mean(axis=(1, 2)) if units == "networks"
                                          else accuracy.mean(axis=2).ravel())
        out["clean_accuracy"] = num(pool.clean_accuracy.mean())
    return out


def pooled(spec: Spec, groups: list[tuple[tuple[int, ...], tuple[int, ...]]], parts=None,
           with_first_order: bool = True) -> Pool:
    """The block of ``spec``'s single (L, m), pooled batch by batch; a median whose middle fell outside
    its bracket takes another pass over the same draws (they are the same numbers again).

    Args:
        parts: a function giving the block's batches as (seed index, first draw, batch) again at each
            call; by default :func:`pipeline.measure.block_batches` measures them.
        with_first_order: whether those measurements include every draw's first-order change (the control
            variate's pairs); without, ``linear_change`` and ``linear_pred_changed`` are NaN.
    """
    (L,), (m,) = spec.grid.L, spec.grid.m
    parts = parts or (lambda: block_batches(spec, L, m, spec.grid.seeds, with_first_order=with_first_order))
    pool = Pool(spec, groups)
    for s, start, part in parts():
        pool.add(s, start, part)
    pool.median = {key: med.result() for key, med in pool.medians.items()}  # each found once: it partitions
    while pending := {key: pool.medians[key].retry() for key, found in pool.median.items() if found is None}:
        for s, start, part in parts():
            pool.add_medians(s, start, part, pending)
        pool.medians.update(pending)
        pool.median.update({key: med.result() for key, med in pending.items()})
    return pool


def _cheap_draws(spec: Spec, pool: Pool, L: int, m: int, units: str, control_variate: bool = True):
    """The cheap draws of the first-order change for the one network of ``pool``, or why they do not apply."""
    from .control import cheap_draws_for

    if not control_variate:
        return "the control variate was not asked for (--no-control-variate)"
    if units == "networks":
        return "several networks: the interval is over networks, where no control variate applies"
    if len(spec.grid.seeds) != 1:
        return "one network measured as several seeds: the control variate takes one (--seeds 1)"
    single = [c for c, i in enumerate(spec.grid.layer) if 1 <= i <= L]
    if not single or not np.all(np.isfinite(pool.head["linear_change"][:, single])):
        return "the first-order change was not computed"
    head = pool.head
    return cheap_draws_for(spec, L, m, spec.grid.seeds[0], head["delta_norm"], head["linear_change"],
                           pool.output_norm[0], head["pred_changed"], head["linear_pred_changed"],
                           full_draws=spec.noise.draws)


def _draw_samples(pool: Pool) -> dict[str, np.ndarray]:
    """What :func:`pipeline.control.cv_summary` reads: the per-draw means of the first network,
    (ratio, layer, draw)."""
    return {name: pool.per_draw[key][0] for name, key in (("delta_norm", "rel"), ("linear_change", "lin"),
                                                            ("pred_changed", "pred"),
                                                            ("linear_pred_changed", "linpred"))}


def groups_of(spec: Spec) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The groups of cells (ratio indices, layer indices) that :func:`estimate` summarises: all, by
    ratio, by layer and each cell, where "all layers" means the single layers (:func:`single_layers`)."""
    every_r, every_l = tuple(range(len(spec.grid.ratio))), tuple(range(len(spec.grid.layer)))
    single = single_layers(spec)
    return sorted({(every_r, single), *(((r,), single) for r in every_r), *((every_r, (c,)) for c in every_l),
                   *(((r,), (c,)) for r in every_r for c in every_l)})


def single_layers(spec: Spec) -> tuple[int, ...]:
    """The layer indices a pooled summary covers: the single layers. The together cells (noise in every
    layer at once) answer another question and are pooled only when they are all there is."""
    layers = spec.grid.layer
    return tuple(c for c, i in enumerate(layers) if i != TOGETHER) or tuple(range(len(layers)))


def estimate(spec: Spec, control_variate: bool = True) -> dict:
    """E||v - v*||, E R and the prediction-change rate for the single (L, m) of ``spec``.

    The draws are measured and pooled batch by batch (:func:`pooled`): the memory is a batch's plus
    the per-draw results.

    Returns:
        The summary of every listed ratio and layer together, with ``by_layer``
        (when several layers are listed) and ``by_ratio`` (when several ratios
        are) holding one summary each, keyed by layer ("together" for noise in
        every layer at once, which the pooled summary leaves out when single
        layers are listed too); ``by_ratio`` entries have their own
        ``by_layer``. Random-init networks also get ``theory_first_order`` (r)
        and ``theory_attenuation`` (the infinite-width arc-cosine prediction);
        a given network, or one with another activation, gets no random-network theory.
        For one network, the control-variate estimate beside the plain one (:mod:`pipeline.control`),
        unless ``control_variate`` is False (its cheap draws are extra work: the plain estimate alone then).
    """
    # every draw's first-order change serves the control variate alone, which takes one network
    first_order = control_variate and len(spec.grid.seeds) == 1
    return _summaries(spec, pooled(spec, groups_of(spec), with_first_order=first_order), control_variate)


def estimate_from(spec: Spec, block: BlockResult, control_variate: bool = True) -> dict:
    """:func:`estimate` of measurements already made: ``block`` holds every seed, ratio and layer of ``spec``.

    Also how the network file was read (``network``), for a given network.
    """
    def parts():
        for s in range(block.output_norm.shape[0]):
            yield s, 0, NetworkResult(**{name: getattr(block, name)[:, :, s] if name in PER_CELL
                                         else getattr(block, name)[s] for name in RESULT_FIELDS})
    return _summaries(spec, pooled(spec, groups_of(spec), parts), control_variate)


def _summaries(spec: Spec, pool: Pool, control_variate: bool = True) -> dict:
    """The summaries of :func:`estimate` from a pooled block."""
    (L,), (m,) = spec.grid.L, spec.grid.m
    ratios, layers = spec.grid.ratio, spec.grid.layer
    one_network = spec.network.one_network or len(spec.grid.seeds) == 1
    units = "draws" if one_network else "networks"
    counts = {"n_networks": 1 if spec.network.one_network else len(spec.grid.seeds),
              "n_inputs": spec.network.n_inputs, "n_draws": spec.noise.draws}
    # the random-network theory is that of ReLU networks at random init
    random_init = not spec.network.init_is_file and spec.network.activation == "relu"
    cheap = _cheap_draws(spec, pool, L, m, units, control_variate)
    samples = _draw_samples(pool) if not isinstance(cheap, str) else None

    def summary(ri: list[int], li: list[int]) -> dict:
        from .control import cv_summary

        out = {**summarise(pool, ri, li, units), **counts}
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

    single = list(single_layers(spec))

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
