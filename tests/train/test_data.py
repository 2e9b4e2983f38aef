"""Datasets and loaders: fixed splits, normalized batches, (seed, epoch) determinism, resuming
mid-epoch, rank sharding, augmentation, folder / archive decoding with its cache, and every
DataError a user can cause."""

from __future__ import annotations

import os
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from surgery.errors import DataError
from surgery.train.data import images as images_module
from surgery.train.data import (
    DATASETS,
    ImageDataset,
    Split,
    load_dataset,
    make_loader,
    pad_crop_flip,
)
from surgery.train.data.specs import class_shares

REAL_TAR = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-jpeg.tar.gz"
CLASSES = ["cat", "ant", "bee"]  # deliberately unsorted: classes must come out sorted


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    """No test reads or writes the user's cache or data folder."""
    monkeypatch.setenv("SURGERY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SURGERY_DATA", str(tmp_path / "data"))


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_dataset("digits")


def tiny_dataset(n: int = 10, size: int = 16, seed: int = 0) -> ImageDataset:
    """Random images whose label is their index, so a batch says exactly which samples it holds."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    split = Split(images, torch.arange(n))
    return ImageDataset("tiny", n, [str(i) for i in range(n)], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), size, 3,
                        {"train": split, "test": split})


def epoch_batches(loader, epoch: int, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader.batches(start))


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def class_color(class_index: int, k: int) -> tuple[int, int, int]:
    return (40 + 80 * class_index, 200 - 30 * k, 90 + 20 * k)


def write_image_tree(base: Path, layout: dict[str, int], size=(32, 32), ext: str = "jpg", noise: bool = False) -> None:
    """``base/<split>/<class>/<k>.<ext>``: flat colours per class and image, so decoding can be checked,
    or (``noise``) random pixels, so that every crop and flip changes the image."""
    rng = np.random.default_rng(0)
    for split, per_class in layout.items():
        for class_name in CLASSES:
            folder = base / split / class_name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                if noise:
                    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
                else:
                    image = Image.new("RGB", size, class_color(sorted(CLASSES).index(class_name), k))
                image.save(folder / f"{k:03d}.{ext}", quality=95)


def make_tar(tmp_path: Path, top: str | None = "cifar-jpeg") -> Path:
    """A tiny cifar10-jpeg archive, with its train/ and test/ under ``top`` or at the archive root."""
    root = tmp_path / "tree" / top if top else tmp_path / "tree"
    write_image_tree(root, {"train": 3, "test": 2})
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        if top:
            tar.add(root, arcname=top)
        else:
            for child in sorted(root.iterdir()):
                tar.add(child, arcname=child.name)
    return archive


# ---------------------------------------------------------------------------- built-in datasets


def test_digits_shapes_classes_and_fixed_test_split(digits):
    assert digits.classes == [str(c) for c in range(10)] and digits.num_classes == 10
    assert digits.image_size == 32 and digits.channels == 3
    train, test = digits.splits["train"], digits.splits["test"]
    assert train.images.shape == (1437, 3, 32, 32) and test.images.shape == (360, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert torch.equal(train.images[:, 0], train.images[:, 2])  # grey replicated to 3 channels
    assert train.images.max() == 255 and set(test.labels.tolist()) == set(range(10))
    # The test split comes from a fixed generator: the run seed and val_split never move it.
    other = load_dataset("digits", seed=123, val_split=0.2)
    assert torch.equal(other.splits["test"].images, test.images)
    assert torch.equal(other.splits["test"].labels, test.labels)
    assert load_dataset("digits", image_size=16).splits["train"].images.shape == (1437, 3, 16, 16)


def test_digits_are_scikit_learns_read_without_importing_it():
    """The file scikit-learn ships, read as its loader reads it: importing sklearn.datasets cost a second or two."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from surgery.train.data.builtin import digits_arrays

    images, labels = digits_arrays()
    bunch = load_digits()
    assert images.dtype == bunch.images.dtype and np.array_equal(images, bunch.images)
    assert labels.dtype == bunch.target.dtype and np.array_equal(labels, bunch.target)
    code = ("import sys; from surgery.train.data import load_dataset; load_dataset('digits'); "
            "print(sorted({'sklearn', 'scipy'} & set(sys.modules)))")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "[]"


def test_synthetic_is_fixed_and_learnable():
    a, b = load_dataset("synthetic"), load_dataset("synthetic", seed=5)
    assert torch.equal(a.splits["train"].images, b.splits["train"].images)
    assert len(a.splits["train"]) == 1000 and len(a.splits["test"]) == 200 and a.num_classes == 10
    # Learnable: nearest class mean of the training images classifies the test set.
    train, test = a.splits["train"], a.splits["test"]
    centroids = torch.stack([train.images[train.labels == c].float().mean(0) for c in range(10)]).flatten(1)
    predicted = torch.cdist(test.images.float().flatten(1), centroids).argmin(1)
    assert (predicted == test.labels).float().mean() > 0.9


# ---------------------------------------------------------------------------- loader basics


def test_eval_batches_are_normalized_in_order_and_cover_the_split(digits):
    loader = make_loader(digits, "train", 500, train=False)
    batches = epoch_batches(loader, 0)
    assert [x.shape[0] for x, _ in batches] == [500, 500, 437] and len(loader) == 3
    assert loader.samples_per_epoch == 1437
    x = torch.cat([b[0] for b in batches])
    assert x.dtype == torch.float32 and x.shape == (1437, 3, 32, 32)
    # mean / std come from the train split, so the train split normalizes to 0 / 1
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-3)
    assert torch.allclose(x.std((0, 2, 3)), torch.ones(3), atol=1e-3)
    assert torch.equal(torch.cat([b[1] for b in batches]), digits.splits["train"].labels)


def test_train_loader_drops_last_and_channels_last(digits):
    loader = make_loader(digits, "train", 100, train=True, channels_last=True)
    batches = epoch_batches(loader, 0)
    assert len(batches) == len(loader) == 14 and loader.samples_per_epoch == 1400
    x, y = batches[0]
    assert x.shape == (100, 3, 32, 32) and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_order_and_augmentation_are_a_function_of_seed_and_epoch(digits):
    first = make_loader(digits, "train", 256, train=True, seed=7)
    again = make_loader(digits, "train", 256, train=True, seed=7)
    torch.manual_seed(999)  # the global RNG must play no part
    assert_same_batches(epoch_batches(first, 3), epoch_batches(again, 3))
    labels_epoch3 = torch.cat([y for _, y in epoch_batches(first, 3)])
    assert not torch.equal(labels_epoch3, torch.cat([y for _, y in epoch_batches(first, 4)]))
    other_seed = make_loader(digits, "train", 256, train=True, seed=8)
    assert not torch.equal(labels_epoch3, torch.cat([y for _, y in epoch_batches(other_seed, 3)]))


def test_loading_never_touches_the_global_rng(digits):
    state = torch.get_rng_state()
    loader = make_loader(digits, "train", 256, train=True)
    epoch_batches(loader, 1)
    load_dataset("synthetic", val_split=0.1)
    assert torch.equal(state, torch.get_rng_state())


def test_resuming_mid_epoch_gives_bit_identical_batches(digits):
    full = epoch_batches(make_loader(digits, "train", 128, train=True, seed=1), 2)
    resumed = make_loader(digits, "train", 128, train=True, seed=1)  # as a fresh process would build it
    resumed.set_epoch(0)
    list(resumed)  # an earlier epoch in between changes nothing
    assert_same_batches(epoch_batches(resumed, 2, start=4), full[4:])
    assert epoch_batches(resumed, 2, start=len(resumed)) == []


def test_two_ranks_union_to_the_one_process_batch(digits):
    single = epoch_batches(make_loader(digits, "train", 64, train=True, seed=3), 1)
    ranks = [make_loader(digits, "train", 64, train=True, seed=3, rank=r, world_size=2) for r in range(2)]
    per_rank = [epoch_batches(loader, 1) for loader in ranks]
    assert len(ranks[0]) == len(single) and ranks[0].samples_per_epoch == len(single) * 32
    for i, (x, y) in enumerate(single):
        assert torch.equal(torch.cat([per_rank[0][i][0], per_rank[1][i][0]]), x)  # augmentation included
        assert torch.equal(torch.cat([per_rank[0][i][1], per_rank[1][i][1]]), y)


def test_sharded_evaluation_covers_every_sample_once():
    ds = tiny_dataset(n=10)
    loaders = [make_loader(ds, "test", 4, train=False, rank=r, world_size=4) for r in range(4)]
    seen = torch.cat([y for loader in loaders for _, y in epoch_batches(loader, 0)])
    assert sorted(seen.tolist()) == list(range(10))
    # the last global batch holds 2 samples for 4 ranks: ranks 2 and 3 get one batch fewer
    assert [len(loader) for loader in loaders] == [3, 3, 2, 2]
    assert sum(loader.samples_per_epoch for loader in loaders) == 10


# ---------------------------------------------------------------------------- augmentation


def test_pad_crop_flip_shifts_with_zero_padding_and_mirrors():
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.uint8).view(2, 3, 6, 6)
    centered = pad_crop_flip(images, torch.full((2, 2), 2), torch.tensor([False, True]), pad=2)
    assert torch.equal(centered[0], images[0]) and torch.equal(centered[1], images[1].flip(-1))
    corner = pad_crop_flip(images, torch.zeros(2, 2, dtype=torch.long), torch.tensor([False, False]), pad=2)
    assert torch.equal(corner[:, :, 2:, 2:], images[:, :, :4, :4])
    assert corner[:, :, :2].eq(0).all() and corner[:, :, :, :2].eq(0).all()


def every_crop_and_flip(image: torch.Tensor, pad: int) -> torch.Tensor:
    side = 2 * pad + 1
    offsets = torch.cartesian_prod(torch.arange(side), torch.arange(side)).repeat(2, 1)
    flips = torch.arange(2 * side * side) >= side * side
    return pad_crop_flip(image.expand(len(flips), -1, -1, -1), offsets, flips, pad)


def test_training_batches_are_random_crops_and_flips_of_the_images():
    ds = tiny_dataset(n=48, size=16)
    plain = epoch_batches(make_loader(ds, "train", 48, train=True, augment=False), 0)[0]
    augmented = epoch_batches(make_loader(ds, "train", 48, train=True), 0)[0]
    assert torch.equal(plain[1], augmented[1])  # same order: augmentation does not move samples
    assert augmented[0].shape == plain[0].shape and not torch.equal(augmented[0], plain[0])
    mean, std = torch.tensor(ds.mean).view(3, 1, 1), torch.tensor(ds.std).view(3, 1, 1)
    flipped = 0
    for x, label in zip(augmented[0], augmented[1]):
        pixels = (x * std + mean).mul(255).round().to(torch.uint8)
        candidates = every_crop_and_flip(ds.splits["train"].images[label], pad=2)
        match = (candidates == pixels).flatten(1).all(1).nonzero().flatten()
        assert len(match) >= 1, "an augmented image is not a pad-crop(-flip) of its source"
        flipped += int(match[0] >= len(candidates) // 2)
    assert 0 < flipped < 48  # flips happen, but not always


# ---------------------------------------------------------------------------- val split


def test_val_split_is_a_disjoint_seeded_part_of_train():
    whole = load_dataset("synthetic")
    ds = load_dataset("synthetic", val_split=0.1, seed=4)
    train, val = ds.splits["train"], ds.splits["val"]
    assert len(val) == 100 and len(train) == 900
    rows = {bytes(img.numpy()) for img in whole.splits["train"].images}
    assert len(rows) == 1000  # noise makes every synthetic image unique, so rows identify samples
    train_rows = {bytes(img.numpy()) for img in train.images}
    val_rows = {bytes(img.numpy()) for img in val.images}
    assert train_rows | val_rows == rows and not train_rows & val_rows
    assert torch.equal(ds.splits["test"].images, whole.splits["test"].images)
    assert torch.equal(load_dataset("synthetic", val_split=0.1, seed=4).splits["val"].images, val.images)
    assert not torch.equal(load_dataset("synthetic", val_split=0.1, seed=5).splits["val"].images, val.images)
    assert len(epoch_batches(make_loader(ds, "val", 40, train=False), 0)) == 3


# ---------------------------------------------------------------------------- folders and archives


@pytest.mark.parametrize("top", ["cifar-jpeg", None], ids=["top-level-folder", "flat"])
def test_cifar10_jpeg_from_a_tar_gz(tmp_path, top):
    ds = load_dataset(f"cifar10-jpeg:{make_tar(tmp_path, top)}")
    assert ds.classes == sorted(CLASSES) and ds.image_size == 32
    train, test = ds.splits["train"], ds.splits["test"]
    assert train.images.shape == (9, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    expected = torch.tensor(class_color(2, 1), dtype=torch.float32).view(3, 1, 1)
    assert (train.images[7].float() - expected).abs().max() <= 3  # JPEG is lossy, flat colours barely


def test_imagefolder_with_val_folder_resizes_and_matches_png_pixels(tmp_path, monkeypatch):
    write_image_tree(tmp_path / "imgs", {"train": 2, "val": 1}, size=(40, 30), ext="png")
    ds = load_dataset(f"imagefolder:{tmp_path / 'imgs'}", image_size=16)
    assert set(ds.splits) == {"train", "test"} and ds.image_size == 16
    assert ds.splits["test"].images.shape == (3, 3, 16, 16)
    expected = torch.tensor(class_color(0, 0), dtype=torch.uint8).view(3, 1, 1).expand(3, 16, 16)
    assert torch.equal(ds.splits["test"].images[0], expected)  # lossless and flat: exact after resizing
    # a folder's cache is keyed by its files: a second load decodes nothing, a new file invalidates it
    decoded = []
    real_decode = images_module.decode_image
    monkeypatch.setattr(images_module, "decode_image", lambda *a: decoded.append(a) or real_decode(*a))
    assert torch.equal(load_dataset(f"imagefolder:{tmp_path / 'imgs'}", image_size=16).splits["test"].images,
                       ds.splits["test"].images) and decoded == []
    Image.new("RGB", (40, 30)).save(tmp_path / "imgs" / "train" / "ant" / "new.png")
    assert len(load_dataset(f"imagefolder:{tmp_path / 'imgs'}", image_size=16).splits["train"]) == 7
    assert len(decoded) == 10


def test_second_load_reads_the_cache_and_a_changed_archive_is_decoded_again(tmp_path, monkeypatch):
    archive = make_tar(tmp_path)
    first = load_dataset(f"cifar10-jpeg:{archive}")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(images_module, "decode_image", no_decoding)
    second = load_dataset(f"cifar10-jpeg:{archive}")
    assert torch.equal(first.splits["train"].images, second.splits["train"].images)
    assert first.mean == second.mean and first.classes == second.classes
    stat = archive.stat()
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset(f"cifar10-jpeg:{archive}")


def test_streamed_imagefolder_is_deterministic_resumable_and_sharded(tmp_path):
    write_image_tree(tmp_path / "big", {"train": 4, "val": 2}, size=(48, 40), ext="png", noise=True)
    ds = load_dataset(f"imagefolder:{tmp_path / 'big'}", image_size=24, stream=True)
    assert ds.splits["train"].streamed and len(ds.splits["train"]) == 12
    full = epoch_batches(make_loader(ds, "train", 4, train=True, workers=0, seed=2), 5)
    assert len(full) == 3 and full[0][0].shape == (4, 3, 24, 24) and full[0][0].dtype == torch.float32
    plain = epoch_batches(make_loader(ds, "train", 4, train=True, augment=False, workers=0, seed=2), 5)
    assert torch.equal(plain[0][1], full[0][1]) and not torch.equal(plain[0][0], full[0][0])
    other_epoch = epoch_batches(make_loader(ds, "train", 4, train=True, workers=0, seed=2), 6)
    assert not torch.equal(torch.cat([x for x, _ in other_epoch]), torch.cat([x for x, _ in full]))
    in_worker = epoch_batches(make_loader(ds, "train", 4, train=True, workers=1, seed=2), 5)
    assert_same_batches(full, in_worker)  # augmentation is seeded per sample, not per process
    assert_same_batches(epoch_batches(make_loader(ds, "train", 4, train=True, workers=0, seed=2), 5, 1), full[1:])
    halves = [epoch_batches(make_loader(ds, "train", 4, train=True, workers=0, seed=2, rank=r, world_size=2), 5)
              for r in range(2)]
    assert torch.equal(torch.cat([halves[0][1][0], halves[1][1][0]]), full[1][0])
    evaluated = epoch_batches(make_loader(ds, "test", 4, train=False, workers=0), 0)
    assert torch.cat([y for _, y in evaluated]).tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.skipif(not REAL_TAR.is_file(), reason=f"the shared CIFAR-10 JPEG archive is absent ({REAL_TAR})")
def test_real_cifar10_jpeg_archive(monkeypatch):
    # Decoding 60,000 JPEGs takes ~10 s, so it happens once per machine into a shared temporary
    # cache (written atomically, so parallel test processes are safe); later runs read the cache.
    monkeypatch.setenv("SURGERY_CACHE", str(Path(tempfile.gettempdir()) / "tost-surgery-test-cache"))
    started = time.perf_counter()
    ds = load_dataset(f"cifar10-jpeg:{REAL_TAR}")
    print(f"cifar10-jpeg load: {time.perf_counter() - started:.1f} s")
    assert ds.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert ds.splits["train"].images.shape == (50000, 3, 32, 32)
    assert ds.splits["test"].images.shape == (10000, 3, 32, 32)
    assert torch.bincount(ds.splits["train"].labels).tolist() == [5000] * 10
    assert torch.bincount(ds.splits["test"].labels).tolist() == [1000] * 10
    # the statistics of the original CIFAR-10 training set, to JPEG accuracy
    assert np.allclose(ds.mean, (0.4914, 0.4822, 0.4465), atol=0.01)
    assert np.allclose(ds.std, (0.2470, 0.2435, 0.2616), atol=0.01)


# ---------------------------------------------------------------------------- errors


def test_dataset_names():
    assert set(DATASETS) == {"cifar10", "cifar100", "cifar10-jpeg", "imagefolder", "digits", "synthetic"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cifar-10", r"unknown dataset 'cifar-10'.*cifar10-jpeg:PATH.*Did you mean 'cifar10'"),
        ("mnist", r"unknown dataset 'mnist'.*known: cifar10, cifar100"),
        ("imagefolder", r"needs a path: 'imagefolder:PATH'"),
        ("digits:foo", r"takes no ':foo' part"),
        ("", r"empty"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(DataError, match=message):
        load_dataset(spec)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"val_split": 1.0}, r"val_split=1.0 is outside \[0, 1\)"),
    ({"val_split": -0.1}, r"val_split=-0.1 is outside"),
    ({"val_split": 0.0001}, r"holds out 0; pick a fraction"),
    ({"image_size": 0}, r"image_size=0 is not a positive integer"),
    ({"stream": True}, r"stream=True applies to folder datasets"),
])
def test_bad_load_options(kwargs, message):
    with pytest.raises(DataError, match=message):
        load_dataset("synthetic", **kwargs)


def test_a_subset_is_class_balanced_and_the_same_for_every_run_seed():
    full = load_dataset("digits")
    one = load_dataset("digits", subset=95, seed=1)
    other = load_dataset("digits", subset=95, seed=2, val_split=0.2)
    assert torch.bincount(one.splits["train"].labels).tolist() == [10] * 5 + [9] * 5
    assert len(other.splits["train"]) == 76 and len(other.splits["val"]) == 19  # val comes out of the subset
    joined = torch.cat([other.splits["train"].images, other.splits["val"].images])
    assert sorted(map(bytes, joined.flatten(1).numpy())) == sorted(map(bytes, one.splits["train"].images.flatten(1).numpy()))
    assert torch.equal(one.splits["test"].images, full.splits["test"].images)  # the test split stays whole
    moved = load_dataset("digits", subset=95, subset_seed=1)
    assert not torch.equal(moved.splits["train"].images, one.splits["train"].images)


def test_class_shares_give_a_small_class_all_it_has_and_the_rest_to_the_others():
    assert class_shares(10, [1, 5, 5]) == [1, 5, 4]
    assert class_shares(7, [3, 3, 3]) == [3, 2, 2]


@pytest.mark.parametrize(("subset", "message"), [
    (0, r"subset=0 is not a positive integer"),
    (2.5, r"subset=2.5 is not a positive integer"),
    (True, r"subset=True is not a positive integer"),
    (10**6, r"subset=1000000 asks for more images than the 1437 of the training split of 'digits'; give at most 1437"),
    (9, r"subset=9 is smaller than the 10 classes of 'digits'.*give at least 10"),
])
def test_bad_subsets(subset, message):
    with pytest.raises(DataError, match=message):
        load_dataset("digits", subset=subset)


def test_missing_cifar_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match=r"cifar10: no usable data in .*data.*download=True.*--download.*--data-root"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match=rf"cifar100: no usable data in {tmp_path / 'elsewhere'}"):
        load_dataset("cifar100", root=str(tmp_path / "elsewhere"))


def test_missing_path_says_where_it_looked(tmp_path):
    with pytest.raises(DataError, match=rf"does not exist \(looked at {tmp_path / 'nope.tar.gz'}\)"):
        load_dataset(f"cifar10-jpeg:{tmp_path / 'nope.tar.gz'}")


def test_folder_without_the_layout_says_what_it_found(tmp_path):
    (tmp_path / "photos" / "cats").mkdir(parents=True)
    (tmp_path / "photos" / "dogs").mkdir()
    with pytest.raises(DataError, match=r"expected layout train/<class>/<image>.*found: cats, dogs"):
        load_dataset(f"imagefolder:{tmp_path / 'photos'}")
    write_image_tree(tmp_path / "no_eval", {"train": 1})
    with pytest.raises(DataError, match=r"val/ or test/<class>/<image>; found: train"):
        load_dataset(f"imagefolder:{tmp_path / 'no_eval'}")


def test_a_file_that_is_no_archive(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"cannot read the archive .*notes.txt.*Pass a folder or a .tar"):
        load_dataset(f"cifar10-jpeg:{tmp_path / 'notes.txt'}")


def test_archive_without_the_layout_says_what_it_found(tmp_path):
    write_image_tree(tmp_path / "tree", {"training": 1})
    archive = tmp_path / "wrong.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree" / "training", arcname="training")
    with pytest.raises(DataError, match=r"expected layout.*found: .*training/ant"):
        load_dataset(f"cifar10-jpeg:{archive}")


def test_eval_classes_missing_from_train_and_undecodable_files(tmp_path):
    write_image_tree(tmp_path / "a", {"train": 1, "test": 1})
    (tmp_path / "a" / "test" / "zebra").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "a" / "test" / "zebra" / "0.png")
    with pytest.raises(DataError, match=r"classes with no training images: zebra"):
        load_dataset(f"imagefolder:{tmp_path / 'a'}")
    write_image_tree(tmp_path / "b", {"train": 1, "test": 1})
    (tmp_path / "b" / "train" / "ant" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"cannot decode .*broken.jpg.*Remove or replace"):
        load_dataset(f"imagefolder:{tmp_path / 'b'}")


def test_large_images_need_an_image_size(tmp_path):
    write_image_tree(tmp_path / "big", {"train": 1, "val": 1}, size=(100, 80))
    with pytest.raises(DataError, match=r"100x80.*pass image_size="):
        load_dataset(f"imagefolder:{tmp_path / 'big'}")


def test_bad_loader_requests(digits):
    with pytest.raises(DataError, match=r"no split 'val'; it has train, test.*val_split > 0"):
        make_loader(digits, "val", 32, train=False)
    with pytest.raises(DataError, match=r"batch_size=30 is not divisible by world_size=4.*e.g. 28"):
        make_loader(digits, "train", 30, train=True, world_size=4)
    with pytest.raises(DataError, match=r"rank=2 must be in \[0, 2\)"):
        make_loader(digits, "train", 32, train=True, rank=2, world_size=2)
    with pytest.raises(DataError, match=r"has 1437 images, fewer than one global batch of 2000"):
        make_loader(digits, "train", 2000, train=True)
    loader = make_loader(digits, "train", 512, train=True)
    with pytest.raises(DataError, match=r"start=3\) is outside \[0, 2\]"):
        loader.batches(3)
