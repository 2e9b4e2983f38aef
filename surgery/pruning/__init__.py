"""Mask finders, one file each, behind one registry.

    masks = find_masks(model, "snip", 0.9, batches=[(x, y)])       # any method by name
    masks = random_masks(model, 0.9, distribution="erk")

Each returns ``{param_name: bool tensor}`` for the prunable weights; ``budget.py`` turns
scores into masks under a global or layer-wise (uniform / ERK) budget for every method.
"""

from surgery.pruning.budget import Budget, erk_densities, masks_from_scores, prunable_for
from surgery.pruning.random import random_masks
from surgery.pruning.registry import METHODS, Method, find_masks, method, register

__all__ = ["METHODS", "Budget", "Method", "erk_densities", "find_masks", "masks_from_scores", "method",
           "prunable_for", "random_masks", "register"]
