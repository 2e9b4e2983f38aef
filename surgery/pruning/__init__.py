"""Mask finders, one file each. Each returns ``{param_name: bool tensor}`` for prunable weights."""

from surgery.pruning.random import random_masks

__all__ = ["random_masks"]
