"""The ghost_skip pass: where skips go, which projection they get, and what they compute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import MLP, SmallCNN, seeded
from torch import nn

import surgery
from surgery.compiler.ghosts import ConvProjection, GhostSkip, LinearProjection, ghosts
from surgery.fx.graph import propagate_shapes
from surgery.compiler.passes.ghost_skip import CONV_KINDS, GhostSkipOptions, ghost_skip

EVERY_CONV = list(CONV_KINDS)  # stem, pooled, pointwise and spatial body convs alike

# name: (conv, input shape, projection chosen when shapes differ)
CONVS = {
    "conv1d-strided": (lambda: nn.Conv1d(4, 8, 3, stride=2), (2, 4, 16)),
    "conv3d": (lambda: nn.Conv3d(4, 4, 3, padding=1), (2, 4, 4, 4, 4)),
    "conv3d-strided": (lambda: nn.Conv3d(2, 4, 3, stride=2, padding=1), (2, 2, 5, 5, 5)),
    "grouped": (lambda: nn.Conv2d(4, 8, 3, groups=2, padding=1), (2, 4, 8, 8)),
    "depthwise": (lambda: nn.Conv2d(4, 4, 3, groups=4, padding=1), (2, 4, 8, 8)),
    "dilated": (lambda: nn.Conv2d(4, 4, 3, dilation=2), (2, 4, 9, 9)),
    "dilated-same": (lambda: nn.Conv2d(4, 4, 3, dilation=2, padding=2), (2, 4, 9, 9)),
    "strided": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1), (2, 4, 9, 9)),
    "valid": (lambda: nn.Conv2d(4, 4, 3), (2, 4, 8, 8)),
    "over-padded": (lambda: nn.Conv2d(4, 4, 1, padding=1), (2, 4, 8, 8)),
    "fewer-channels": (lambda: nn.Conv2d(8, 3, 3, padding=1), (2, 8, 8, 8)),
}


def one_conv(name):
    factory, shape = CONVS[name]
    torch.manual_seed(0)
    return nn.Sequential(factory()).eval(), torch.randn(shape)


def skip_records(gm):
    return surgery.manifest_of(gm).skips


def the_skip(gm) -> GhostSkip:
    (_, skip), = ghosts(gm)
    return skip


# ----------------------------------------------------- every kind of conv


@pytest.mark.parametrize("projection", ["conv1x1", "parameter_free"])
@pytest.mark.parametrize("name", sorted(CONVS))
def test_every_conv_kind_gets_a_skip_with_the_right_output(name, projection):
    model, x = one_conv(name)
    ghosted = surgery.compile(model, x, {"ghost_skip": {"projection": projection, "targets": EVERY_CONV}}).eval()
    (record,) = skip_records(ghosted)
    y = model(x)
    same = tuple(x.shape) == tuple(y.shape)
    assert record.projection == ("identity" if same else projection)
    assert (record.input_shape, record.output_shape) == (tuple(x.shape), tuple(y.shape))
    out = ghosted(x)
    assert out.shape == y.shape
    if same:
        torch.testing.assert_close(out, y + x, rtol=0, atol=1e-6)
    surgery.set_ghost_strength(ghosted, alpha=0.0)
    assert torch.equal(ghosted(x), y)


@pytest.mark.parametrize("name", ["conv1d-strided", "strided", "conv3d-strided", "fewer-channels", "grouped"])
def test_conv1x1_projection_matches_the_convs_stride_and_channels(name):
    model, x = one_conv(name)
    conv = model[0]
    skip = the_skip(surgery.compile(model, x, {"ghost_skip": {"projection": "conv1x1", "targets": EVERY_CONV}}))
    assert isinstance(skip.projection, ConvProjection)
    proj = skip.projection.conv
    assert type(proj) is type(conv)
    assert proj.kernel_size == (1,) * len(conv.kernel_size)
    assert proj.stride == conv.stride
    assert (proj.in_channels, proj.out_channels, proj.groups) == (conv.in_channels, conv.out_channels, 1)


def test_conv1x1_skip_computes_the_normed_1x1_projection_where_the_conv_is_batch_normed():
    model = seeded(nn.Sequential, nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6)).eval()
    x = torch.randn(2, 4, 9, 9)  # 4 -> 6 channels, 9x9 -> 5x5
    ghosted = surgery.compile(model, x, {"ghost_skip": {"projection": "conv1x1", "alpha": 0.5, "targets": EVERY_CONV}})
    proj = the_skip(ghosted).projection
    assert isinstance(proj.norm, nn.BatchNorm2d)
    with torch.no_grad():
        proj.norm.running_mean.uniform_(-1, 1)
        proj.norm.running_var.uniform_(0.5, 2)
    ghosted.eval()
    with torch.no_grad():
        p = F.conv2d(x, proj.conv.weight, stride=2)
        p = F.batch_norm(p, proj.norm.running_mean, proj.norm.running_var, proj.norm.weight, proj.norm.bias, False, 0.0, proj.norm.eps)
        torch.testing.assert_close(ghosted(x), model(x) + 0.5 * p)


def test_conv1x1_projection_of_a_conv_without_batch_norm_has_no_norm():
    model, x = one_conv("strided")  # a bare conv, no norm after it
    ghosted = surgery.compile(model, x, {"ghost_skip": {"projection": "conv1x1", "targets": EVERY_CONV}}).eval()
    proj = the_skip(ghosted).projection
    assert proj.norm is None
    with torch.no_grad():
        torch.testing.assert_close(ghosted(x), model(x) + F.conv2d(x, proj.conv.weight, stride=2))


def test_parameter_free_strided_skip_is_pooled_and_channel_padded():
    model, x = one_conv("strided")  # 4 -> 6 channels, 9x9 -> 5x5
    ghosted = surgery.compile(model, x, {"ghost_skip": {"projection": "parameter_free", "targets": EVERY_CONV}}).eval()
    assert surgery.ghost_parameters(ghosted) == []
    p = ghosted(x) - model(x)
    pooled = F.avg_pool2d(x, 2, 2, ceil_mode=True)
    torch.testing.assert_close(p[:, :4], pooled, rtol=0, atol=1e-5)
    assert torch.equal(p[:, 4:], torch.zeros_like(p[:, 4:]))


def test_parameter_free_skip_crops_a_valid_conv_and_pads_an_over_padded_one():
    model, x = one_conv("valid")  # 8x8 -> 6x6: the centre of x
    ghosted = surgery.compile(model, x, {"ghost_skip": {"projection": "parameter_free", "targets": EVERY_CONV}}).eval()
    torch.testing.assert_close(ghosted(x) - model(x), x[..., 1:7, 1:7], rtol=0, atol=1e-5)
    model, x = one_conv("over-padded")  # 8x8 -> 10x10: x surrounded by zeros
    ghosted = surgery.compile(model, x, {"ghost_skip": {"projection": "parameter_free", "targets": EVERY_CONV}}).eval()
    torch.testing.assert_close(ghosted(x) - model(x), F.pad(x, (1, 1, 1, 1)), rtol=0, atol=1e-5)


def test_projection_none_keeps_identity_skips_and_records_the_rest():
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 6, 3, stride=2)).eval()
    x = torch.randn(2, 3, 8, 8)
    ghosted = surgery.compile(model, x, {"ghost_skip": {"projection": "none", "targets": EVERY_CONV}})
    manifest = surgery.manifest_of(ghosted)
    assert [(s.site, s.projection) for s in manifest.skips] == [("0", "identity")]
    ((site, why),) = manifest.skipped
    assert site == "1" and "projection is 'none'" in why and "(2, 3, 8, 8)" in why


def test_identity_false_projects_every_skip_as_tost_code_does():
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Conv2d(3, 6, 3, stride=2)).eval()
    x = torch.randn(2, 3, 8, 8)
    default = surgery.manifest_of(surgery.compile(model, x, {"ghost_skip": {"targets": EVERY_CONV}}))
    assert [s.projection for s in default.skips] == ["identity", "conv1x1"]
    ghosted = surgery.compile(model, x, {"ghost_skip": {"targets": EVERY_CONV, "identity": False}})
    assert [s.projection for s in surgery.manifest_of(ghosted).skips] == ["conv1x1", "conv1x1"]
    first = next(g for _, g in ghosts(ghosted) if isinstance(g, GhostSkip))
    assert isinstance(first.projection, ConvProjection) and first.projection.norm is not None  # as the conv: normed
    free = surgery.compile(model, x, {"ghost_skip": {"targets": EVERY_CONV, "identity": False,
                                                     "projection": "parameter_free"}})
    assert surgery.manifest_of(free).skips[0].projection == "identity"  # nothing to learn where shapes match


def test_projection_none_with_no_matching_shapes_is_an_error_not_a_no_op():
    model, x = one_conv("strided")
    with pytest.raises(surgery.NoTargetsError, match="added no skip"):
        surgery.compile(model, x, {"ghost_skip": {"projection": "none", "targets": EVERY_CONV}})


# ------------------------------------------------------- which convs: ToST's placement


class EveryKind(nn.Module):
    """A stem, a spatial body conv, a 1x1 expansion, an SE gate on the pooled map, a conv classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.body = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.body_bn = nn.BatchNorm2d(8)
        self.expand = nn.Conv2d(8, 16, 1, bias=False)
        self.expand_bn = nn.BatchNorm2d(16)
        self.gate = nn.Conv2d(16, 16, 1)
        self.head = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.body_bn(self.body(x)))
        x = torch.relu(self.expand_bn(self.expand(x)))
        x = x * torch.sigmoid(self.gate(x.mean((2, 3), keepdim=True)))
        return self.head(F.adaptive_avg_pool2d(x, 1)).flatten(1)


KINDS = {"stem": "stem", "body": "conv", "expand": "pointwise", "gate": "pooled", "head": "pooled"}


@pytest.mark.parametrize("side", [16, 2])  # at 2x2 the stem's output, and so every later map, is 1x1
def test_each_conv_gets_one_kind_from_the_graph_and_its_shapes(side):
    ghosted = surgery.compile(seeded(EveryKind), torch.randn(2, 3, side, side), {"ghost_skip": {"targets": EVERY_CONV}})
    assert {r.site: r.kind for r in skip_records(ghosted)} == KINDS


def test_default_wraps_only_the_spatial_body_convs_and_records_the_rest_by_kind():
    ghosted = surgery.compile(seeded(EveryKind), torch.randn(2, 3, 16, 16), {"ghost_skip": {}})
    manifest = surgery.manifest_of(ghosted)
    assert [r.site for r in manifest.skips] == ["body"]
    assert dict(manifest.untargeted) == {k: v for k, v in KINDS.items() if v != "conv"}
    summary = manifest.summary()
    assert (summary["convs_found"], summary["convs_targeted"], summary["convs_covered"]) == (5, 1, 1)
    assert summary["convs_not_targeted"] == {"stem": 1, "pointwise": 1, "pooled": 2}


@pytest.mark.parametrize("kind", ["stem", "pointwise", "pooled"])
def test_each_left_out_kind_is_opted_in_by_its_name(kind):
    ghosted = surgery.compile(seeded(EveryKind), torch.randn(2, 3, 16, 16), {"ghost_skip": {"targets": ["conv", kind]}})
    wrapped = {r.site for r in skip_records(ghosted)}
    assert wrapped == {"body"} | {site for site, k in KINDS.items() if k == kind}


def test_resnet18_gets_skips_around_its_sixteen_body_3x3_convs(resnet18):
    ghosted = surgery.compile(resnet18, torch.randn(2, 3, 64, 64), {"ghost_skip": {}})
    manifest = surgery.manifest_of(ghosted)
    body = [n for n, m in resnet18.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and n != "conv1"]
    assert [r.site for r in manifest.skips] == body and len(body) == 16
    assert dict(manifest.untargeted) == {"conv1": "stem", **{f"layer{i}.0.downsample.0": "pointwise" for i in (2, 3, 4)}}
    assert manifest.ghost_parameters == sum(p.numel() for p in surgery.ghost_parameters(ghosted)) == 173_824


class PooledReaders(nn.Module):
    """Convs after each spelling of a global pool, and convs after the ops that end a pooled tensor."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.eca = nn.Conv1d(1, 1, 3, padding=1, bias=False)  # ECA: a conv along the pooled channels
        self.fc1, self.fc2 = nn.Linear(8, 4), nn.Linear(4, 8)  # an SE gate of Linear layers
        self.gated = nn.Conv2d(8, 8, 3, padding=1)  # reads x * gate: a feature map
        self.avgmax = nn.Conv2d(8, 8, 3, padding=1)  # reads amax + adaptive avg pool
        self.summed = nn.Conv2d(8, 8, 3, padding=1)  # reads a sum over the spatial dims (no keepdim), reshaped
        self.spread = nn.Conv2d(8, 8, 3, padding=1)  # reads the pooled map upsampled back over the image
        self.to_grid = nn.AdaptiveAvgPool2d(2)
        self.grid = nn.Conv2d(8, 8, 3, padding=1)  # reads an adaptive pool to 2x2: not a global pool

    def forward(self, x):
        x = torch.relu(self.stem(x))
        n, c = x.shape[:2]
        x = x * self.eca(x.mean((2, 3)).view(n, 1, c)).sigmoid().view(n, c, 1, 1)
        gate = self.fc2(torch.relu(self.fc1(F.adaptive_avg_pool2d(x, 1).flatten(1)))).sigmoid()
        x = self.gated(x * gate[:, :, None, None])
        pooled = 0.5 * (x.amax((-2, -1), keepdim=True) + F.adaptive_max_pool2d(x, (1, 1)))
        out = self.avgmax(pooled) + self.summed(torch.sum(x, dim=(2, 3)).view(n, c, 1, 1))
        out = out.flatten(1) + self.spread(F.interpolate(pooled, size=x.shape[-2:])).mean((2, 3))
        return out + self.grid(self.to_grid(x)).mean((2, 3))


@pytest.mark.parametrize("side", [8, 2])
def test_a_conv_is_pooled_when_it_reads_a_global_pool_through_ops_that_keep_it_pooled(side):
    ghosted = surgery.compile(seeded(PooledReaders), torch.randn(2, 3, side, side), {"ghost_skip": {}})
    manifest = surgery.manifest_of(ghosted)
    assert dict(manifest.untargeted) == {"stem": "stem", "eca": "pooled", "avgmax": "pooled", "summed": "pooled"}
    assert [r.site for r in manifest.skips] == ["gated", "spread", "grid"]


@pytest.mark.parametrize("spec", ["torchvision:resnet18", "timm:resnet18"])
def test_resnet18_gets_the_same_sixteen_skips_at_32_and_224_pixels(spec):
    from surgery.zoo.models import build_model

    model = seeded(build_model, spec, 10).eval()
    body = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and n != "conv1"]
    for side in (32, 224):  # at 32 px layer4's convs run on 1x1 maps: body convs all the same
        manifest = surgery.manifest_of(surgery.compile(model, torch.randn(2, 3, side, side), {"ghost_skip": {}}))
        assert [r.site for r in manifest.skips] == body and len(body) == 16
        assert dict(manifest.untargeted) == {"conv1": "stem", **{f"layer{i}.0.downsample.0": "pointwise" for i in (2, 3, 4)}}


def squeeze_excite_convs(model: nn.Module) -> set[str]:
    """The convs inside timm's and torchvision's squeeze-and-excitation modules."""
    from timm.layers import SEModule
    from timm.models._efficientnet_blocks import SqueezeExcite
    from torchvision.ops import SqueezeExcitation

    return {
        f"{name}.{inner}"
        for name, se in model.named_modules() if isinstance(se, (SEModule, SqueezeExcite, SqueezeExcitation))
        for inner, conv in se.named_modules() if isinstance(conv, nn.Conv2d)
    }


@pytest.mark.parametrize(
    ("spec", "heads", "sides"),
    [
        ("timm:mobilenetv3_small_050", {"conv_head"}, (64, 224)),  # conv_head reads the pooled features
        ("torchvision:mobilenet_v3_small", set(), (64,)),
        ("timm:efficientnet_b0", set(), (64,)),  # its conv_head runs before the pool: pointwise
        ("timm:regnety_002", set(), (64,)),
    ],
    ids=["timm:mobilenetv3_small_050", "torchvision:mobilenet_v3_small", "timm:efficientnet_b0", "timm:regnety_002"],
)
def test_squeeze_excite_convs_and_conv_heads_are_pooled_and_left_out(spec, heads, sides):
    from surgery.zoo.models import build_model

    model = seeded(build_model, spec, 10).eval()
    gates = squeeze_excite_convs(model)
    assert gates and len(gates) % 2 == 0  # reduce and expand of each gate
    for side in sides:
        manifest = surgery.manifest_of(surgery.compile(model, torch.randn(2, 3, side, side), {"ghost_skip": {}}))
        pooled = {site for site, kind in manifest.untargeted if kind == "pooled"}
        assert pooled == gates | heads
        assert not pooled & {r.site for r in manifest.skips}


# ------------------------------------------------------- a batch of one, in train mode


def test_no_ghost_adds_a_batch_norm_over_one_value_per_channel():
    """Wrapping the SE gate and the head (1x1 maps) still takes a train-mode batch of one."""
    model = seeded(EveryKind).train()
    one = torch.randn(1, 3, 16, 16)
    model(one)  # the original accepts it
    ghosted = surgery.compile(model, torch.randn(2, 3, 16, 16), {"ghost_skip": {"targets": EVERY_CONV}}).train()
    projections = {r.site: dict(ghosts(ghosted))[r.ghost].projection for r in skip_records(ghosted)}
    assert projections["head"].norm is None and projections["expand"].norm is not None
    ghosted(one).sum().backward()


@pytest.mark.parametrize(
    "spec",
    ["timm:mobilenetv3_small_050", "timm:lcnet_050", "timm:regnety_002", "timm:ghostnet_050", "timm:efficientnetv2_rw_t",
     "timm:resnetv2_18", "torchvision:mobilenet_v3_small", "torchvision:efficientnet_b0"],
)
@pytest.mark.parametrize("targets", [["conv"], EVERY_CONV], ids=["default", "every-conv"])
def test_models_with_se_blocks_and_conv_heads_train_on_a_batch_of_one(spec, targets):
    from surgery.zoo.models import build_model

    model = seeded(build_model, spec, 10).train()
    one = torch.randn(1, 3, 64, 64)
    model(one)  # the original accepts it (at 32x32 mobilenetv3's own BatchNorms see 1x1 maps)
    ghosted = surgery.compile(model, torch.randn(2, 3, 64, 64), {"ghost_skip": {"targets": targets}, "soft_activation": {}})
    ghosted.train()(one).sum().backward()


# ------------------------------------------------------------- placement


def test_skip_goes_after_the_norm_and_before_the_activation():
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU()).eval()
    x = torch.randn(2, 3, 6, 6)
    ghosted = surgery.compile(model, x, {"ghost_skip": {"targets": EVERY_CONV}}).eval()
    (skip,) = [n for n in ghosted.graph.nodes if n.op == "call_module" and n.target.startswith("_ghosts.")]
    assert skip.args[0].target == "1" and skip.args[1].op == "placeholder"
    (user,) = skip.users
    assert user.target == "2"
    assert skip_records(ghosted)[0].anchor == skip.args[0].name
    torch.testing.assert_close(ghosted(x), torch.relu(model[1](model[0](x)) + x))


@pytest.mark.parametrize(
    "norm", [nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.InstanceNorm2d(4, affine=True)], ids=lambda m: type(m).__name__
)
def test_any_norm_directly_after_the_conv_is_the_anchor(norm):
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), norm, nn.ReLU())
    ghosted = surgery.compile(model, torch.randn(2, 4, 6, 6), {"ghost_skip": {"targets": EVERY_CONV}})
    assert skip_records(ghosted)[0].anchor == "_1"


def test_functional_conv_and_norm_are_found():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 4, 3, 3))

        def forward(self, x):
            return F.relu(F.batch_norm(F.conv2d(x, self.w, None, 1, 1), None, None, training=True))

    ghosted = surgery.compile(Functional(), torch.randn(2, 4, 6, 6), {"ghost_skip": {"targets": EVERY_CONV}})
    (record,) = skip_records(ghosted)
    assert (record.site, record.anchor, record.projection) == ("conv2d", "batch_norm", "identity")


def test_conv_used_twice_is_its_own_anchor():
    class TwoReaders(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    ghosted = surgery.compile(TwoReaders(), torch.randn(2, 4, 6, 6), {"ghost_skip": {"targets": EVERY_CONV}})
    assert skip_records(ghosted)[0].anchor == "conv"


def test_timm_fused_norm_activation_gets_the_skip_before_it():
    from timm.layers import BatchNormAct2d

    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), BatchNormAct2d(4, act_layer=nn.ReLU))
    ghosted = surgery.compile(model, torch.randn(2, 4, 6, 6), {"ghost_skip": {"targets": EVERY_CONV}})
    assert skip_records(ghosted)[0].anchor == "_0"  # the conv, not the fused BN+ReLU


def test_a_conv_called_at_two_sites_gets_one_ghost_per_site():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(torch.relu(self.conv(x)))

    model = seeded(Shared).eval()
    x = torch.randn(2, 4, 6, 6)
    ghosted = surgery.compile(model, x, {"ghost_skip": {"targets": EVERY_CONV}}).eval()
    records = skip_records(ghosted)
    assert [(r.site, r.kind) for r in records] == [("conv", "stem"), ("conv", "conv")]
    assert len({r.ghost for r in records}) == 2 and len(ghosts(ghosted)) == 2
    first = torch.relu(model.conv(x) + x)
    torch.testing.assert_close(ghosted(x), model.conv(first) + first)


# ------------------------------------------------------------------ linear


def test_linear_layers_are_wrapped_only_when_targeted():
    model, x = seeded(MLP).eval(), torch.randn(4, 8)
    with pytest.raises(surgery.NoTargetsError):
        surgery.compile(model, x, {"ghost_skip": {}})
    ghosted = surgery.compile(model, x, {"ghost_skip": {"targets": ["conv", "linear"]}}).eval()
    records = skip_records(ghosted)
    assert [(r.site, r.kind, r.projection) for r in records] == [("fc1", "linear", "identity"), ("fc2", "linear", "linear")]
    assert isinstance(dict(ghosts(ghosted))[records[1].ghost].projection, LinearProjection)
    surgery.set_ghost_strength(ghosted, alpha=0.0)
    assert torch.equal(ghosted(x), model(x))


def test_linear_parameter_free_projection_pads_features():
    model, x = nn.Sequential(nn.Linear(3, 5)).eval(), torch.randn(4, 3)
    ghosted = surgery.compile(model, x, {"ghost_skip": {"targets": "linear", "projection": "parameter_free"}})
    torch.testing.assert_close(ghosted(x) - model(x), F.pad(x, (0, 2)), rtol=0, atol=1e-6)


def test_exclude_patterns_skip_call_sites():
    x = torch.randn(2, 3, 8, 8)
    ghosted = surgery.compile(seeded(SmallCNN), x, {"ghost_skip": {"exclude": ["conv2"], "targets": EVERY_CONV}})
    manifest = surgery.manifest_of(ghosted)
    assert [r.site for r in manifest.skips] == ["conv1"]
    assert manifest.skipped == [("conv2", "excluded by ghost_skip.exclude")]


def test_alpha_option_sets_the_starting_strength():
    ghosted = surgery.compile(seeded(SmallCNN), torch.randn(2, 3, 8, 8), {"ghost_skip": {"alpha": 0.3}})
    assert {round(g.alpha.item(), 6) for _, g in ghosts(ghosted)} == {0.3}


# ------------------------------------------------------------- bad input


def test_model_without_conv_says_which_kinds_it_has_and_how_to_wrap_them():
    with pytest.raises(surgery.NoTargetsError) as caught:
        surgery.compile(MLP(), torch.randn(2, 8), {"ghost_skip": {}})
    message = str(caught.value)
    assert "leave nothing to wrap" in message and "MLP" in message
    assert "2 linear (a Linear layer): add 'linear' to ghost_skip.targets" in message


def test_targets_that_leave_no_conv_name_what_was_excluded_and_the_option_that_brings_it_back():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1))
    with pytest.raises(surgery.NoTargetsError) as caught:
        surgery.compile(model, torch.randn(2, 3, 8, 8), {"ghost_skip": {}})
    message = str(caught.value)
    assert "1 stem (reads a model input" in message and "add 'stem' to ghost_skip.targets" in message
    assert "1 pointwise (a 1x1 conv" in message and "add 'pointwise' to ghost_skip.targets" in message


def test_an_unknown_target_kind_is_a_recipe_error_listing_the_kinds():
    with pytest.raises(surgery.RecipeError, match=r"ghost_skip.targets = 'stems' is not one of .*'stem'.*Did you mean 'stem'"):
        GhostSkipOptions(targets=["conv", "stems"])


def test_convs_hidden_in_a_leaf_are_named_when_none_is_reachable():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(x)

    model = nn.Sequential(Block(), nn.Flatten())
    with pytest.raises(surgery.NoTargetsError, match=r"1 conv hides inside 1 leaf module of .*: '0' \(1 conv\)"):
        surgery.compile(model, torch.randn(1, 3, 2, 2), {"ghost_skip": {}}, leaf_modules=[Block])


def test_convs_hidden_in_leaves_are_named_beside_the_linear_head_with_how_to_reach_them():
    # a leafed model whose convs all sit in leaves shows only its head's Linear to the pass
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
            self.gate = nn.Linear(3, 3)

        def forward(self, x):
            return self.conv2(self.conv1(x)) * self.gate(x.mean((2, 3)))[:, :, None, None]

    model = nn.Sequential(Block(), Block(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    with pytest.raises(surgery.NoTargetsError) as caught:
        surgery.compile(model, torch.randn(1, 3, 4, 4), {"ghost_skip": {}}, leaf_modules=[Block])
    message = str(caught.value)
    assert "1 linear (a Linear layer): add 'linear'" in message
    assert "4 convs and 2 Linear layers hide inside 2 leaf modules" in message
    assert "'0' (2 convs, 1 Linear), '1' (2 convs, 1 Linear)" in message
    assert "drop '0' or its class from leaf_modules" in message and "submodule=" in message


def test_the_pass_without_shapes_explains_how_to_get_them():
    gm = surgery.trace(seeded(SmallCNN))
    with pytest.raises(surgery.SurgeryError, match="propagate_shapes"):
        ghost_skip(gm, GhostSkipOptions())
    propagate_shapes(gm, (torch.randn(2, 3, 8, 8),))
    assert len(ghosts(ghost_skip(gm, GhostSkipOptions()))) == 1  # conv2; conv1 is the stem


# ------------------------------------------------------------ devices, dtypes


def test_projections_follow_the_models_dtype_and_device():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    ghosted = surgery.compile(seeded(SmallCNN).double(), x, {"ghost_skip": {}})
    assert {p.dtype for p in surgery.ghost_parameters(ghosted)} == {torch.float64}
    assert ghosted(x).dtype == torch.float64
    with torch.device("meta"):
        meta_model = SmallCNN()
    ghosted = surgery.compile(meta_model, torch.randn(2, 3, 8, 8), {"ghost_skip": {}})
    assert all(p.is_meta for p in surgery.ghost_parameters(ghosted))
