"""Mask finders, one file each, behind one registry.

    masks = find_masks(model, "snip", 0.9, batches=[(x, y)])       # any method by name
    masks = find_masks(model, my_scores, 0.9)                      # or your own scorer
    masks = random_masks(model, 0.9, distribution="erk")

A one-shot method scores weights; the registry turns scores into ``{param_name: bool tensor}``
masks under a global or layer-wise (uniform / ERK) budget (``budget.py``), the same way for
every method. Importing the package imports every finder file, so ``METHODS`` is complete.
"""

import importlib
import pkgutil

from surgery.pruning.budget import Budget, erk_densities, masks_from_scores, prunable_for, weights_of
from surgery.pruning.random import random_masks
from surgery.pruning.registry import METHODS, Method, find_masks, method, register

for _found in pkgutil.iter_modules(__path__):  # each finder file registers its method on import
    importlib.import_module(f"{__name__}.{_found.name}")

__all__ = ["METHODS", "Budget", "Method", "erk_densities", "find_masks", "masks_from_scores", "method",
           "prunable_for", "random_masks", "register", "weights_of"]
