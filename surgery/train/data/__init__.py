"""Image datasets and deterministic, resumable, shardable loaders for the trainer.

``load_dataset(spec)`` returns an :class:`ImageDataset`: uint8 ``N x 3 x H x W`` images and
int64 labels per split, held in memory (or, for a large ``imagefolder``, a list of files
streamed from disk). ``make_loader`` turns one split into batches of normalized float
images on the training device.

One concern per module:

- ``specs``: dataset specs (``DATASETS``) -> ``load_dataset``; the validation hold-out;
- ``builtin``: ``digits``, ``synthetic``, ``cifar10`` / ``cifar100``;
- ``folders``: ``cifar10-jpeg:PATH`` / ``imagefolder:PATH`` listing, decoding, streaming;
- ``images``: one image file to pixels (decode, resize, crop);
- ``cache``: the decode cache under ``$SURGERY_CACHE`` (default ``~/.cache/tost-surgery``);
- ``dataset``: the ``ImageDataset`` / ``Split`` containers;
- ``loaders``: ``make_loader`` and the loaders (order, augmentation, sharding, resuming);
- ``seeds``: the per-purpose generator seeds.
"""

from surgery.train.data.dataset import ImageDataset, Split
from surgery.train.data.folders import IN_MEMORY_LIMIT_BYTES
from surgery.train.data.loaders import DeviceLoader, EpochLoader, StreamingLoader, make_loader, pad_crop_flip
from surgery.train.data.specs import DATASETS, SPEC_FORMS, load_dataset

__all__ = [
    "DATASETS", "IN_MEMORY_LIMIT_BYTES", "SPEC_FORMS", "DeviceLoader", "EpochLoader", "ImageDataset", "Split",
    "StreamingLoader", "load_dataset", "make_loader", "pad_crop_flip",
]
