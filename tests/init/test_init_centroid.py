"""ASNI's centroid initialization: the 2L numbers, where they land, and how they travel with a mask."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import surgery
from surgery.errors import MaskError
from surgery.init.centroid import (
    apply_centroids,
    apply_centroids_from_metadata,
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
from surgery.compiler.masks import load_masks, masked_parameters, prunable_weights, save_masks
from surgery.zoo.models import build_model

LEARNED = {
    "0.weight": torch.tensor([[0.5, -1.0, 2.0], [-3.0, 1.5, 0.25]]),
    "0.bias": torch.tensor([0.3, -0.3]),
    "1.weight": torch.tensor([2.0, 3.0]),
    "1.bias": torch.tensor([0.1, 0.2]),
    "1.running_mean": torch.zeros(2),
    "1.running_var": torch.ones(2),
    "1.num_batches_tracked": torch.tensor(0),
    "2.weight": torch.tensor([[0.0, 4.0], [1.0, -0.5]]),
    "2.bias": torch.tensor([0.7, 0.7]),
}
MASKS = {
    "0.weight": torch.tensor([[1, 1, 1], [1, 0, 1]], dtype=torch.bool),  # 1.5 is pruned
    "2.weight": torch.tensor([[1, 1], [0, 0]], dtype=torch.bool),  # keeps a learned 0.0 and 4.0 only
}
# by hand: layer 0 keeps +0.5 +2.0 +0.25 and -1.0 -3.0; layer 2 keeps +4.0 (and a zero), no negative
EXPECTED = {"0.weight": (2.75 / 3, -2.0), "2.weight": (4.0, 0.0)}


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2), nn.Linear(2, 2))


def test_centroids_are_the_means_of_kept_positive_and_negative_weights():
    assert centroids(LEARNED, MASKS) == EXPECTED


def test_centroids_of_a_model_read_its_weights():
    model = small_model()
    model.load_state_dict(LEARNED)
    assert centroids(model, MASKS) == EXPECTED


def test_signs_mark_kept_positive_entries():
    found = signs(LEARNED, MASKS)
    assert torch.equal(found["0.weight"], torch.tensor([[True, False, True], [False, False, True]]))
    assert torch.equal(found["2.weight"], torch.tensor([[False, True], [False, False]]))


def test_apply_centroids_puts_c_plus_c_minus_and_zero_in_place():
    model = small_model()
    result = apply_centroids(model, LEARNED, MASKS)

    c_plus, c_minus = (float(torch.tensor(c, dtype=torch.float32)) for c in EXPECTED["0.weight"])
    assert torch.equal(model[0].weight, torch.tensor([[c_plus, c_minus, c_plus], [c_minus, 0.0, c_plus]]))
    # the learned exact zero keeps no sign: it stays 0, like the pruned entries
    assert torch.equal(model[2].weight, torch.tensor([[0.0, 4.0], [0.0, 0.0]]))
    assert torch.equal(model[1].weight, torch.ones(2)) and torch.equal(model[1].bias, torch.zeros(2))
    assert not model[0].bias.any() and not model[2].bias.any()
    assert result.kept == {"0.weight": 5, "2.weight": 1}
    assert result.norms == ["1"] and set(result.biases) == {"0.bias", "1.bias", "2.bias"}


def test_centroid_init_needs_to_know_the_kept_entries():
    with pytest.raises(MaskError, match="which entries"):
        centroid_init(small_model(), EXPECTED, signs(LEARNED, MASKS))


def test_centroids_and_signs_round_trip_through_a_mask_files_metadata(tmp_path):
    found, positive = centroids(LEARNED, MASKS), signs(LEARNED, MASKS)
    meta = {**centroids_to_metadata(found), **signs_to_metadata(positive, MASKS)}
    assert all(isinstance(v, str) for v in meta.values())
    path = save_masks(MASKS, tmp_path / "asni.safetensors", method="asni", **meta)

    masks, metadata = load_masks(path)
    assert set(masks) == set(MASKS)  # still an ordinary mask file: the signs are no extra tensors
    assert centroids_from_metadata(metadata) == found
    restored = signs_from_metadata(metadata, masks)
    assert all(torch.equal(restored[n], positive[n]) for n in MASKS)


def test_signs_saved_with_another_mask_are_refused():
    meta = signs_to_metadata(signs(LEARNED, MASKS), MASKS)
    other = {**MASKS, "0.weight": torch.ones(2, 3, dtype=torch.bool)}
    with pytest.raises(MaskError, match="another mask"):
        signs_from_metadata(meta, other)


@pytest.mark.parametrize("suffix", [".safetensors", ".json"])
def test_save_and_load_centroids(tmp_path, suffix):
    found = {"a.weight": (0.1 + 0.2, -1 / 3), "b.weight": (1e-8, 0.0)}  # floats that print long
    positive = signs(LEARNED, MASKS) if suffix == ".safetensors" else None
    loaded, loaded_signs = load_centroids(save_centroids(tmp_path / f"c{suffix}", found, positive, model="m"))
    assert loaded == found
    if positive is None:
        assert loaded_signs == {}
    else:
        assert set(loaded_signs) == set(positive)
        assert all(torch.equal(loaded_signs[n], positive[n]) for n in positive)


@pytest.fixture(scope="module")
def learned_and_masks():
    torch.manual_seed(1)
    learned = build_model("cifar:resnet20", 10)
    generator = torch.Generator().manual_seed(2)
    masks = {n: torch.rand(p.shape, generator=generator) > 0.7 for n, p in prunable_weights(learned).items()}
    return learned.state_dict(), masks


def test_works_on_a_masked_compiled_model(learned_and_masks):
    learned, masks = learned_and_masks
    ghosted = surgery.compile(build_model("cifar:resnet20", 10), torch.randn(2, 3, 32, 32), {"masks": masks})

    result = apply_centroids(ghosted, learned, masks)

    assert len(result.centroids) == len(masks) == len(masked_parameters(ghosted))
    for name, mask in masks.items():
        c_plus, c_minus = (torch.tensor(c, dtype=torch.float32) for c in result.centroids[name])
        original = ghosted.get_submodule(name.rsplit(".", 1)[0]).parametrizations.weight.original
        theta = learned[name]
        assert torch.equal(original[mask & (theta > 0)], c_plus.expand(int((mask & (theta > 0)).sum())))
        assert torch.equal(original[mask & (theta < 0)], c_minus.expand(int((mask & (theta < 0)).sum())))
        assert not original[~mask].any()
        assert c_plus > 0 > c_minus
    assert torch.isfinite(ghosted(torch.randn(2, 3, 32, 32))).all()


def test_a_mask_file_carries_the_whole_initialization(tmp_path, learned_and_masks):
    learned, masks = learned_and_masks
    meta = {**centroids_to_metadata(centroids(learned, masks)), **signs_to_metadata(signs(learned, masks), masks)}
    path = save_masks(masks, tmp_path / "ticket.safetensors", method="asni", **meta)

    expected = surgery.compile(build_model("cifar:resnet20", 10), torch.randn(2, 3, 32, 32), {"masks": masks})
    apply_centroids(expected, learned, masks)
    from_file = surgery.compile(build_model("cifar:resnet20", 10), torch.randn(2, 3, 32, 32), {"masks": str(path)})
    apply_centroids_from_metadata(from_file, load_masks(path)[1])

    for name, tensor in expected.state_dict().items():
        assert torch.equal(from_file.state_dict()[name], tensor), name
