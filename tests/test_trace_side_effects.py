"""Tracing has no side effects on the user's model.

torch.fx runs the model's own forward on Proxies; whatever that forward does to Python state
(a cache filled, a counter counted, a hook registered, a flag set) must not stay done to the
user's model after trace, compile, verify, the mask finders or the zoo's checks.
"""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import seeded
from torch import fx, nn

import surgery
from surgery.apps import conformance
from surgery.zoo import catalog as zoo
from surgery.compiler.passes.ghost_skip import CONV_KINDS
from surgery.pruning import METHODS, find_masks, method
from surgery.fx.python_state import python_state_kept

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
RECIPE = {"ghost_skip": {"targets": list(CONV_KINDS)}, "soft_activation": {}}
REGISTERED = ("_parameters", "_buffers", "_modules")
method("random")  # imports every finder module, so METHODS is complete
ONESHOT = sorted(name for name, m in METHODS.items() if not m.training)


# ------------------------------------------------------------------ test models


class Classifier(nn.Module):
    """stem conv -> ``block`` (the module under test) -> pooled linear head."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = block
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        return self.head(self.block(torch.relu(self.stem(x))).mean((2, 3)))


class CachesBias(nn.Module):
    """Like timm's LeViT attention: in eval mode, caches a tensor made from a parameter in a dict keyed by device."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.shift = nn.Parameter(torch.randn(4, 1, 1))
        self.cache: dict[str, torch.Tensor] = {}

    def forward(self, x):
        if self.training:
            return torch.relu(self.conv(x) + self.shift * 2)
        key = str(x.device)
        if key not in self.cache:
            self.cache[key] = self.shift * 2
        return torch.relu(self.conv(x) + self.cache[key])


class CountsCalls(nn.Module):
    """Counts its calls and remembers every input's shape."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.calls = 0
        self.shapes: list = []

    def forward(self, x):
        self.calls += 1
        self.shapes.append(x.shape)
        return torch.relu(self.conv(x))


class ArmsOnce(nn.Module):
    """On its first call registers hooks on its conv, flips a flag and keeps the input as a new attribute."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.armed = False

    def forward(self, x):
        if not self.armed:
            self.conv.register_forward_hook(lambda module, args, output: None)
            self.conv.register_forward_pre_hook(lambda module, args: None)
            self.armed = True
            self.first_input = x
        return torch.relu(self.conv(x))


def levit() -> nn.Module:
    return timm.create_model("levit_128s", pretrained=False, num_classes=10)


# --------------------------------------------------------------- the model's state


def python_state(model: nn.Module) -> dict[str, dict]:
    """Every module's Python attributes by value, and which objects its parameters, buffers and children are."""
    return {
        path: {
            **{name: by_value(value) for name, value in vars(module).items() if name not in REGISTERED},
            **{kind: {name: id(value) for name, value in getattr(module, kind).items()} for kind in REGISTERED},
            "tensor attributes": {name: by_value(vars(t)) for name, t in [*module._parameters.items(),
                                                                          *module._buffers.items()] if t is not None},
        }
        for path, module in model.named_modules()
    }


def by_value(value):
    if isinstance(value, fx.Proxy):
        return ("Proxy", repr(value))
    if torch.is_tensor(value):
        return ("tensor", tuple(value.shape), value.dtype, value.tolist() if value.device.type != "meta" else None)
    if isinstance(value, dict):
        return (type(value), [(by_value(k), by_value(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value), [by_value(v) for v in value])
    return value


@pytest.fixture(
    params=[
        pytest.param(lambda: Classifier(CachesBias()), id="dict-cache"),
        pytest.param(lambda: Classifier(CountsCalls()), id="counter"),
        pytest.param(lambda: Classifier(ArmsOnce()), id="hooks-and-flag"),
    ]
)
def stateful(request) -> nn.Module:
    return seeded(request.param).eval()


# ------------------------------------------------------------------ trace, compile, verify


def test_trace_leaves_every_modules_python_state_as_it_was(stateful):
    before = python_state(stateful)
    gm = surgery.trace(stateful)
    assert python_state(stateful) == before
    assert torch.allclose(gm(X), stateful(X), atol=1e-6)


def test_compile_deghost_verify_leave_the_model_as_it_was_and_verify_passes(stateful):
    before = python_state(stateful)
    ghosted = surgery.compile(stateful, X, RECIPE)
    clean = surgery.deghost(ghosted)
    report = surgery.verify(stateful, clean, X, ghosted=ghosted)
    assert report.outputs_max_abs_diff <= 1e-5
    assert python_state(stateful) == before


def test_compiling_a_submodule_leaves_the_model_as_it_was(stateful):
    before = python_state(stateful)
    ghosted = surgery.compile(stateful, X, RECIPE, submodule="block")
    surgery.verify(stateful, surgery.deghost(ghosted), X, ghosted=ghosted)
    assert python_state(stateful) == before


def test_a_cache_keeps_its_identity_and_a_filled_cache_its_values():
    model = seeded(Classifier, CachesBias()).eval()
    model(X)  # the cache now holds a real tensor, under 'cpu'
    cache, cached = model.block.cache, model.block.cache["cpu"]
    surgery.compile(model, X, RECIPE)
    assert model.block.cache is cache and list(cache) == ["cpu"] and cache["cpu"] is cached


def test_hooks_registered_while_tracing_are_removed_and_the_users_own_stay():
    model = seeded(Classifier, ArmsOnce()).eval()
    calls = []
    handle = model.block.conv.register_forward_hook(lambda module, args, output: calls.append(1))
    surgery.trace(model)
    assert list(model.block.conv._forward_hooks) == [handle.id] and not model.block.conv._forward_pre_hooks
    assert model.block.armed is False and not hasattr(model.block, "first_input")
    model(X)
    assert calls == [1]


def test_levit_compiles_and_verifies_and_its_attention_bias_caches_stay_empty():
    """timm's LeViT caches attention biases in eval mode: a Proxy left there broke the next trace (verify's)."""
    model = seeded(levit).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    before = python_state(model)
    caches = {path: m.attention_bias_cache for path, m in model.named_modules() if hasattr(m, "attention_bias_cache")}
    assert caches
    ghosted = surgery.compile(model, x, {"ghost_skip": {"projection": "conv1x1", "targets": ["conv", "linear"]}})
    assert surgery.manifest_of(ghosted).ghost_parameters > 0
    report = surgery.verify(model, surgery.deghost(ghosted), x, ghosted=ghosted)
    assert report.outputs_max_abs_diff <= 1e-5
    assert python_state(model) == before
    assert all(m.attention_bias_cache is caches[path] and not caches[path]
               for path, m in model.named_modules() if path in caches)


# ------------------------------------------------------------------ mask finders and the zoo


@pytest.mark.parametrize("name", ONESHOT)
def test_mask_finders_leave_the_model_as_it_was(name, stateful):
    targets = torch.tensor([0, 1])
    before = python_state(stateful)
    find_masks(stateful, name, 0.5, batches=[(X, targets)])
    assert python_state(stateful) == before


def test_conformance_round_trip_leaves_the_model_as_it_was(stateful):
    before = python_state(stateful)
    row = conformance.check_model("stateful", stateful, X, numeric=True)
    assert row.structural_ok and row.outputs_equal, row.note
    assert python_state(stateful) == before


@pytest.mark.filterwarnings("ignore:The nodes obtained by tracing the model in train mode")  # CachesBias: they do
def test_asking_timms_own_tracer_leaves_the_model_as_it_was(stateful):
    before = python_state(stateful)
    assert zoo.timm_cannot_trace(stateful) is None
    assert python_state(stateful) == before


def test_python_state_kept_undoes_what_another_tracer_leaves():
    model = seeded(Classifier, CachesBias()).eval()
    before = python_state(model)
    with python_state_kept(model):
        fx.symbolic_trace(model)
        assert any(isinstance(v, fx.Proxy) for v in model.block.cache.values())  # what plain fx leaves behind
    assert python_state(model) == before


# ------------------------------------------------------------------ bad inputs


class MarksItsWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        for param in self.conv.parameters():  # the Parameters themselves: `self.conv.weight` is a Proxy in a trace
            param.seen = True
        return self.conv(x)


class ReplacesItsScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        self.scale = nn.Parameter(torch.ones(1))
        return self.conv(x) * self.scale


@pytest.mark.parametrize(
    ("block", "change"),
    [(MarksItsWeight, "set Python attribute(s) ['seen'] of parameter `block.conv.bias`"),
     (ReplacesItsScale, "replaced parameter `block.scale` by another object")],
    ids=["marks-weight", "replaces-parameter"],
)
def test_a_forward_that_changes_a_parameter_is_refused_naming_the_module_and_the_leaf_fix(block, change):
    model = seeded(Classifier, block())
    before = python_state(model)
    with pytest.raises(surgery.TraceError) as caught:
        surgery.compile(model, X, RECIPE)
    message = str(caught.value)
    assert change in message
    assert f"inside module `block` ({block.__module__}.{block.__qualname__})" in message
    assert 'leaf_modules=["block"]' in message and "--leaf block" in message
    assert python_state(model) == before  # undone, though refused
    gm = surgery.trace(model, leaf_modules=["block"])  # the fix works: the forward is not traced through
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["stem", "block", "head"]
    assert python_state(model) == before


class AddsItsOffsetLazily(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        if not hasattr(self, "offset"):
            self.register_buffer("offset", torch.full((4, 1, 1), 0.5))
        return self.conv(x) + self.offset


def test_a_buffer_created_lazily_is_refused_until_the_model_has_run_once():
    model = seeded(Classifier, AddsItsOffsetLazily())
    lazily = r"(?s)added buffer `block.offset`.*call the model once before tracing"
    with pytest.raises(surgery.TraceError, match=lazily):
        surgery.trace(model)
    assert not hasattr(model.block, "offset")
    model(X)
    gm = surgery.trace(model)
    assert torch.equal(gm(X), model(X))


class Memo:
    pass


class KeepsOutputInAnObject(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.memo = Memo()

    def forward(self, x):
        self.memo.last = self.conv(x)
        return self.memo.last


def test_a_proxy_left_in_an_object_is_reported_and_refused_by_the_next_trace():
    model = seeded(Classifier, KeepsOutputInAnObject())
    with pytest.raises(surgery.TraceError, match=r"tracing left torch.fx Proxies .* at `block.memo.last`") as caught:
        surgery.trace(model)
    assert 'leaf_modules=["block"]' in str(caught.value)
    with pytest.raises(surgery.TraceError, match=r"Proxies left by an earlier trace, at `block.memo.last`"):
        surgery.trace(model)
    del model.block.memo.last
    surgery.trace(model, leaf_modules=["block"])
    assert not hasattr(model.block.memo, "last")


def test_a_proxy_left_by_plain_fx_is_refused_before_it_corrupts_the_graph():
    model = seeded(Classifier, CachesBias()).eval()
    fx.symbolic_trace(model)
    with pytest.raises(surgery.TraceError, match=r"Proxies left by an earlier trace, at `block.cache\['Proxy\("):
        surgery.trace(model)
    model.block.cache.clear()
    surgery.trace(model)
