"""CIFAR networks (``cifar:NAME``): they build, match the papers' sizes and survive the round trip."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import seeded
from torch import nn

import surgery
from surgery.zoo.cifar import CIFAR_MODELS, he_cifar_resnet
from surgery.errors import UnknownModelError
from surgery.zoo.models import build_model, default_input_size, input_channels
from surgery.pruning import random_masks

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
TOST = {"ghost_skip": {"projection": "conv1x1"}, "soft_activation": {"kind": "pswish"}}


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def relu_calls(model: nn.Module) -> int:
    """ReLU call sites in the traced graph (a block's one ReLU module is called twice)."""
    traced = surgery.trace(model)
    modules = dict(traced.named_modules())
    return sum(n.op == "call_module" and isinstance(modules[n.target], nn.ReLU) for n in traced.graph.nodes)


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_every_cifar_model_builds_and_gives_logits(name):
    model = seeded(build_model, f"cifar:{name}", num_classes=7).eval()
    with torch.no_grad():
        assert model(X).shape == (2, 7)


def test_num_classes_none_means_ten_and_in_channels_is_passed_on():
    assert build_model("cifar:resnet20").fc.out_features == 10
    gray = build_model("cifar:resnet20", in_channels=1).eval()
    assert input_channels(gray) == 1
    with torch.no_grad():
        assert gray(X[:, :1]).shape == (2, 10)


def test_cifar_specs_default_to_32_pixels():
    with torch.device("meta"):
        model = build_model("cifar:vgg16")
    assert default_input_size(model, "cifar:vgg16") == 32


# ------------------------------------------------------------------ the layouts


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("resnet18", 11.16e6, 11.18e6),  # 11.17M: the CIFAR ResNet-18 of the papers' code
        ("resnet20", 0.265e6, 0.275e6),  # He et al.: 0.27M
        ("resnet110", 1.70e6, 1.75e6),  # He et al.: 1.7M
        ("grasp_resnet32", 1.85e6, 1.87e6),  # GraSP / ToST Table 2: twice He et al.'s widths
    ],
)
def test_parameter_counts_match_the_published_ones(name, low, high):
    with torch.device("meta"):
        model = build_model(f"cifar:{name}", num_classes=10)
    assert low <= parameter_count(model) <= high


def test_vgg16_has_the_parameter_count_the_papers_report():
    with torch.device("meta"):
        assert parameter_count(build_model("cifar:vgg16", num_classes=10)) == 14_728_266


def test_tost_table2_resnet32_is_grasps_double_width_resnet32():
    model = seeded(build_model, "cifar:grasp_resnet32")
    stages = [model.layer1, model.layer2, model.layer3]
    assert [len(stage) for stage in stages] == [5, 5, 5]  # 6n + 2 = 32
    assert [stage[0].conv1.out_channels for stage in stages] == [32, 64, 128]
    assert model.layer2[0].shortcut is not None and model.layer1[0].shortcut is None
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.1) and not model.fc.bias.any()


def test_resnet18_has_a_stride_one_stem_no_max_pool_and_projection_shortcuts():
    model = build_model("cifar:resnet18")
    assert (model.conv1.kernel_size, model.conv1.stride) == ((3, 3), (1, 1))
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.layer1[0].shortcut is None  # identity where shapes match
    conv, norm = model.layer2[0].shortcut
    assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and isinstance(norm, nn.BatchNorm2d)


def test_convs_start_from_kaiming_normal():
    weight = seeded(build_model, "cifar:resnet18").layer4[1].conv2.weight
    fan_out = weight.shape[0] * weight[0, 0].numel()
    assert weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)


# ------------------------------------------------------------------ round trip


@pytest.mark.parametrize("name", ["resnet20", "resnet18", "vgg16"])
def test_cifar_model_survives_the_full_round_trip(name):
    model = seeded(build_model, f"cifar:{name}", num_classes=10).eval()
    masks = random_masks(model, 0.9)
    ghosted = surgery.compile(model, X, {**TOST, "masks": masks})

    summary = surgery.manifest_of(ghosted).summary()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert summary["convs_found"] == len(convs)  # the graph sees every conv
    body = sum(m.kernel_size == (3, 3) for m in convs) - 1  # ToST's placement: every 3x3 conv but the stem
    assert summary["convs_covered"] == summary["convs_targeted"] == body
    assert summary["activations_swapped"] == relu_calls(model) and summary["weights_masked"] == len(masks)

    ghosted.train()
    ghosted(X).square().mean().backward()
    projections = surgery.ghost_parameters(ghosted)
    assert projections and all(p.grad is not None for p in projections)
    ghosted.eval()

    clean = surgery.deghost(ghosted)
    surgery.verify(model, clean, X, ghosted=ghosted)  # raises on any difference
    state = clean.state_dict()
    assert all(not state[param][~mask].any() for param, mask in masks.items())  # pruned stays zero


# ---------------------------------------------------------------------- errors


def test_an_unknown_cifar_name_suggests_close_ones_and_lists_them_all():
    with pytest.raises(UnknownModelError) as caught:
        build_model("cifar:resnet19")
    message = str(caught.value)
    assert "'resnet19'" in message and "Did you mean" in message and "'resnet18'" in message
    assert all(name in message for name in CIFAR_MODELS)


def test_a_bare_cifar_name_suggests_the_cifar_spec():
    with pytest.raises(UnknownModelError, match=r"'cifar:resnet56'"):
        build_model("resnet56")


def test_a_he_resnet_depth_that_is_not_6n_plus_2_is_refused():
    with pytest.raises(UnknownModelError, match=r"depth 21.*6n \+ 2"):
        he_cifar_resnet(21)
