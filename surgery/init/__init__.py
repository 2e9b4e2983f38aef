"""Initializers applied to a (compiled, masked) model before training.

- ``lrsi``: ToST's layer-wise re-scaled initialization (one learned scale per weight).
- ``zero_init``: ZerO, every conv / linear weight from zeros and ones; residual branches start at zero.
- ``apply_centroids`` / ``centroid_init``: ASNI's 2L signed centroids on a learned sparse structure.
- ``rewind``: weights from an early checkpoint of the dense run (lottery-ticket rewinding).
"""

from surgery.init.centroid import (
    apply_centroids_from_metadata,
    CentroidInitResult,
    apply_centroids,
    centroid_init,
    centroids,
    centroids_from_metadata,
    centroids_to_metadata,
    load_centroids,
    save_centroids,
    signs,
    signs_from_metadata,
    signs_to_metadata,
)
from surgery.init.lrsi import LRsIResult, lrsi
from surgery.init.rewind import RewindReport, rewind
from surgery.init.zero import ZerOResult, residual_branch_ends, zero_init, zero_matrix

__all__ = [
    "CentroidInitResult",
    "LRsIResult",
    "RewindReport",
    "ZerOResult",
    "apply_centroids",
    "apply_centroids_from_metadata",
    "centroid_init",
    "centroids",
    "centroids_from_metadata",
    "centroids_to_metadata",
    "load_centroids",
    "lrsi",
    "residual_branch_ends",
    "rewind",
    "save_centroids",
    "signs",
    "signs_from_metadata",
    "signs_to_metadata",
    "zero_init",
    "zero_matrix",
]
