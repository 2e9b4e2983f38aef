"""What every method that rewrites masks during training shares (GMP, RigL, ASNI, OptG).

Such a method is a ``surgery.hooks.TrainingHook`` working on the trainer's masked
model. ``MaskHook`` gives it the masked weights by name and ``apply`` for new masks:
the Mask buffers change in place (no re-parametrization, so the optimizer, DDP and
``torch.compile`` keep their tensors), newly pruned weights become exactly zero, and
their optimizer state (momentum, Adam moments) is cleared so they stay zero; a weight
that grows back starts from zero with fresh state. Under DDP every rank computes the
same masks from the same (synchronized) weights and gradients; rank 0's are then
broadcast anyway, so a rank cannot drift.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from surgery.errors import ConfigError
from surgery.hooks import TrainerView, TrainingHook
from surgery.compiler.masks import Mask, mask_parametrizations
from surgery.pruning.budget import Budget, masks_from_scores


class MaskHook(TrainingHook):
    """A hook over the model's masked weights ``names`` with a target ``budget``."""

    def __init__(self, names: list[str], budget: Budget):
        self.names = list(names)
        self.budget = budget
        self.masks: dict[str, tuple[Mask, nn.Parameter]] = {}

    def setup(self, trainer: TrainerView) -> None:
        found = mask_parametrizations(trainer.module)
        missing = [n for n in self.names if n not in found]
        if missing:
            raise ConfigError(
                f"{self.name} changes masks while training, but {missing[:3]}{' ...' if len(missing) > 3 else ''} "
                "carry no mask in the compiled model; compile with masks on every weight it prunes."
            )
        self.masks = {n: found[n] for n in self.names}

    def effective(self) -> dict[str, torch.Tensor]:
        """``w * mask`` per weight: what the forward uses (pruned entries are exactly zero)."""
        return {n: (original * mask.mask).detach() for n, (mask, original) in self.masks.items()}

    def current(self) -> dict[str, torch.Tensor]:
        return {n: mask.mask for n, (mask, _) in self.masks.items()}

    def sparsity(self) -> float:
        total = sum(m.mask.numel() for m, _ in self.masks.values())
        return 1.0 - sum(int(m.mask.count_nonzero()) for m, _ in self.masks.values()) / total

    @torch.no_grad()
    def apply(self, trainer: TrainerView, new: Mapping[str, torch.Tensor]) -> None:
        """Install ``new`` masks: zero what left, start what grew at zero, clear their optimizer state."""
        for name, mask in new.items():
            holder, _ = self.masks[name]
            holder.mask.copy_(mask.to(holder.mask.device))
        trainer.dist.broadcast_masks(trainer.module)
        for name in new:
            holder, original = self.masks[name]
            original.mul_(holder.mask)
            clear_optimizer_state(trainer.optimizer, original, ~holder.mask)

    def magnitude_masks(self, sparsity: float, scope: str | None = None) -> dict[str, torch.Tensor]:
        """Keep the largest ``|w * mask|`` at ``sparsity`` (pruned weights score 0 and stay out)."""
        budget = Budget(sparsity, scope or self.budget.scope, self.budget.distribution)
        scores = {n: w.abs() for n, w in self.effective().items()}
        return {n: m.to(self.masks[n][0].mask.device) for n, m in masks_from_scores(scores, budget).items()}


@torch.no_grad()
def clear_optimizer_state(optimizer: torch.optim.Optimizer, param: torch.Tensor, where: torch.Tensor) -> None:
    """Zero every per-element state tensor of ``param`` (SGD momentum, Adam moments) at ``where``."""
    for value in optimizer.state.get(param, {}).values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value.masked_fill_(where, 0)


def steps_in(trainer: TrainerView, epochs: float) -> int:
    """Optimizer steps in ``epochs`` (fractional) epochs of this run."""
    return int(round(epochs * trainer.steps_per_epoch))
