"""GraSP: gradient signal preservation (Wang, Zhang & Grosse, ICLR 2020).

Prune at initialization the weights whose removal least reduces gradient flow, the norm
``g^T g`` of the gradient ``g = dL/dw``. Removing weights by ``delta`` changes it by
about ``2 delta^T H g`` (``H`` the Hessian), so the paper scores each weight by

    S(-w) = -w * (H g)          (elementwise)

and **prunes the weights with the highest S** (removing them keeps, or even raises, the
gradient flow), keeping the lowest: the original code keeps ``S <= t``, ``t`` the
smallest of the top-``p`` scores. Our scores mean "higher = keep", so the keep score is
``w * (H g) = -S``. (Ranking ``|S|`` would be a different method; GraSP's sign matters.)

As in the original code: logits are divided by a temperature ``T = 200`` (option
``temperature``) so the softmax is not saturated; the model is in train mode; two passes:
(1) ``g = sum_b dL_b/dw`` over all batches, without a graph; (2) for each batch, the
gradient with ``create_graph=True``, ``z = sum(stopgrad(g) * dL_b/dw)`` and
``H g += dz/dw`` (a Hessian-gradient product by double backprop, no Hessian formed).
Gradients are taken with respect to the prunable weights only (biases and norms are
constants), ranked globally. Unlike the original code, the last linear layer is not
re-initialized: the masks are for the weights the model has. Needs every op of the model
to support double backward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from surgery.errors import MaskError
from surgery.pruning.registry import register
from surgery.pruning.snip import (
    Batches,
    batch_loss,
    checked_batches,
    reject_options,
    scoring_copy,
    seeded,
    summed_gradients,
    trainable_weights,
)

TEMPERATURE = 200.0  # the original code's T


@register("grasp", data=True, scope="global", flow=True, about="GraSP (Wang et al. 2020): prune the highest -w * Hg")
def score_grasp(
    model: nn.Module, names: list[str], *, batches: Batches | None = None, seed: int = 0,
    temperature: float = TEMPERATURE, **options: Any,
) -> dict[str, torch.Tensor]:
    """The keep score ``w * Hg`` per weight: keeping the highest keeps the lowest GraSP score ``-w * Hg``."""
    reject_options("grasp", options, known=("temperature",))
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise MaskError(f"grasp temperature {temperature!r} must be a positive number (the paper's code uses 200).")
    net = scoring_copy(model, checked_batches("grasp", batches))
    weights = trainable_weights(net, names)
    with seeded(seed, batches):
        _, hg = hessian_gradient_product(net, weights, batches, temperature=float(temperature))
    return grasp_keep_scores(weights, hg)


def grasp_keep_scores(weights: dict[str, torch.Tensor], hg: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``w * Hg``: minus the paper's score, so that keeping the highest prunes the paper's highest."""
    return {name: w.detach() * hg[name] for name, w in weights.items()}


def hessian_gradient_product(
    net: nn.Module, weights: dict[str, torch.Tensor], batches: Batches, *, temperature: float = TEMPERATURE
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(g, H g)`` for ``L = sum_b L_b``: the paper's two passes, one double-backward graph at a time."""
    g = summed_gradients(net, weights, batches, temperature=temperature)
    params = list(weights.values())
    hg = {name: torch.zeros_like(w) for name, w in weights.items()}
    for inputs, targets in batches:
        loss = batch_loss(net, inputs, targets, temperature)
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True, materialize_grads=True)
        z = sum((g[name] * gb).sum() for name, gb in zip(weights, grads))
        for name, h in zip(weights, _second_backward(z, params)):
            if h is not None:  # a weight the gradient does not depend on: H g is 0 there
                hg[name] += h
    return g, hg


def _second_backward(z: torch.Tensor, params: list[torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
    try:
        return torch.autograd.grad(z, params, allow_unused=True)
    except RuntimeError as error:
        if "double backward" in str(error) or "not implemented" in str(error):
            raise MaskError(
                f"GraSP needs second derivatives, and an op of this model has none ({error}); use snip or "
                "synflow for this model, or replace the op."
            ) from error
        raise
