"""Budgets: scores become masks with exact counts, globally or per layer, uniform or ERK."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from surgery.errors import MaskError
from surgery.pruning import Budget, erk_densities, masks_from_scores, prunable_for, random_masks
from surgery.pruning.budget import achieved_sparsity


def scores(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"layer{i}.weight": torch.rand(shape, generator=g) for i, shape in enumerate(shapes)}


def test_layer_budget_keeps_exactly_round_density_times_numel_per_layer():
    s = scores((7, 3, 3, 3), (10, 7), (5, 10))
    masks = masks_from_scores(s, Budget(0.6, "layer"))
    for name, m in masks.items():
        assert int(m.count_nonzero()) == round(0.4 * m.numel())
        kept, pruned = s[name][m], s[name][~m]
        assert kept.min() >= pruned.max()  # the highest scores are the ones kept


def test_global_budget_ranks_all_layers_together():
    s = {"a.weight": torch.tensor([5.0, 4.0, 3.0, 2.0]), "b.weight": torch.tensor([0.5, 0.1, 9.0, 0.2])}
    masks = masks_from_scores(s, Budget(0.5, "global"))
    assert masks["a.weight"].tolist() == [True, True, True, False] and masks["b.weight"].tolist() == [False, False, True, False]
    big = scores((64, 32, 3, 3), (100, 64), (10, 100), seed=1)
    kept = sum(int(m.count_nonzero()) for m in masks_from_scores(big, Budget(0.9, "global")).values())
    total = sum(t.numel() for t in big.values())
    assert abs(kept - round(0.1 * total)) < 1  # overall within one weight


def test_erk_densities_follow_sum_over_product_and_fill_the_budget():
    shapes = {"conv1.weight": (16, 3, 3, 3), "conv2.weight": (64, 16, 3, 3), "fc.weight": (10, 64)}
    densities = erk_densities(shapes, 0.1)
    sizes = {n: torch.Size(s).numel() for n, s in shapes.items()}
    kept = sum(densities[n] * sizes[n] for n in shapes)
    assert kept == pytest.approx(0.1 * sum(sizes.values()))
    free = [n for n in shapes if densities[n] < 1]
    ratios = {n: densities[n] / (sum(shapes[n]) / sizes[n]) for n in free}
    assert max(ratios.values()) == pytest.approx(min(ratios.values()))  # one epsilon for every non-dense layer
    assert densities["conv1.weight"] > densities["conv2.weight"]  # small layers stay denser


def test_erk_makes_layers_dense_instead_of_passing_density_one():
    shapes = {"tiny.weight": (2, 2), "huge.weight": (512, 512)}
    densities = erk_densities(shapes, 0.5)
    assert densities["tiny.weight"] == 1.0 and 0 < densities["huge.weight"] < 1
    kept = sum(densities[n] * torch.Size(s).numel() for n, s in shapes.items())
    assert kept == pytest.approx(0.5 * (4 + 512 * 512))


def test_erk_random_masks_hit_the_overall_target():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 64, 3), nn.Flatten(), nn.Linear(64, 10))
    masks = random_masks(model, 0.9, distribution="erk")
    kept = sum(int(m.count_nonzero()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert abs(kept / total - 0.1) < len(masks) / total + 1e-9
    sparsity = achieved_sparsity(masks)
    assert sparsity["0.weight"] < sparsity["1.weight"]


def test_prunable_for_can_keep_the_stem_and_head_dense():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8, 4), nn.Linear(4, 2))
    assert list(prunable_for(model)) == ["0.weight", "2.weight", "4.weight", "5.weight"]
    assert list(prunable_for(model, dense_first=True, dense_last=True)) == ["2.weight", "4.weight"]
    assert list(prunable_for(model, ["linear"])) == ["4.weight", "5.weight"]


def test_exclude_patterns_keep_matching_weights_dense():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8, 4), nn.Linear(4, 2))
    assert list(prunable_for(model, exclude=["4.*", "0.weight"])) == ["2.weight", "5.weight"]
    with pytest.raises(MaskError, match=r"exclude pattern 'fc\.\*' matches no prunable weight.*0\.weight, 2\.weight"):
        prunable_for(model, exclude=["fc.*"])
    masks = random_masks(model, 0.5)
    assert "4.weight" in masks  # without exclude every weight is masked; with it, none that matches
    from surgery.pruning import find_masks

    assert set(find_masks(model, "random", 0.5, exclude=["4.*"])) == {"0.weight", "2.weight", "5.weight"}


def test_dense_last_keeps_a_conv_classifier_dense_too():
    model = nn.Sequential(nn.Linear(4, 8), nn.Unflatten(1, (8, 1, 1)), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 3, 1))
    assert list(prunable_for(model, dense_first=True, dense_last=True)) == ["2.weight"]


@pytest.mark.parametrize(("budget", "message"), [
    (lambda: Budget(1.0), r"sparsity 1.0 is outside \[0, 1\)"),
    (lambda: Budget(-0.1), r"sparsity -0.1 is outside"),
    (lambda: Budget(0.5, "globl"), r"unknown budget scope 'globl'.*global"),
    (lambda: Budget(0.5, "layer", "erdos"), r"unknown layer-wise distribution 'erdos'"),
    (lambda: Budget(0.5, "global", "erk"), r"scope 'global' ranks all layers together"),
])
def test_bad_budgets(budget, message):
    with pytest.raises(MaskError, match=message):
        budget()


def test_non_finite_scores_are_refused_naming_the_layer():
    with pytest.raises(MaskError, match="scores of 'b.weight' hold NaN"):
        masks_from_scores({"a.weight": torch.ones(3), "b.weight": torch.tensor([1.0, float("nan")])}, Budget(0.5))


def test_no_prunable_weight_is_an_error_naming_the_fix():
    with pytest.raises(MaskError, match="no weight to prune.*widen prunable"):
        prunable_for(nn.Sequential(nn.ReLU()))
