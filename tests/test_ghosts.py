"""Ghost modules on their own: GhostSkip, projections, soft activations, strengths, parameter group."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import SmallCNN, seeded
from torch import fx, nn

import surgery
from surgery.compiler.ghosts import (
    ConvProjection,
    GhostSkip,
    Mish,
    ParameterFreeProjection,
    PSwish,
    Swish,
    align_spatial,
    ghosts,
    match_channels,
)
from surgery.compiler.passes.ghost_skip import CONV_KINDS

# ------------------------------------------------------------------ GhostSkip


def test_ghost_skip_adds_alpha_times_the_input():
    y, x = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(GhostSkip(alpha=0.25)(y, x), y + 0.25 * x, rtol=0, atol=1e-6)


def test_ghost_skip_at_alpha_zero_is_an_exact_pass_through():
    y, x = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5) * 1e6
    for skip in (GhostSkip(alpha=0.0), GhostSkip(ConvProjection(2, 4, 8, (1, 1)), alpha=0.0)):
        target = torch.randn(2, 8, 5, 5) if skip.projection is not None else y
        assert torch.equal(skip(target, x), target)


def test_ghost_skip_alpha_is_a_buffer_not_a_parameter():
    skip = GhostSkip(alpha=0.5)
    assert dict(skip.named_buffers()) == {"alpha": skip.alpha}
    assert list(skip.parameters()) == []
    assert skip.alpha.item() == 0.5


def test_ghost_skip_strip_returns_its_main_input():
    graph = fx.Graph()
    y, x = graph.placeholder("y"), graph.placeholder("x")
    node = graph.call_module("skip", (y, x))
    assert GhostSkip().strip(node) is y


# ------------------------------------------------------------------ projections


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_projection_is_a_stride_matched_1x1_conv_and_batchnorm(dims):
    stride = (2,) * dims
    proj = ConvProjection(dims, 3, 5, stride)
    conv_cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
    norm_cls = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dims - 1]
    assert type(proj.conv) is conv_cls and type(proj.norm) is norm_cls
    assert proj.conv.kernel_size == (1,) * dims and proj.conv.stride == stride and proj.conv.bias is None
    assert (proj.conv.in_channels, proj.conv.out_channels, proj.norm.num_features) == (3, 5, 5)
    x = torch.randn(2, 3, *(6,) * dims)
    assert proj(x, torch.Size([2, 5, *(3,) * dims])).shape == (2, 5, *(3,) * dims)


def test_parameter_free_projection_pools_and_zero_pads_channels():
    proj = ParameterFreeProjection(2, 6, (2, 2))
    assert list(proj.parameters()) == [] and list(proj.buffers()) == []
    x = torch.randn(2, 4, 6, 6)
    out = proj(x, torch.Size([2, 6, 3, 3]))
    torch.testing.assert_close(out[:, :4], F.avg_pool2d(x, 2))
    assert torch.equal(out[:, 4:], torch.zeros(2, 2, 3, 3))


def test_parameter_free_projection_folds_extra_channels_by_averaging():
    x = torch.arange(2 * 6, dtype=torch.float).view(1, 6, 1, 2)  # channels 0..5
    out = ParameterFreeProjection(2, 3, (1, 1))(x, torch.Size([1, 3, 1, 2]))
    torch.testing.assert_close(out, (x[:, :3] + x[:, 3:]) / 2)


def test_align_spatial_center_crops_and_zero_pads():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(align_spatial(x, torch.Size([1, 1, 2, 2])), x[..., 1:3, 1:3])
    padded = align_spatial(x, torch.Size([1, 1, 6, 6]))
    assert torch.equal(padded[..., 1:5, 1:5], x) and padded.sum() == x.sum()


def test_match_channels_on_the_last_dim_for_features():
    x = torch.randn(3, 4)
    assert torch.equal(match_channels(x, 6, dim=-1)[:, :4], x)
    assert torch.equal(match_channels(x, 6, dim=-1)[:, 4:], torch.zeros(3, 2))


# ------------------------------------------------------------ soft activations


def test_pswish_is_x_times_sigmoid_beta_x_with_beta_a_buffer():
    x = torch.linspace(-6, 6, 101)
    act = PSwish("call_module", "relu", beta=2.5)
    assert list(act.parameters()) == [] and act.beta.item() == 2.5
    torch.testing.assert_close(act(x), x * torch.sigmoid(2.5 * x))
    act.beta.fill_(0.0)
    torch.testing.assert_close(act(x), x / 2)  # linear at beta = 0
    act.beta.fill_(200.0)
    torch.testing.assert_close(act(x), torch.relu(x), atol=1e-3, rtol=0)  # ReLU as beta grows


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.5, 50.0])
def test_pswish_gradient_equals_autograd_of_the_formula(beta):
    x = torch.randn(3, 4, 5, 5, dtype=torch.double, generator=torch.Generator().manual_seed(1))
    act = PSwish("call_module", "relu", beta=beta).double()
    assert torch.autograd.gradcheck(act, (x.clone().requires_grad_(),))
    assert torch.autograd.gradgradcheck(act, (x.clone().requires_grad_(),))  # LRsI differentiates twice
    mine, reference = x.clone().requires_grad_(), x.clone().requires_grad_()
    act(mine).square().sum().backward()
    (reference * torch.sigmoid(beta * reference)).square().sum().backward()
    torch.testing.assert_close(mine.grad, reference.grad)


def test_pswish_gradient_in_bfloat16_under_autocast_shapes():
    x = torch.randn(2, 3, 4, 4).bfloat16().requires_grad_()
    PSwish("call_module", "relu", beta=3.0)(x).sum().backward()
    expected = torch.ops.aten.silu_backward(torch.ones_like(x), 3.0 * x.detach())
    assert x.grad.dtype == torch.bfloat16 and torch.equal(x.grad, expected)


def test_swish_and_mish_formulas():
    x = torch.linspace(-6, 6, 101)
    torch.testing.assert_close(Swish("call_function", F.relu)(x), x * torch.sigmoid(x))
    torch.testing.assert_close(Mish("call_function", F.relu)(x), x * torch.tanh(F.softplus(x)))
    assert not hasattr(Swish("call_function", F.relu), "beta")


def test_soft_activation_reads_its_input_from_kwargs_too():
    x = torch.randn(5)
    torch.testing.assert_close(PSwish("call_function", F.relu)(input=x, inplace=True), x * torch.sigmoid(x))


def test_soft_activation_strip_recreates_the_original_node_exactly():
    graph = fx.Graph()
    x = graph.placeholder("x")
    ghost_node = graph.call_module("_ghosts.act.relu", (x,), {"inplace": True})
    ghost_node.meta["note"] = "kept"
    graph.output(ghost_node)
    restored = PSwish("call_function", F.relu).strip(ghost_node)
    assert (restored.op, restored.target, restored.args, restored.kwargs) == ("call_function", F.relu, (x,), {"inplace": True})
    assert restored.meta["note"] == "kept"


# --------------------------------------------------- strengths and the group


def compiled_small_cnn():
    model = seeded(SmallCNN).eval()
    x = torch.randn(2, 3, 8, 8)
    skips = {"projection": "conv1x1", "targets": list(CONV_KINDS)}  # conv1 is the stem: wrap it too
    ghosted = surgery.compile(model, x, {"ghost_skip": skips, "soft_activation": {"beta": 3.0}})
    return model, ghosted.eval(), x


def test_set_ghost_strength_changes_buffers_in_place_without_recompiling():
    _, ghosted, x = compiled_small_cnn()
    graph, code, forward = ghosted.graph, ghosted.code, ghosted.forward
    buffers = {name: (buf, buf.data_ptr()) for name, buf in ghosted.named_buffers() if name.endswith(("alpha", "beta"))}
    before = ghosted(x)
    changed = surgery.set_ghost_strength(ghosted, alpha=0.5, beta=7.0)
    assert changed == len(ghosts(ghosted)) == 2 + 2  # two skips, two activation call sites
    assert ghosted.graph is graph and ghosted.code == code and ghosted.forward == forward
    for name, (buf, ptr) in buffers.items():
        assert ghosted.get_buffer(name) is buf and buf.data_ptr() == ptr
        assert buf.item() == (0.5 if name.endswith("alpha") else 7.0)
    assert not torch.equal(ghosted(x), before)


def test_set_ghost_strength_sets_only_what_is_given():
    _, ghosted, _ = compiled_small_cnn()
    assert surgery.set_ghost_strength(ghosted, beta=5.0) == 2
    assert {b.item() for n, b in ghosted.named_buffers() if n.endswith("alpha")} == {1.0}
    assert {b.item() for n, b in ghosted.named_buffers() if n.endswith("beta")} == {5.0}


@pytest.mark.parametrize(("values", "message"), [
    ({"alpha": float("nan")}, "alpha=nan must be a finite number >= 0"),
    ({"beta": -1.0}, "beta=-1.0 must be a finite number >= 0"),
    ({"alpha": float("inf")}, "alpha=inf"),
    ({"beta": "5"}, "beta='5'"),
])
def test_set_ghost_strength_refuses_values_that_are_not_finite_and_non_negative(values, message):
    _, ghosted, _ = compiled_small_cnn()
    with pytest.raises(surgery.GhostError, match=message):
        surgery.set_ghost_strength(ghosted, **values)
    assert {b.item() for n, b in ghosted.named_buffers() if n.endswith("alpha")} == {1.0}  # nothing changed


def test_set_ghost_strength_on_a_model_without_ghosts_is_an_error():
    model = seeded(SmallCNN)
    with pytest.raises(surgery.GhostError, match="SmallCNN holds no ghosts"):
        surgery.set_ghost_strength(model, alpha=0.5)
    from surgery.pruning import random_masks

    masks_only = surgery.compile(model, torch.randn(2, 3, 8, 8), {"masks": random_masks(model, 0.5)})
    with pytest.raises(surgery.GhostError, match="holds no ghosts"):
        surgery.set_ghost_strength(masks_only, beta=2.0)


def test_alpha_zero_with_skips_only_reproduces_the_model_exactly():
    model = seeded(SmallCNN).eval()
    x = torch.randn(2, 3, 8, 8)
    ghosted = surgery.compile(model, x, {"ghost_skip": {"projection": "conv1x1"}}).eval()
    assert not torch.equal(ghosted(x), model(x))
    surgery.set_ghost_strength(ghosted, alpha=0.0)
    assert torch.equal(ghosted(x), model(x))


def test_ghost_parameters_are_exactly_the_projection_parameters():
    model, ghosted, _ = compiled_small_cnn()
    group = surgery.ghost_parameters(ghosted)
    ghost_names = {n for n, p in ghosted.named_parameters() if n.startswith("_ghosts.")}
    assert {id(p) for p in group} == {id(ghosted.get_parameter(n)) for n in ghost_names}
    assert len(ghost_names) == 3  # conv2's 1x1 projection conv + its BatchNorm's weight and bias
    rest = [p for n, p in ghosted.named_parameters() if n not in ghost_names]
    assert len(rest) == len(list(model.parameters()))
    torch.optim.SGD([{"params": group, "lr": 0.1}, {"params": rest}], lr=0.01)  # disjoint groups are accepted


def test_parameter_free_ghosts_have_no_parameters():
    x = torch.randn(2, 3, 8, 8)
    skips = {"projection": "parameter_free", "targets": list(CONV_KINDS)}
    ghosted = surgery.compile(seeded(SmallCNN), x, {"ghost_skip": skips})
    assert surgery.ghost_parameters(ghosted) == []
    assert len(ghosts(ghosted)) == 2



def test_folding_averages_only_the_channels_that_exist():
    x = torch.arange(5.0).view(1, 5, 1, 1)  # channel c of 2 averages input channels c, c + 2, c + 4
    assert match_channels(x, 2).flatten().tolist() == [2.0, 2.0]  # (0 + 2 + 4) / 3, (1 + 3) / 2
