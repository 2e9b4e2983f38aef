"""surgery.compile: passes in recipe order, lint after each, a manifest of what happened."""

from __future__ import annotations

import dataclasses
import operator
from collections import OrderedDict
from unittest.mock import patch

import pytest
import torch
import torchvision
from conftest import MLP, SmallCNN, requires_cuda, seeded
from torch import fx, nn

import surgery
from surgery.compiler.ghosts import ghosts
from surgery.compiler.passes import REGISTRY, register
from surgery.compiler.passes.ghost_skip import CONV_KINDS
from surgery.pruning import random_masks

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
# every conv kind, so these small models (often a single stem conv) exercise the mechanics
FULL = {"ghost_skip": {"projection": "conv1x1", "targets": list(CONV_KINDS)}, "soft_activation": {}}


@dataclasses.dataclass(frozen=True)
class NoOptions:
    tag: str = ""


@pytest.fixture
def recording_passes(monkeypatch):
    """Two fake passes that record their calls; the second hands back a new GraphModule."""
    calls = []

    def first(gm, options):
        calls.append(("first", options.tag, gm))
        return gm

    def second(gm, options):
        calls.append(("second", options.tag, gm))
        return fx.GraphModule(gm, gm.graph)

    monkeypatch.setitem(REGISTRY, "first", (first, NoOptions))
    monkeypatch.setitem(REGISTRY, "second", (second, NoOptions))
    return calls


def test_passes_run_in_recipe_order_each_on_the_previous_result(recording_passes):
    result = surgery.compile(seeded(SmallCNN), X, {"second": {"tag": "b"}, "first": {"tag": "a"}})
    assert [(name, tag) for name, tag, _ in recording_passes] == [("second", "b"), ("first", "a")]
    assert recording_passes[1][2] is not recording_passes[0][2]  # first got what second returned
    assert result is recording_passes[1][2]


def test_real_passes_record_their_order_in_the_manifest():
    forward = surgery.compile(seeded(SmallCNN), X, FULL)
    backward = surgery.compile(seeded(SmallCNN), X, dict(reversed(list(FULL.items()))))
    assert surgery.manifest_of(forward).passes == ["ghost_skip", "soft_activation"]
    assert surgery.manifest_of(backward).passes == ["soft_activation", "ghost_skip"]


def test_a_pass_that_breaks_the_graph_is_stopped_by_the_lint(monkeypatch):
    def use_before_define(gm, options):
        graph = gm.graph
        last = [n for n in graph.nodes if n.op == "call_module"][-1]
        first_input = next(iter(graph.nodes))
        with graph.inserting_after(first_input):
            graph.call_function(operator.neg, (last,))
        return gm

    monkeypatch.setitem(REGISTRY, "broken", (use_before_define, NoOptions))
    with pytest.raises(RuntimeError, match="used before it has been defined") as caught:
        surgery.compile(seeded(SmallCNN), X, {"broken": {}})
    assert caught.value.__notes__ == ["(in recipe pass 'broken', run after no other pass)"]


def test_a_pass_file_adds_a_recipe_section_with_the_decorator():
    @dataclasses.dataclass(frozen=True)
    class TagOptions:
        tag: str = "x"

    with patch.dict(REGISTRY):
        @register("tag_graph", TagOptions)
        def tag_graph(gm, options):
            gm.meta["tag"] = options.tag
            return gm

        assert surgery.compile(seeded(SmallCNN), X, {"tag_graph": {"tag": "mine"}}).meta["tag"] == "mine"
        with pytest.raises(surgery.RecipeError, match="tag_graph has no option 'colour'"):
            surgery.Recipe(tag_graph={"colour": 1})
    with pytest.raises(surgery.RecipeError, match="unknown pass 'tag_graph'"):
        surgery.Recipe(tag_graph={})


def test_a_failing_pass_is_named_with_the_passes_before_it_and_keeps_its_error_class():
    with pytest.raises(surgery.NoTargetsError) as caught:
        surgery.compile(MLP(), torch.randn(2, 8), {"soft_activation": {}, "ghost_skip": {}})
    message = str(caught.value)
    assert "leave nothing to wrap in" in message  # the pass's own message, then where it failed
    assert message.endswith("(in recipe pass 'ghost_skip', run after passes 'soft_activation')")


def test_the_users_model_is_never_modified(small_cnn):
    state = {k: v.clone() for k, v in small_cnn.state_dict().items()}
    params = [id(p) for p in small_cnn.parameters()]
    modules = dict(small_cnn.named_modules())
    ghosted = surgery.compile(small_cnn, X, {**FULL, "masks": random_masks(small_cnn, 0.5)})
    optimizer = torch.optim.SGD(ghosted.parameters(), lr=0.5)
    ghosted.train()(X).sum().backward()
    optimizer.step()
    assert dict(small_cnn.named_modules()) == modules and [id(p) for p in small_cnn.parameters()] == params
    assert all(torch.equal(v, small_cnn.state_dict()[k]) for k, v in state.items())
    assert not any(p is q for p in ghosted.parameters() for q in small_cnn.parameters())


def test_example_inputs_may_be_a_tensor_or_a_tuple():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(3, 4, 3, stride=2, padding=1)

        def forward(self, x, y):
            return self.a(x).mean() + self.b(y).mean()

    skips = {"ghost_skip": FULL["ghost_skip"]}
    single = surgery.compile(seeded(SmallCNN), X, skips)
    assert len(surgery.manifest_of(single).skips) == 2
    y = torch.randn(2, 3, 16, 16)
    two = surgery.compile(TwoInputs(), (X, y), skips)
    shapes = {s.site: (s.input_shape, s.output_shape) for s in surgery.manifest_of(two).skips}
    assert shapes == {"a": ((2, 3, 8, 8), (2, 4, 8, 8)), "b": ((2, 3, 16, 16), (2, 4, 8, 8))}
    assert two(X, y).shape == ()


def test_defaulted_forward_arguments_follow_the_number_of_example_inputs():
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x, mask=None):
            y = self.conv(x)
            return y if mask is None else y * mask

    model, mask = seeded(Masked).eval(), torch.zeros(2, 3, 8, 8)
    one = surgery.compile(model, X, {"ghost_skip": FULL["ghost_skip"]}).eval()
    two = surgery.compile(model, (X, mask), {"ghost_skip": FULL["ghost_skip"]}).eval()
    surgery.set_ghost_strength(one, alpha=0.0)
    surgery.set_ghost_strength(two, alpha=0.0)
    assert torch.equal(one(X), model(X))  # `mask` fixed to its default, None
    assert torch.equal(two(X, mask), torch.zeros_like(X))  # `mask` is a real input of this graph


def test_an_empty_recipe_is_a_plain_traced_copy(small_cnn):
    gm = surgery.compile(small_cnn, X)
    assert ghosts(gm) == [] and surgery.manifest_of(gm).passes == []
    assert torch.equal(gm(X), small_cnn(X))


# ------------------------------------------------------------------ manifest


def test_manifest_records_skips_activations_and_masks(small_cnn):
    masks = {"conv2.weight": torch.rand(6, 3, 3, 3, generator=torch.Generator().manual_seed(0)) > 0.5}
    ghosted = surgery.compile(small_cnn, X, {**FULL, "masks": masks})
    manifest = surgery.manifest_of(ghosted)
    assert manifest.model == f"{SmallCNN.__module__}.SmallCNN"
    assert [(s.site, s.kind, s.projection, s.anchor) for s in manifest.skips] == [
        ("conv1", "stem", "identity", "bn1"),
        ("conv2", "conv", "conv1x1", "bn2"),
    ]
    assert [(s.input_shape, s.output_shape) for s in manifest.skips][1] == ((2, 3, 8, 8), (2, 6, 4, 4))
    assert all(dict(ghosts(ghosted))[s.ghost] is not None for s in manifest.skips)
    assert [(a.site, a.original, a.kind) for a in manifest.activations] == [
        ("relu", "nn.ReLU(inplace=True)", "pswish"),
        ("relu", "nn.ReLU(inplace=True)", "pswish"),
    ]
    ((record),) = manifest.masks
    assert record.param == "conv2.weight" and record.sparsity == pytest.approx(1 - masks["conv2.weight"].float().mean().item())
    summary = manifest.summary()
    assert summary["convs_found"] == summary["convs_targeted"] == summary["convs_covered"] == 2
    assert summary["projections"] == {"identity": 1, "conv1x1": 1}
    assert summary["ghost_parameters"] == sum(p.numel() for p in surgery.ghost_parameters(ghosted)) == 3 * 6 + 2 * 6
    assert summary["kept_weights"] == int(masks["conv2.weight"].sum())
    assert manifest.ghost_cost() == f"30 dense training-only parameters = {30 / summary['kept_weights']:.0%} of the " \
        f"{summary['kept_weights']} kept weights"
    assert summary["activations_swapped"] == 2 and summary["weights_masked"] == 1
    assert summary["deghosted"] is False
    assert surgery.manifest_of(surgery.deghost(ghosted)).deghosted is True
    assert surgery.manifest_of(ghosted).deghosted is False  # the copy's manifest, not the original's


class Hidden(nn.Module):
    """A block the user keeps opaque: its conv and ReLU are out of reach."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x))


def test_manifest_lists_convs_and_activations_hidden_in_leaf_modules():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), Hidden(), nn.ReLU())
    ghosted = surgery.compile(model, X, FULL, leaf_modules=[Hidden])
    manifest = surgery.manifest_of(ghosted)
    assert [(u.module, u.cls, u.inside, u.what) for u in manifest.unreached] == [
        ("1.conv", "Conv2d", "1", "conv"),
        ("1.act", "ReLU", "1", "activation"),
    ]
    summary = manifest.summary()
    assert (summary["convs_found"], summary["convs_covered"], summary["convs_unreached"]) == (2, 1, 1)
    assert [a.site for a in manifest.activations] == ["2"]


def test_recipe_trace_section_and_leaf_modules_argument_both_make_leaves():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), Hidden())
    skips = {"targets": list(CONV_KINDS)}
    from_recipe = surgery.compile(model, X, {"trace": {"leaf_modules": ["1"]}, "ghost_skip": skips})
    from_argument = surgery.compile(model, X, {"ghost_skip": skips}, leaf_modules=["1"])
    for gm in (from_recipe, from_argument):
        assert [u.module for u in surgery.manifest_of(gm).unreached] == ["1.conv", "1.act"]


def test_manifest_of_a_module_not_made_by_compile_says_so():
    with pytest.raises(surgery.SurgeryError, match="not made by surgery.compile"):
        surgery.manifest_of(surgery.trace(MLP()))


# ----------------------------------------------------------------- errors


def test_untraceable_model_is_a_trace_error_from_compile():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(x) if x.mean() > 0 else x

    with pytest.raises(surgery.TraceError, match="model's own forward"):
        surgery.compile(Branchy(), X, FULL)


def test_a_model_without_conv_makes_the_skip_pass_say_so():
    with pytest.raises(surgery.NoTargetsError, match="leave nothing to wrap in .*MLP.*2 linear"):
        surgery.compile(MLP(), torch.randn(2, 8), FULL)


# ----------------------------------------------------------------- devices


def test_meta_device_compile_of_resnet18_covers_every_conv():
    with torch.device("meta"):
        model = torchvision.models.resnet18(num_classes=10)
    ghosted = surgery.compile(model, torch.randn(1, 3, 32, 32), FULL)
    summary = surgery.manifest_of(ghosted).summary()
    assert summary["convs_found"] == summary["convs_covered"] == 20
    assert summary["activations_swapped"] == 17
    assert all(t.is_meta for t in ghosted.state_dict().values())


@requires_cuda
def test_cuda_compile_keeps_everything_on_the_device():
    model = seeded(SmallCNN).cuda().eval()
    ghosted = surgery.compile(model, X, FULL)  # CPU example inputs are moved to the model's device
    assert all(t.is_cuda for t in ghosted.state_dict().values())
    x = X.cuda()
    surgery.set_ghost_strength(ghosted, alpha=0.0)
    clean = surgery.deghost(ghosted).eval()
    torch.testing.assert_close(clean(x), model(x))
    surgery.verify(model, clean, x, ghosted=ghosted)


def test_example_inputs_that_do_not_fit_the_model_are_a_shape_propagation_error():
    with pytest.raises(surgery.ShapePropagationError, match=r"example inputs \(\(2, 5, 16, 16\) torch.float32\)"):
        surgery.compile(seeded(SmallCNN), torch.randn(2, 5, 16, 16), {"ghost_skip": {}})


class _Features(OrderedDict):
    """A dict subclass with attribute access, as Hugging Face's ModelOutput."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return _Features(feat=self.conv(x))


class _ReadsAnAttribute(nn.Module):
    def __init__(self):
        super().__init__()
        self.block, self.conv = _Block(), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(self.block(x).feat)


def test_a_leaf_returning_a_dict_subclass_keeps_its_type_through_shape_propagation():
    model, x = _ReadsAnAttribute(), torch.randn(2, 3, 8, 8)
    ghosted = surgery.compile(model, x, {"ghost_skip": {"targets": ["conv", "stem"]}}, leaf_modules=[_Block])
    assert len(surgery.manifest_of(ghosted).skips) == 1
    assert torch.equal(surgery.deghost(ghosted)(x), model(x))
