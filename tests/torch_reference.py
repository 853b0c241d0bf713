"""An independent Monte Carlo of weight noise in a PyTorch MLP: what the end-to-end tests compare the tool with.

Pure torch, nothing from ``pipeline``: the model is run as PyTorch runs it (its own ``forward``, its own
activation modules, BatchNorm1d in eval mode), and only the weight of one Linear layer is changed.

Layer i is the i-th Linear layer *in the order the forward pass calls them* (found with forward hooks, never
from the names). A BatchNorm1d applied directly to a Linear layer's output is what the tool folds into that
layer, W' = s W with s = gamma / sqrt(running_var + eps), and the tool draws its noise for W' with
||eta'|| = r ||W'||_F. The same perturbation of the unfolded model is W + eta' / s[:, None] (then
BN(W x + eta' x / s + b) = s (W x + b - mean) + beta + eta' x), so that is what the reference adds.

Per draw (one eta for all n inputs, as the tool does): eta = G r ||W'||_F / ||G||_F with G standard normal
from a seeded ``torch.Generator``; the perturbed model's outputs v* on every input; then the mean over inputs
of R = ||v* - v|| / ||v|| (and of R^2), the share of inputs whose argmax changed, and the accuracy.

>>> import torch
>>> torch.manual_seed(0) and None
>>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
>>> x = torch.randn(5, 3, dtype=torch.float64)
>>> [tuple(layer.linear.weight.shape) for layer in linear_layers(net, x)]
[(4, 3), (2, 4)]
>>> mc = monte_carlo(net, x, None, layer=2, ratio=1e-3, draws=50, seed=0)
>>> 0 < mc.mean("rel") < 1e-2 and mc.accuracy is None
True
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class LinearLayer:
    """One Linear layer as the forward pass calls it, with the BatchNorm1d scale folded onto it (or None)."""

    name: str
    linear: nn.Linear
    bn_scale: torch.Tensor | None
    bn_name: str | None

    def folded_weight(self) -> torch.Tensor:
        """W' = s[:, None] W: the weight the tool perturbs."""
        w = self.linear.weight.detach()
        return w if self.bn_scale is None else self.bn_scale[:, None] * w


def _bn_scale(bn: nn.BatchNorm1d) -> torch.Tensor:
    assert not bn.training and bn.track_running_stats, "the reference folds BatchNorm1d in eval mode only"
    gamma = bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var)
    return gamma / torch.sqrt(bn.running_var + bn.eps)


def linear_layers(model: nn.Module, x: torch.Tensor) -> list[LinearLayer]:
    """The Linear layers of ``model`` in the order its forward pass on ``x`` calls them.

    A BatchNorm1d whose input is the very tensor a Linear layer returned is folded onto that layer.
    """
    names = {mod: name for name, mod in model.named_modules()}
    calls: list[list] = []  # [name, module, output, bn scale, bn name]
    hooks = []

    def on_linear(mod, inputs, output):
        assert all(c[1] is not mod for c in calls), f"{names[mod]} is called twice: not an MLP"
        calls.append([names[mod], mod, output, None, None])

    def on_bn(mod, inputs, output):
        for c in calls:
            if inputs[0] is c[2]:
                c[3], c[4] = _bn_scale(mod), names[mod]

    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            hooks.append(mod.register_forward_hook(on_linear))
        elif isinstance(mod, nn.BatchNorm1d):
            hooks.append(mod.register_forward_hook(on_bn))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return [LinearLayer(name, mod, scale, bn) for name, mod, _, scale, bn in calls]


@dataclasses.dataclass(frozen=True)
class MonteCarlo:
    """Per-draw results of one (layer, ratio): each entry of each tensor is one perturbed network."""

    rel: torch.Tensor  # (draws,) mean over inputs of R = ||v* - v|| / ||v||
    rel_sq: torch.Tensor  # (draws,) mean over inputs of R^2
    pred_changed: torch.Tensor  # (draws,) share of inputs whose argmax differs from the clean argmax
    accuracy: torch.Tensor | None  # (draws,) accuracy of the perturbed network, None without labels
    clean_accuracy: float | None
    clean_outputs: torch.Tensor  # (n, k) the clean model's outputs

    @property
    def draws(self) -> int:
        return self.rel.numel()

    def mean(self, what: str) -> float:
        return float(getattr(self, what).mean())

    def standard_error(self, what: str) -> float:
        """Standard error of :meth:`mean` over the independent draws."""
        a = getattr(self, what)
        return float(a.std(unbiased=True)) / math.sqrt(a.numel())


def _check_float64(model: nn.Module, x: torch.Tensor) -> None:
    bad = [name for name, p in model.named_parameters() if p.dtype != torch.float64]
    assert not bad and x.dtype == torch.float64, f"the reference computes in float64 (not: {bad or 'x'})"


def monte_carlo(model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None, layer: int, ratio: float,
                draws: int, seed: int) -> MonteCarlo:
    """Perturb the ``layer``-th Linear layer (1-based, forward order) ``draws`` times with ``||eta'|| = ratio ||W'||_F``.

    Args:
        model: an MLP in float64; it is copied, put in eval mode and never changed.
        x: (n, d) float64 inputs, all pushed through each perturbed network at once.
        labels: (n,) class indices, or None.
        layer: 1..L over the Linear layers in the order the forward pass calls them.
        ratio: r.
        draws: the number of independent noise draws.
        seed: seeds the ``torch.Generator`` of G.
    """
    model = copy.deepcopy(model).eval()
    _check_float64(model, x)
    target = linear_layers(model, x)[layer - 1]
    weight = target.linear.weight
    w0 = weight.detach().clone()
    rho = ratio * float(torch.linalg.norm(target.folded_weight()))
    unscale = 1.0 if target.bn_scale is None else 1.0 / target.bn_scale[:, None]
    gen = torch.Generator().manual_seed(seed)
    rel, rel_sq, changed, accuracy = [], [], [], []
    with torch.no_grad():
        v = model(x)
        v_norm = torch.linalg.norm(v, dim=1)
        clean_pred = v.argmax(dim=1)
        for _ in range(draws):
            g = torch.randn(w0.shape, generator=gen, dtype=torch.float64)
            eta = g * (rho / torch.linalg.norm(g))
            weight.copy_(w0 + eta * unscale)
            v_star = model(x)
            r = torch.linalg.norm(v_star - v, dim=1) / v_norm
            rel.append(r.mean())
            rel_sq.append((r**2).mean())
            pred = v_star.argmax(dim=1)
            changed.append((pred != clean_pred).double().mean())
            if labels is not None:
                accuracy.append((pred == labels).double().mean())
        weight.copy_(w0)
    clean_accuracy = None if labels is None else float((clean_pred == labels).double().mean())
    return MonteCarlo(torch.stack(rel), torch.stack(rel_sq), torch.stack(changed),
                      torch.stack(accuracy) if labels is not None else None, clean_accuracy, v)


def first_order_rel_sq(model: nn.Module, x: torch.Tensor, layer: int, ratio: float) -> float:
    """The exact r -> 0 limit of E[mean over inputs of R^2], from the full Jacobian dv/dW' by autograd.

    For eta' uniformly distributed on the sphere ||eta'||_F = rho in R^(n_out x n_in),
    E[eta'_ab eta'_cd] = rho^2 / (n_out n_in) [a=c][b=d], so to first order
    E||v* - v||^2 = rho^2 ||dv/dW'||_F^2 / (n_out n_in) for each input, with dv/dW' = dv/dW / s[:, None].
    Nothing here is shared with :func:`monte_carlo` but :func:`linear_layers`; small models only (the
    Jacobian holds n k n_out n_in numbers).
    """
    model = copy.deepcopy(model).eval()
    _check_float64(model, x)
    target = linear_layers(model, x)[layer - 1]
    name = next(n for n, p in model.named_parameters() if p is target.linear.weight)
    w = target.linear.weight.detach()
    with torch.no_grad():
        v = model(x)
    jac = torch.func.jacrev(lambda wt: torch.func.functional_call(model, {name: wt}, (x,)))(w)  # (n, k, out, in)
    if target.bn_scale is not None:
        jac = jac / target.bn_scale[:, None]
    rho = ratio * float(torch.linalg.norm(target.folded_weight()))
    per_input = rho**2 * jac.pow(2).sum(dim=(1, 2, 3)) / w.numel() / torch.linalg.norm(v, dim=1) ** 2
    return float(per_input.detach().mean())
