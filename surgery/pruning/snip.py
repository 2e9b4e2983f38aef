"""SNIP: single-shot network pruning by connection sensitivity (Lee et al., ICLR 2019).

A weight's score is ``|dL/dw * w|``, the first-order change of the loss when the weight
is removed, at initialization (the paper's ``|dL/dc|`` for a mask ``c = 1``). The
gradient is summed over every batch given (more data, less noise), with the model in
train mode (BatchNorm on batch statistics) as ToST's mask-making code scores it
(``pruning_techniques/example.py``, ``train_mode=True``); SNIP's own code scores with the
running statistics, which at initialization make BatchNorm an identity. The loss is
classification cross-entropy. Ranked globally by default, as in the paper.

The helpers here (a scoring copy on the data's device, seeded forward passes, the loss)
are shared by the other gradient-based finders (GraSP).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from surgery.errors import MaskError
from surgery.fx.graph import deepcopy_module
from surgery.pruning.budget import weights_of
from surgery.pruning.registry import register

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


@register("snip", data=True, scope="global", flow=True, about="SNIP (Lee et al. 2019): |dL/dw * w| at initialization")
def score_snip(
    model: nn.Module, names: list[str], *, batches: Batches | None = None, seed: int = 0, **options: Any
) -> dict[str, torch.Tensor]:
    """Connection sensitivity ``|g * w|`` per weight, ``g`` summed over ``batches``."""
    reject_options("snip", options)
    net = scoring_copy(model, checked_batches("snip", batches))
    weights = trainable_weights(net, names)
    with seeded(seed, batches):
        grads = summed_gradients(net, weights, batches)
    return snip_scores(weights, grads)


def snip_scores(weights: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``|g * w|`` per weight."""
    return {name: (grads[name] * w.detach()).abs() for name, w in weights.items()}


# ------------------------------------------------------------------ shared by the gradient-based finders


def summed_gradients(
    net: nn.Module, weights: dict[str, torch.Tensor], batches: Batches, *, temperature: float = 1.0
) -> dict[str, torch.Tensor]:
    """``sum_b dL_b/dw`` over the batches, one graph alive at a time (``L_b``: cross-entropy of logits / T)."""
    total = {name: torch.zeros_like(w) for name, w in weights.items()}
    for inputs, targets in batches:
        loss = batch_loss(net, inputs, targets, temperature)
        grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True, materialize_grads=True)
        for name, g in zip(weights, grads):
            total[name] += g
    return total


def batch_loss(net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy of the model's logits divided by ``temperature``."""
    try:
        output = net(inputs)
    except ValueError as error:
        if "Expected more than 1 value per channel" in str(error):
            raise MaskError(
                f"a BatchNorm in train mode saw one value per channel ({error}); give batches of at least "
                "2 images (or larger images) to the mask finder."
            ) from error
        raise
    return F.cross_entropy(logits_of(output) / temperature, targets)


def logits_of(output: Any) -> torch.Tensor:
    """The logits in what a model returns: a tensor, ``.logits`` (Inception, HF-style) or a tuple's first item."""
    if torch.is_tensor(output):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        return output[0]
    raise MaskError(
        f"the model returned {type(output).__name__}, not logits; score a model whose forward returns "
        "a (batch, classes) tensor."
    )


def scoring_copy(model: nn.Module, batches: Batches) -> nn.Module:
    """A train-mode copy of ``model`` on the batches' device: scoring it leaves the user's model alone."""
    return deepcopy_module(model).to(batches[0][0].device).train()


def trainable_weights(net: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """The copy's stored tensors behind ``names``, made to require grad (a frozen weight is still scored)."""
    weights = weights_of(net, names)
    for w in weights.values():
        w.requires_grad_(True)
    return weights


def checked_batches(method: str, batches: Batches | None) -> Batches:
    """``batches`` as given, once it is a non-empty list of ``(inputs, targets)`` tensor pairs."""
    ok = bool(batches) and all(
        isinstance(b, (tuple, list)) and len(b) == 2 and all(torch.is_tensor(t) for t in b) for b in batches
    )
    if not ok:
        raise MaskError(
            f"mask method '{method}' scores weights with gradients on data: pass batches=[(inputs, targets), ...], "
            "a non-empty list of tensor pairs (CLI: --data DATASET)."
        )
    return batches


@contextlib.contextmanager
def seeded(seed: int, batches: Batches | None = None) -> Iterator[None]:
    """Run under ``torch.manual_seed(seed)`` (dropout, drop-path), restoring the caller's RNG state after."""
    device = batches[0][0].device if batches else torch.device("cpu")
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)  # not torch.manual_seed: it would reseed every GPU, lazily too
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def reject_options(method: str, options: dict[str, Any], known: Sequence[str] = ()) -> None:
    if options:
        takes = f"takes {', '.join(known)}" if known else "takes no options"
        raise MaskError(f"mask method '{method}' {takes}; got unknown {sorted(options)}. Drop or rename them.")
