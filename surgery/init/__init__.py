"""Initializers applied to a (compiled, masked) model before training."""

from surgery.init.lrsi import LRsIResult, lrsi

__all__ = ["LRsIResult", "lrsi"]
