"""Deterministic, resumable, shardable loaders: one split in, normalized float batches on the device out.

Determinism: the sample order and every augmentation parameter of epoch ``e`` are drawn
up front in ``set_epoch(e)`` from a ``torch.Generator`` seeded from ``(seed, e)``; the
global RNGs are never touched. ``batches(start=k)`` therefore yields exactly the batches
an uninterrupted epoch yields after its first ``k``. Augmentation parameters belong to
positions in the epoch's order, so sharding across ranks does not change them.

Sharding: ``batch_size`` is the global batch. Rank ``r`` of ``W`` takes the ``r``-th
slice of every global batch of the same permutation (every rank must pass the same
``seed``). Training drops the last incomplete global batch. Evaluation covers every
sample exactly once, in order, without padding: the last global batch is split as
evenly as it goes, so when it holds fewer samples than there are ranks, some ranks get
one batch fewer (``len`` is per rank; reduce evaluation metrics after the loop, not
per batch).

In-memory splits (``DeviceLoader``) live on the device as uint8 and are padded, cropped
and flipped there in one gather per batch (``pad_crop_flip``: torchvision's v2 transforms
work per image or with one crop for the whole batch, not one per sample); streamed splits
(``StreamingLoader``) are decoded by DataLoader workers (``images.FileImages``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from surgery.errors import DataError
from surgery.train.data.dataset import ImageDataset, Split
from surgery.train.data.images import FileImages
from surgery.train.data.seeds import EPOCH_SALT, STREAM_SALT, mix_seed


def make_loader(
    ds: ImageDataset,
    split: str,
    batch_size: int,
    *,
    train: bool,
    device: torch.device | str = "cpu",
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    augment: bool | None = None,
    channels_last: bool = False,
    workers: int = 4,
) -> EpochLoader:
    """A loader over ``ds.split(split)`` for this rank: shuffled + drop-last when ``train``, in order otherwise.

    ``batch_size`` is the global batch; ``augment=None`` means ``train``. ``workers`` only
    matters for streamed folders (in-memory data is gathered and augmented on ``device``).
    """
    data = ds.split(split)
    _check_sharding(batch_size, rank, world_size)
    kwargs = {
        "batch_size": batch_size, "train": train, "device": torch.device(device), "seed": seed, "rank": rank,
        "world_size": world_size, "augment": train if augment is None else augment,
        "channels_last": channels_last, "mean": ds.mean, "std": ds.std,
    }
    if data.streamed:
        loader: EpochLoader = StreamingLoader(data, image_size=ds.image_size, workers=workers, **kwargs)
    else:
        loader = DeviceLoader(data, **kwargs)
    if len(loader) == 0:
        raise DataError(
            f"the '{split}' split of '{ds.name}' has {len(data)} images, fewer than one global batch of "
            f"{batch_size}; lower the batch size."
        )
    return loader


def _check_sharding(batch_size: int, rank: int, world_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size={batch_size!r} must be a positive integer (the global batch).")
    if not isinstance(world_size, int) or world_size < 1:
        raise DataError(f"world_size={world_size!r} must be a positive integer.")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise DataError(f"rank={rank!r} must be in [0, {world_size}) for world_size={world_size}.")
    if batch_size % world_size:
        raise DataError(
            f"global batch_size={batch_size} is not divisible by world_size={world_size}; pick a multiple "
            f"of {world_size}, e.g. {batch_size - batch_size % world_size or world_size}."
        )


def _rank_batch_ranges(n: int, global_batch: int, rank: int, world_size: int, drop_last: bool) -> list[tuple[int, int]]:
    """``[lo, hi)`` positions in the epoch's order of this rank's batches; empty slices are left out."""
    ranges = []
    for start in range(0, n, global_batch):
        size = min(global_batch, n - start)
        if size < global_batch and drop_last:
            break
        share, extra = divmod(size, world_size)
        lo = start + rank * share + min(rank, extra)
        hi = lo + share + (1 if rank < extra else 0)
        if hi > lo:
            ranges.append((lo, hi))
    return ranges


class EpochLoader(ABC):
    """Batches of one split for one rank; ``set_epoch(e)`` fixes epoch ``e``'s order and augmentation.

    If ``set_epoch`` is never called, iteration uses epoch 0 (like DistributedSampler,
    forgetting to call it repeats the same order every epoch).
    """

    def __init__(self, data: Split, *, batch_size: int, train: bool, device: torch.device, seed: int, rank: int,
                 world_size: int, augment: bool, channels_last: bool, mean: Sequence[float], std: Sequence[float]):
        self.data, self.train, self.augment = data, train, augment
        self.device, self.seed, self.rank, self.world_size = device, seed, rank, world_size
        self.global_batch_size, self.batch_size = batch_size, batch_size // world_size
        self.channels_last = channels_last
        self.epoch: int | None = None
        self._ranges = _rank_batch_ranges(len(data), batch_size, rank, world_size, drop_last=train)
        std_t = torch.tensor(std, dtype=torch.float32)
        # x / 255 normalized = x * scale + shift, one fused pass on the device
        self._scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1).to(device)
        self._shift = (-torch.tensor(mean, dtype=torch.float32) / std_t).view(1, -1, 1, 1).to(device)

    def __len__(self) -> int:
        return len(self._ranges)

    @property
    def samples_per_epoch(self) -> int:
        return sum(hi - lo for lo, hi in self._ranges)

    def set_epoch(self, epoch: int) -> None:
        if not isinstance(epoch, int) or epoch < 0:
            raise DataError(f"set_epoch({epoch!r}): the epoch must be a non-negative integer.")
        self.epoch = epoch
        self._plan_epoch(torch.Generator().manual_seed(mix_seed(self.seed, EPOCH_SALT, epoch)))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches(0)

    def batches(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches of the current epoch, skipping the first ``start`` (to resume mid-epoch)."""
        if not isinstance(start, int) or not 0 <= start <= len(self):
            raise DataError(
                f"batches(start={start!r}) is outside [0, {len(self)}] (this rank's batches per epoch); "
                f"resume with the batch index saved in the checkpoint."
            )
        if self.epoch is None:
            self.set_epoch(0)
        return self._iterate(start)

    def _epoch_order(self, generator: torch.Generator) -> torch.Tensor:
        n = len(self.data)
        return torch.randperm(n, generator=generator) if self.train else torch.arange(n)

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32).mul_(self._scale).add_(self._shift)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @abstractmethod
    def _plan_epoch(self, generator: torch.Generator) -> None:
        """Draw the epoch's order and every augmentation parameter from ``generator``."""

    @abstractmethod
    def _iterate(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield this rank's batches of the planned epoch from batch ``start`` on."""


class DeviceLoader(EpochLoader):
    """In-memory split kept as uint8 on ``device``: gather, pad-crop-flip and normalize there, vectorised."""

    def __init__(self, data: Split, **kwargs):
        super().__init__(data, **kwargs)
        self._images = data.images.to(self.device)
        self._labels = data.labels.to(self.device)
        self.pad = max(1, round(self._images.shape[-1] / 8))  # 4 pixels at 32x32, the CIFAR standard

    def _plan_epoch(self, generator: torch.Generator) -> None:
        n = len(self.data)
        self._order = self._epoch_order(generator).to(self.device)
        if self.augment:
            self._offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=generator).to(self.device)
            self._flips = (torch.rand(n, generator=generator) < 0.5).to(self.device)

    def _iterate(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for lo, hi in self._ranges[start:]:
            index = self._order[lo:hi]
            images = self._images.index_select(0, index)
            if self.augment:
                images = pad_crop_flip(images, self._offsets[lo:hi], self._flips[lo:hi], self.pad)
            yield self._normalize(images), self._labels.index_select(0, index)


def pad_crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad by ``pad``, crop ``H x W`` at ``offsets`` (row, col in [0, 2 pad]) and mirror where ``flips``.

    One gather for the whole batch: crop and flip are both just column / row indices.
    """
    n, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    arange_h = torch.arange(h, device=images.device)
    arange_w = torch.arange(w, device=images.device)
    rows = offsets[:, 0:1] + arange_h
    cols = offsets[:, 1:2] + torch.where(flips[:, None], w - 1 - arange_w, arange_w)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


class StreamingLoader(EpochLoader):
    """A split of image files decoded by DataLoader workers, in the same seeded, sharded order."""

    def __init__(self, data: Split, *, image_size: int, workers: int, **kwargs):
        super().__init__(data, **kwargs)
        self.workers = max(0, int(workers))
        self._images = FileImages(data.files, data.labels, image_size, self.augment)

    def _plan_epoch(self, generator: torch.Generator) -> None:
        n = len(self.data)
        self._order = self._epoch_order(generator)
        self._sample_seeds = torch.randint(0, 2**62, (n,), generator=generator)

    def _iterate(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, seeds = self._order.tolist(), self._sample_seeds.tolist()
        plan = [[(order[p], seeds[p]) for p in range(lo, hi)] for lo, hi in self._ranges[start:]]
        # DataLoader draws its worker base seed from this generator, not the global RNG.
        base = torch.Generator().manual_seed(mix_seed(self.seed, STREAM_SALT, self.epoch or 0))
        loader = torch.utils.data.DataLoader(
            self._images, batch_sampler=plan, num_workers=self.workers, generator=base,
            pin_memory=self.device.type == "cuda",
        )
        for images, labels in loader:
            images = images.to(self.device, non_blocking=True)
            yield self._normalize(images), labels.to(self.device, non_blocking=True)
