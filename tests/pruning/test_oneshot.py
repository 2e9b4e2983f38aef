"""One-shot masks of a model's parts: what `surgery prune --submodule` and a run's mask stage share."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from surgery.pruning.oneshot import oneshot_masks
from surgery.pruning.registry import METHODS, method
from surgery.zoo.models import build_model


@pytest.fixture
def synflow_options(monkeypatch) -> dict:
    """The options SynFlow is called with (one round, so the test stays quick)."""
    seen: dict = {}
    synflow = method("synflow")

    def spy(model, names, budget, **options):
        seen.update(options)
        return synflow.find(model, names, budget, **{**options, "rounds": 1})

    monkeypatch.setitem(METHODS, "synflow", dataclasses.replace(synflow, find=spy))
    return seen


def test_a_part_is_masked_alone_under_the_whole_models_names(synflow_options):
    model = build_model("cifar:resnet20", 10)
    masks = oneshot_masks(model, "synflow", 0.9, inputs=(torch.randn(2, 3, 16, 16),), parts=["layer2"],
                          allow_empty_layers=True)
    assert masks and all(name.startswith("layer2.") for name in masks)
    assert set(masks) <= {name for name, _ in model.named_parameters()}
    kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert kept == pytest.approx(0.1, abs=0.01)  # the part alone is 90% sparse


def test_synflow_scores_each_part_on_an_input_shaped_like_what_the_part_gets(synflow_options):
    model = build_model("cifar:resnet20", 10)
    oneshot_masks(model, "synflow", 0.9, inputs=(torch.randn(2, 3, 16, 16),), parts=["layer2"],
                  allow_empty_layers=True)
    assert synflow_options["input_shape"] == (16, 16, 16)  # layer1's 16 channels at 16 x 16, not the image's 3


def test_an_input_shape_option_wins_over_the_parts_input(synflow_options):
    model = build_model("cifar:resnet20", 10)
    oneshot_masks(model, "synflow", 0.9, inputs=(torch.randn(2, 3, 16, 16),), options={"input_shape": (3, 8, 8)},
                  allow_empty_layers=True)
    assert synflow_options["input_shape"] == (3, 8, 8)
