"""What a run shares with the other arms of its seed: digests of its starting weights, its mask and its data.

A paired comparison (``surgery sweep``'s paired table) is only fair when two arms of one seed start from the
same weights, prune the same weights and see the same images in the same order; the recipe is then the only
difference. Each run records three short digests in ``result.json`` (``pairing``) so a report can check
that on the data, not assume it from the seed:

- ``init``: the original network's parameters and buffers where training starts, before any ghost joins
  and before LRsI rescales them (ghosts are an arm's own; LRsI is part of the ``tost`` recipe);
- ``mask``: every mask, bit for bit (``dense`` when the run has none);
- ``data``: the training and validation images and labels, and the seed that orders every epoch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import nn

from surgery.train.data import ImageDataset

DIGEST_CHARS = 16
PARTS = ("init", "mask", "data")  # what a pair must share, in the order a report names differences


def pairing_section(model: nn.Module, masks: Mapping[str, torch.Tensor] | None, dataset: ImageDataset,
                    seed: int) -> dict[str, str]:
    return {"init": tensors_digest(model.state_dict()), "mask": tensors_digest(masks) if masks else "dense",
            "data": data_digest(dataset, seed)}


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """A digest of named tensors: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:DIGEST_CHARS]


def data_digest(dataset: ImageDataset, seed: int) -> str:
    """The training images (or files) and labels of every split a run trains or selects on, and the order seed."""
    digest = hashlib.sha256(f"{dataset.name}|{seed}|".encode())
    for name in ("train", "val"):
        split = dataset.splits.get(name)
        if split is None:
            continue
        digest.update(f"{name}|{len(split)}|".encode())
        digest.update(split.labels.numpy().tobytes())
        if split.images is not None:
            digest.update(split.images.contiguous().numpy().tobytes())
        else:  # streamed: the files stand for their pixels
            digest.update("\n".join(split.files).encode())
    return digest.hexdigest()[:DIGEST_CHARS]
