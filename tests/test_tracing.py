"""surgery.trace: leaf-aware FX tracing, clear errors, and a graph module that mirrors the model."""

from __future__ import annotations

import functools
import inspect
import operator
import os

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import SmallCNN, requires_cuda, seeded
from timm.layers import register_notrace_function, register_notrace_module
from torch import nn

import surgery
from surgery.fx.tracing import trace_options_of

# ------------------------------------------------------------------ test models


class DataDependent(nn.Module):
    """Branches on tensor values: torch.fx cannot trace through it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        if x.sum() > 0:  # the line the error must point at
            return self.conv(x)
        return -x


BRANCH_LINE = next(
    i for i, line in enumerate(inspect.getsourcelines(DataDependent.forward)[0], DataDependent.forward.__code__.co_firstlineno)
    if "if x.sum() > 0" in line
)


class Features(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 1)
        self.block = DataDependent()

    def forward(self, x):
        return self.block(self.stem(x))


class Net(nn.Module):
    """The untraceable module sits two levels deep, at `features.block`."""

    def __init__(self):
        super().__init__()
        self.features = Features()
        self.head = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.head(self.features(x))


def call_module_targets(gm) -> list[str]:
    return [n.target for n in gm.graph.nodes if n.op == "call_module"]


# ------------------------------------------------------------------- errors


def test_untraceable_submodule_error_names_path_class_line_and_leaf_fix():
    with pytest.raises(surgery.TraceError) as caught:
        surgery.trace(Net())
    message = str(caught.value)
    assert isinstance(caught.value, surgery.SurgeryError)
    assert "`features.block`" in message
    assert f"{DataDependent.__module__}.DataDependent" in message
    assert f"{os.path.basename(__file__)}:{BRANCH_LINE}" in message
    assert "if x.sum() > 0" in message
    assert 'leaf_modules=["features.block"]' in message


def test_untraceable_top_level_forward_suggests_concrete_args_not_a_leaf():
    with pytest.raises(surgery.TraceError) as caught:
        surgery.trace(DataDependent())
    message = str(caught.value)
    assert "model's own forward" in message and "DataDependent" in message
    assert f":{BRANCH_LINE}" in message
    assert "concrete_args" in message


# ------------------------------------------------------------------- leaves


@pytest.mark.parametrize(
    "leaf",
    [
        DataDependent,
        "DataDependent",
        f"{DataDependent.__module__}.{DataDependent.__qualname__}",
        "features.block",
    ],
    ids=["class", "class-name", "qualified-class", "module-path"],
)
def test_user_leaf_is_one_opaque_node(leaf):
    model = seeded(Net).eval()
    gm = surgery.trace(model, leaf_modules=[leaf])
    targets = call_module_targets(gm)
    assert "features.block" in targets
    assert not any(t.startswith("features.block.") for t in targets)
    x = torch.randn(1, 3, 4, 4)
    assert torch.equal(gm(x), model(x))


def test_leaf_by_path_marks_only_that_instance():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU())
            self.b = nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU())

        def forward(self, x):
            return self.b(self.a(x))

    targets = call_module_targets(surgery.trace(Two(), leaf_modules=["a"]))
    assert targets == ["a", "b.0", "b.1"]


def test_conv_and_linear_subclasses_stay_one_node():
    class BranchyConv(nn.Conv2d):  # like timm's Conv2dSame: Python logic in forward
        def forward(self, x):
            if x.shape[-1] % 2:
                x = F.pad(x, (0, 1, 0, 1))
            return super().forward(x)

    model = nn.Sequential(BranchyConv(2, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    gm = surgery.trace(model)
    assert call_module_targets(gm) == ["0", "1", "2"]
    assert isinstance(gm.get_submodule("0"), BranchyConv)


@register_notrace_module
class TimmOpaque(nn.Module):
    """Registered with timm's own notrace registry (as timm does for its untraceable layers)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        return self.conv(x) if x.mean() > 0 else x


def scale_if_positive(x):
    if x.sum() > 0:
        return x * 2
    return x


register_notrace_function(scale_if_positive)


def test_timm_notrace_registry_modules_and_functions_are_respected():
    class UsesTimmRegistry(nn.Module):
        def __init__(self):
            super().__init__()
            self.opaque = TimmOpaque()

        def forward(self, x):
            return scale_if_positive(self.opaque(x))

    model = UsesTimmRegistry()
    gm = surgery.trace(model)
    assert call_module_targets(gm) == ["opaque"]
    assert [n.target for n in gm.graph.nodes if n.op == "call_function"] == [scale_if_positive]
    x = torch.randn(1, 2, 3, 3).abs()
    assert torch.equal(gm(x), model(x))


def test_mode_dependent_modules_are_leaves_and_follow_train_eval():
    from torchvision.ops import StochasticDepth

    model = nn.Sequential(nn.Linear(16, 16), StochasticDepth(0.5, "row"))
    gm = surgery.trace(model.eval())
    assert call_module_targets(gm) == ["0", "1"]
    x = torch.randn(64, 16)
    assert torch.equal(gm(x), model(x))
    gm.train()
    torch.manual_seed(0)
    assert (gm(x).abs().sum(1) == 0).any()  # some rows dropped: the branch was not frozen to eval


# ------------------------------------------------------ arguments and defaults


class Flagged(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)

    def forward(self, x, add_one, scale=None):
        y = self.conv(x)
        if add_one:
            y = y + 1
        if scale is not None:
            y = y * scale
        return y


def test_concrete_args_fix_a_control_flow_argument():
    model = Flagged()
    x = torch.randn(1, 2, 3, 3)
    with pytest.raises(surgery.TraceError, match="add_one|control flow"):
        surgery.trace(model)
    for flag in (True, False):
        gm = surgery.trace(model, concrete_args={"add_one": flag})
        assert torch.equal(gm(x, flag), model(x, flag))
        assert any(n.target is operator.add for n in gm.graph.nodes) == flag
        assert trace_options_of(gm).concrete_args["add_one"] is flag


def test_defaulted_forward_arguments_beyond_the_inputs_are_fixed_to_their_defaults():
    class Optional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)

        def forward(self, x, mask=None):
            y = self.conv(x)
            if mask is not None:
                y = y * mask
            return y

    model = Optional()
    x, mask = torch.randn(1, 2, 3, 3), torch.zeros(1, 2, 3, 3)
    gm = surgery.trace(model, num_inputs=1)
    assert torch.equal(gm(x), model(x))
    both = surgery.trace(model, num_inputs=2)  # `mask` is now an input the graph uses
    assert torch.equal(both(x, mask), model(x, mask))
    assert torch.equal(both(x, mask), torch.zeros(1, 2, 3, 3))


# ------------------------------------------------- the graph mirrors the model


class WithExtras(nn.Module):
    """Parameters, buffers and a module the forward never touches, and a tensor constant."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.unused = nn.Linear(3, 3)
        self.scale = nn.Parameter(torch.ones(1))
        self.register_buffer("counter", torch.zeros(()))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)

    def forward(self, x):
        return self.conv(x) + torch.tensor([0.5])  # fx stores the constant on the traced root


def test_state_dict_keys_equal_the_original_including_unreferenced_state():
    model = WithExtras()
    gm = surgery.trace(model)
    assert list(gm.state_dict()) == list(model.state_dict())
    assert isinstance(gm.get_submodule("unused"), nn.Linear)
    fresh = WithExtras()
    fresh.load_state_dict(gm.state_dict(), strict=True)


def test_tracing_leaves_the_users_model_untouched():
    model = WithExtras()
    attributes = set(vars(model))
    params = {n: (p, p.detach().clone()) for n, p in model.named_parameters()}
    modules = dict(model.named_modules())
    surgery.trace(model)
    assert set(vars(model)) == attributes  # no `_tensor_constant0` left on the model
    assert dict(model.named_modules()) == modules
    for name, (param, value) in params.items():
        assert model.get_parameter(name) is param and torch.equal(param, value)


@pytest.mark.parametrize("traced_in", ["train", "eval"])
def test_functional_dropout_follows_train_and_eval(traced_in):
    class Drop(nn.Module):
        def forward(self, x):
            return F.dropout(x, 0.5, self.training)

    model = Drop().train(traced_in == "train")
    gm = surgery.trace(model)
    x = torch.ones(1000)
    assert torch.equal(gm.eval()(x), x)
    dropped = gm.train()(x)
    assert 300 < int((dropped == 0).sum()) < 700
    assert list(gm.state_dict()) == []


def test_trace_matches_model_outputs_on_resnet(resnet18, image32):
    gm = surgery.trace(resnet18)
    assert torch.equal(gm(image32), resnet18(image32))
    assert sum(isinstance(gm.get_submodule(t), nn.Conv2d) for t in call_module_targets(gm)) == 20


# ------------------------------------------------------------------- devices


def test_meta_device_trace_has_the_same_graph_as_cpu():
    cpu = surgery.trace(seeded(torchvision.models.resnet18, num_classes=10))
    with torch.device("meta"):
        meta_model = torchvision.models.resnet18(num_classes=10)
    meta = surgery.trace(meta_model)
    assert all(p.is_meta for p in meta.parameters())
    assert [(n.op, n.target) for n in meta.graph.nodes] == [(n.op, n.target) for n in cpu.graph.nodes]
    assert list(meta.state_dict()) == list(meta_model.state_dict())


@requires_cuda
def test_cuda_model_traces_and_runs_on_cuda():
    model = seeded(SmallCNN).cuda().eval()
    gm = surgery.trace(model)
    x = torch.randn(2, 3, 8, 8, device="cuda")
    assert all(p.is_cuda for p in gm.parameters())
    assert torch.equal(gm(x), model(x))


def test_a_leaf_name_that_matches_nothing_is_an_error_with_a_suggestion():
    with pytest.raises(surgery.TraceError, match=r"leaf 'layer9' names no module path or module class in SmallCNN"):
        surgery.trace(seeded(SmallCNN), leaf_modules=["layer9"])
    with pytest.raises(surgery.TraceError, match=r"Did you mean 'conv1'"):
        surgery.trace(seeded(SmallCNN), leaf_modules=["conv_1"])


# ------------------------------------------------------------- decorated forwards


def _returns_tuple_on_request(forward):
    """Like transformers' ``can_return_tuple``: a ``functools.wraps`` wrapper taking ``*args, **kwargs``."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        return_dict = kwargs.pop("return_dict", True)
        output = forward(self, *args, **kwargs)
        return output if return_dict else tuple(output.values())

    return wrapper


class DecoratedForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    @_returns_tuple_on_request
    def forward(self, pixel_values=None, labels=None, **kwargs):
        return self.head(pixel_values, **kwargs)

    def head(self, x, **kwargs):
        return {"logits": self.fc(torch.relu(self.conv(x)).mean((2, 3)))}


def test_decorated_forward_is_traced_through_the_wrapped_signature():
    model, x = DecoratedForward().eval(), torch.randn(2, 3, 8, 8)
    forward_before = type(model).forward
    gm = surgery.trace(model, num_inputs=1)
    placeholders = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    assert placeholders[0] == "pixel_values"
    assert torch.equal(gm(x)["logits"], model(x)["logits"])
    assert type(model).forward is forward_before and model(x, return_dict=False)[0].shape == (2, 2)


def test_decorated_forward_compiles_and_verifies():
    model, x = DecoratedForward(), torch.randn(2, 3, 8, 8)
    ghosted = surgery.compile(model, x)
    ghosted(x)["logits"].sum().backward()
    clean = surgery.deghost(ghosted)
    surgery.verify(model, clean, x)  # raises VerificationError on any difference


def _forces_a_keyword(forward):
    """Like transformers' ``filter_output_hidden_states``: the decorator sets a keyword the forward reads."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        kwargs["scale"] = 3.0
        return forward(self, *args, **kwargs)

    return wrapper


class KeywordForcing(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    @_forces_a_keyword
    def forward(self, pixel_values, **kwargs):
        return self.conv(pixel_values) * kwargs.get("scale", 1.0)


def test_decorated_forward_runs_the_decorators_own_code_as_a_call_does():
    model, x = KeywordForcing().eval(), torch.randn(2, 3, 8, 8)
    gm = surgery.trace(model, num_inputs=1)
    assert torch.equal(gm(x), model(x))
    assert [n.target for n in gm.graph.nodes if n.op == "placeholder"] == ["pixel_values"]


class Unpacks(nn.Module):
    """Unpacks proxies at two code sites with different counts, or iterates one outside an unpacking."""

    def __init__(self, iterate: bool = False):
        super().__init__()
        self.iterate = iterate
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.conv(x)
        first, second = y.chunk(2, dim=1)
        if self.iterate:
            return sum(t for t in y)  # not an unpacking: fx cannot iterate a proxy
        return (first + second).reshape(b, h * w * 2) + c


def test_unpacking_a_proxy_indexes_it_as_fx_does_and_other_iteration_is_refused():
    model, x = Unpacks(), torch.randn(2, 3, 5, 5)
    gm = surgery.trace(model)
    assert torch.equal(gm(x), model(x))
    indexed = [n.args[1] for n in gm.graph.nodes if n.target is operator.getitem]
    assert indexed == [0, 1, 2, 3, 0, 1]  # the shape's four sizes, then the two chunks
    with pytest.raises(surgery.TraceError):
        surgery.trace(Unpacks(iterate=True))
