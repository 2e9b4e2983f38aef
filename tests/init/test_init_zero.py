"""ZerO initialization: the paper's matrices, convs, residual branches, masks, and real models."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

import surgery
from surgery.errors import ConfigError
from surgery.init.zero import ZerOResult, residual_branch_ends, zero_init, zero_matrix
from surgery.compiler.masks import masked_parameters, prunable_weights
from surgery.zoo.models import build_model

# ZerO, Algorithm 1, for W of shape (out, in), written out by hand from the definitions.
PARTIAL_IDENTITY_3x5 = [  # out < in: (I_3 | 0)
    [1, 0, 0, 0, 0],
    [0, 1, 0, 0, 0],
    [0, 0, 1, 0, 0],
]
IDENTITY_5x5 = [[1 if i == j else 0 for j in range(5)] for i in range(5)]
# out > in: m = ceil(log2 5) = 3, c = 2^(-(3-1)/2) = 1/2, W = c * H_3[:5, :3] with Sylvester's
# H_3 rows  + + + + + + + + / + - + - + - + - / + + - - + + - - / + - - + + - - + / + + + + - - - -
HADAMARD_5x3 = [
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.5, 0.5, -0.5],
    [0.5, -0.5, -0.5],
    [0.5, 0.5, 0.5],
]
# out = 4, in = 2: m = 2, c = 2^(-1/2); H_2[:4, :2] rows (+ +) (+ -) (+ +) (+ -)
HADAMARD_4x2 = [[1, 1], [1, -1], [1, 1], [1, -1]]


def tensor(rows, scale: float = 1.0) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32) * scale


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((3, 5), tensor(PARTIAL_IDENTITY_3x5)), ((5, 5), tensor(IDENTITY_5x5)), ((5, 3), tensor(HADAMARD_5x3))],
)
def test_matrices_are_the_papers(shape, expected):
    assert torch.equal(zero_matrix(*shape), expected)


def test_power_of_two_width_uses_its_own_hadamard():
    # out = 4 is 2^2 exactly: m = 2, no rounding up; the full H_2 columns match Sylvester's recursion
    h1 = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    h2 = torch.cat([torch.cat([h1, h1], 1), torch.cat([h1, -h1], 1)], 0)
    assert torch.equal(zero_matrix(4, 3), 2 ** -0.5 * h2[:, :3])


def test_linear_layers_get_the_matrix_and_zero_bias():
    model = nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 5), nn.Linear(5, 5))
    result = zero_init(model)
    assert torch.equal(model[0].weight, tensor(PARTIAL_IDENTITY_3x5))
    assert torch.equal(model[2].weight, tensor(HADAMARD_5x3))
    assert torch.equal(model[3].weight, tensor(IDENTITY_5x5))
    assert all(torch.equal(m.bias, torch.zeros(m.out_features)) for m in (model[0], model[2], model[3]))
    assert (result.partial_identity, result.hadamard, result.identity) == (["0.weight"], ["2.weight"], ["3.weight"])
    assert result.zeroed_residual == []


def test_conv_matrix_sits_on_the_center_tap():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    zero_init(conv)
    expected = torch.zeros(5, 3, 3, 3)
    expected[:, :, 1, 1] = tensor(HADAMARD_5x3)
    assert torch.equal(conv.weight, expected)
    assert torch.equal(conv.bias, torch.zeros(5))


def test_grouped_convs_get_one_matrix_per_group():
    grouped = nn.Conv2d(4, 8, 3, groups=2, bias=False)  # per group: in 2, out 4
    zero_init(grouped)
    expected = torch.zeros(8, 2, 3, 3)
    expected[:, :, 1, 1] = tensor(HADAMARD_4x2, 2**-0.5).repeat(2, 1)
    assert torch.equal(grouped.weight, expected)

    depthwise = nn.Conv1d(6, 6, 5, groups=6, bias=False)  # 1 x 1 per group: the identity
    zero_init(depthwise)
    expected = torch.zeros(6, 1, 5)
    expected[:, 0, 2] = 1.0
    assert torch.equal(depthwise.weight, expected)


def test_norms_get_weight_one_and_bias_zero():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.Flatten(), nn.LayerNorm(4))
    with torch.no_grad():
        for m in model[1:3]:
            m.weight.uniform_(2, 3)
            m.bias.uniform_(2, 3)
    result = zero_init(model)
    for m in (model[1], model[2], model[4]):
        assert torch.equal(m.weight, torch.ones(4)) and torch.equal(m.bias, torch.zeros(4))
    assert result.norms == ["1", "2", "4"]


def test_resnet18_zeroes_the_last_conv_of_each_basic_block():
    model = torchvision.models.resnet18(num_classes=10)
    expected = [f"layer{i}.{j}.conv2" for i in range(1, 5) for j in range(2)]
    assert residual_branch_ends(model) == expected

    result = zero_init(model)
    assert result.zeroed_residual == [f"{name}.weight" for name in expected]
    for name in expected:
        block = model.get_submodule(name.rsplit(".", 1)[0])
        assert not block.conv2.weight.any()
        assert torch.equal(block.bn2.weight, torch.ones_like(block.bn2.weight))  # its norm stays as is
    for i in (2, 3, 4):  # the projection shortcuts keep their (Hadamard: 2x wider) ZerO matrix
        shortcut = model.get_submodule(f"layer{i}.0.downsample.0")
        assert f"layer{i}.0.downsample.0.weight" in result.hadamard
        assert shortcut.weight.abs().sum() > 0


def test_resnet50_zeroes_conv3_of_each_bottleneck():
    with torch.device("meta"):  # the graph is all that is read: skip the random init
        model = torchvision.models.resnet50(num_classes=10)
    blocks = [f"layer{i}.{j}" for i, n in zip(range(1, 5), (3, 4, 6, 3)) for j in range(n)]
    assert residual_branch_ends(model) == [f"{b}.conv3" for b in blocks]


def test_vgg_has_no_residual_branch():
    with torch.device("meta"):
        model = torchvision.models.vgg16_bn(num_classes=10)
    assert residual_branch_ends(model) == []


def test_without_residual_option_every_conv_gets_a_matrix():
    model = torchvision.models.resnet18(num_classes=10)
    result = zero_init(model, zero_residual_branches=False)
    assert result.zeroed_residual == []
    assert model.layer1[0].conv2.weight[:, :, 1, 1].equal(torch.eye(64))


def test_only_the_chosen_kinds_are_initialized():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Flatten(), nn.Linear(3, 3))
    before = model[2].weight.clone()
    result = zero_init(model, prunable=("conv",))
    assert torch.equal(model[2].weight, before)
    assert result.identity == ["0.weight"]
    with pytest.raises(ConfigError, match="conv"):
        zero_init(model, prunable=("embedding",))


def test_a_masked_compiled_model_keeps_pruned_weights_at_zero():
    model = build_model("cifar:resnet20", 10)
    generator = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(p.shape, generator=generator) > 0.5 for n, p in prunable_weights(model).items()}
    recipe = {"ghost_skip": {"projection": "conv1x1"}, "soft_activation": {"kind": "pswish"}, "masks": masks}
    ghosted = surgery.compile(model, torch.randn(2, 3, 32, 32), recipe)
    ghost_weight = ghosted.get_submodule("_ghosts.skip.layer2_0_conv1.projection.conv").weight.clone()

    result = zero_init(ghosted)

    assert result.zeroed_residual == [f"layer{i}.{j}.conv2.weight" for i in (1, 2, 3) for j in range(3)]
    for name, mask in masked_parameters(ghosted).items():
        module = ghosted.get_submodule(name.rsplit(".", 1)[0])
        original = module.parametrizations.weight.original
        assert not original[~mask].any(), name
        if name in result.identity:  # kept entries hold the ZerO value
            center = (slice(None), slice(None), 1, 1) if original.dim() == 4 else (slice(None), slice(None))
            assert torch.equal(original[center], torch.eye(*original.shape[:2]) * mask[center])
    assert torch.equal(ghosted.get_submodule("_ghosts.skip.layer2_0_conv1.projection.conv").weight, ghost_weight)
    assert torch.isfinite(ghosted(torch.randn(2, 3, 32, 32))).all()


@pytest.mark.parametrize(
    ("build", "blocks"),
    [
        (lambda: timm.create_model("convnext_atto", pretrained=False, num_classes=10), 12),
        (lambda: timm.create_model("efficientnet_b0", pretrained=False, num_classes=10), 9),
        (lambda: torchvision.models.mobilenet_v2(num_classes=10), 10),
    ],
    ids=["convnext_atto", "efficientnet_b0", "mobilenet_v2"],
)
def test_runs_on_modern_architectures(build, blocks):
    model = build().eval()
    result = zero_init(model)
    assert isinstance(result, ZerOResult)
    assert len(result.zeroed_residual) == blocks
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()
