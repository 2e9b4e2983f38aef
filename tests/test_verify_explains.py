"""surgery.verify explains every graph difference in words and raises nothing but VerificationError.

Small traced models are mutated at random but reproducibly (seeded), one mutation per case;
each mutated graph must fail ``check_graph`` with a message naming what changed.
"""

from __future__ import annotations

import copy
import functools
import operator
import random

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import surgery
from surgery.errors import VerificationError
from surgery.compiler.verify import check_graph, describe, node_label


class Residual(nn.Module):
    """conv-BN-ReLU beside a 1x1 branch scaled by buffers, torch.add with a keyword constant,
    a tensor constant, a functional relu and a method with constants."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(3, 4, 1)
        self.register_buffer("scale", torch.ones(1, 4, 1, 1))
        self.register_buffer("shift", torch.zeros(1, 4, 1, 1))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        z = self.conv2(x) * self.scale + self.shift
        out = torch.add(y, z, alpha=0.5) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)
        return F.relu(out).mean(dim=(2, 3), keepdim=False)


class Branches(nn.Module):
    """Two branches joined by torch.cat, methods with constants, torch.clamp, a Linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 1)
        self.bn = nn.BatchNorm2d(6)
        self.act = nn.ReLU()
        self.left = nn.Conv2d(6, 6, 3, padding=1)
        self.right = nn.Conv2d(6, 6, 1)
        self.head = nn.Linear(12, 5)
        self.register_buffer("offset", torch.full((1, 6, 1, 1), 0.1))
        self.register_buffer("gain", torch.full((1, 6, 1, 1), 2.0))

    def forward(self, x):
        x = self.act(self.bn(self.stem(x)))
        a = self.left(x) - self.offset
        b = torch.sigmoid(self.right(x)) * self.gain
        c = torch.cat([a, b], dim=1).flatten(2).mean(-1)
        return self.head(torch.clamp(c, min=-3.0, max=3.0)) + torch.arange(5.0)


class Gate(nn.Module):
    """Squeeze-and-excite-like gate: a method on a buffer, a 0-d tensor constant, torch.where."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.register_buffer("temperature", torch.tensor(2.0))
        self.register_buffer("bias", torch.zeros(8))

    def forward(self, x):
        y = self.bn(self.conv(x))
        g = torch.sigmoid(y.mean((2, 3), keepdim=True) / self.temperature)
        y = torch.mul(y, g) + self.bias.view(1, -1, 1, 1)
        return torch.where(y > 0, y, y * torch.tensor(0.1))


MODELS = [Residual, Branches, Gate]


@functools.cache
def traced(model: type[nn.Module]) -> fx.GraphModule:
    torch.manual_seed(0)
    return surgery.trace(model())


# ------------------------------------------------------------- mutations
# Each changes one thing in a copy of a traced graph and returns the words the
# verifier's message must hold to name it.


def pick(rng: random.Random, candidates: list, what: str):
    assert candidates, f"the model offers nothing to {what}: the test would check nothing"
    return rng.choice(candidates)


def computing(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op in ("call_module", "call_function", "call_method")]


def named(node: fx.Node) -> str:
    """How the message names a computing node: its module path, function or method."""
    if node.op == "call_module":
        return f"module `{node.target}`"
    if node.op == "call_function":
        return f"{node.target.__name__}("
    return f".{node.target}("


def drop_node(gm: fx.GraphModule, rng: random.Random) -> list[str]:
    """Remove a node; its users take its first input instead."""
    node = pick(rng, [n for n in computing(gm) if n.all_input_nodes], "drop")
    words = ["missing after de-ghosting", named(node), f"at `{node.name}`"]
    node.replace_all_uses_with(node.all_input_nodes[0])
    gm.graph.erase_node(node)
    return words


OTHER_FUNCTION = {
    torch.add: torch.mul, torch.mul: torch.add, torch.sigmoid: torch.tanh, torch.cat: torch.stack,
    torch.clamp: torch.clip, torch.where: torch.lerp, F.relu: F.relu6,
    operator.add: operator.mul, operator.mul: operator.add, operator.sub: operator.add,
    operator.truediv: operator.mul, operator.gt: operator.lt,
}


def change_function(gm: fx.GraphModule, rng: random.Random) -> list[str]:
    """torch.add -> torch.mul and the like."""
    node = pick(rng, [n for n in gm.graph.nodes if n.op == "call_function" and n.target in OTHER_FUNCTION], "change")
    old, node.target = node.target, OTHER_FUNCTION[node.target]
    return [f"`{node.name}` changed", f"{old.__name__}(", f"{node.target.__name__}("]


def swap_arguments(gm: fx.GraphModule, rng: random.Random) -> list[str]:
    """f(a, b) -> f(b, a) for a call on two different nodes."""
    node = pick(rng, [
        n for n in gm.graph.nodes
        if n.op == "call_function" and len(n.args) >= 2
        and all(isinstance(a, fx.Node) for a in n.args[:2]) and n.args[0] is not n.args[1]
    ], "swap")
    node.args = (node.args[1], node.args[0], *node.args[2:])
    return [f"`{node.name}`", named(node), "takes inputs"]


def constant_slots(node: fx.Node) -> list[int | str]:
    """Positions and keywords of the numbers, flags and tuples of ints among ``node``'s arguments."""
    def constant(value):
        return isinstance(value, (int, float, bool)) or (
            isinstance(value, tuple) and value and all(isinstance(v, int) for v in value)
        )

    return [i for i, a in enumerate(node.args) if constant(a)] + [k for k, v in node.kwargs.items() if constant(v)]


def other_constant(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1 if isinstance(value, int) else value + 0.5
    return value[::-1] if value[::-1] != value else value + (0,)


def change_constant(gm: fx.GraphModule, rng: random.Random) -> list[str]:
    """alpha=0.5 -> 1.0, dim=1 -> 2, keepdim=True -> False ..."""
    node, slot = pick(rng, [(n, s) for n in computing(gm) for s in constant_slots(n)], "change a constant of")
    if isinstance(slot, int):
        old = node.args[slot]
        node.args = (*node.args[:slot], other_constant(old), *node.args[slot + 1:])
        new, where = node.args[slot], f"argument {slot + 1}"
    else:
        old = node.kwargs[slot]
        node.kwargs = {**node.kwargs, slot: other_constant(old)}
        new, where = node.kwargs[slot], f"`{slot}`"
    return [f"`{node.name}` changed", named(node), f"{where} from {old!r} to {new!r}"]


OTHER_MODULE_SETTING = {
    nn.ReLU: lambda m: setattr(m, "inplace", not m.inplace),
    nn.BatchNorm2d: lambda m: setattr(m, "eps", m.eps * 10),
    nn.Conv2d: lambda m: setattr(m, "stride", (2, 2)),
    nn.Linear: lambda m: setattr(m, "out_features", m.out_features + 1),
}


def change_module(gm: fx.GraphModule, rng: random.Random) -> list[str]:
    """ReLU(inplace=True) -> ReLU(), another eps, stride, out_features: a changed extra_repr."""
    node = pick(rng, [
        n for n in gm.graph.nodes if n.op == "call_module" and type(gm.get_submodule(n.target)) in OTHER_MODULE_SETTING
    ], "change the settings of")
    module = gm.get_submodule(node.target)
    old = module.extra_repr()
    OTHER_MODULE_SETTING[type(module)](module)
    return [f"`{node.name}` changed", named(node), old, module.extra_repr()]


EXTRA_NODES = [("call_function", torch.neg), ("call_function", torch.abs), ("call_method", "relu")]


def add_node(gm: fx.GraphModule, rng: random.Random) -> list[str]:
    """A new node between a node and its users."""
    node = pick(rng, [n for n in gm.graph.nodes if n.op != "output"], "follow with a new node")
    op, target = rng.choice(EXTRA_NODES)
    with gm.graph.inserting_after(node):
        extra = gm.graph.create_node(op, target, (node,))
    node.replace_all_uses_with(extra, delete_user_cb=lambda user: user is not extra)
    return ["only in the de-ghosted graph", named(extra), f"at `{extra.name}`"]


def retarget_attribute(gm: fx.GraphModule, rng: random.Random) -> list[str]:
    """A get_attr of one buffer now reads another."""
    node = pick(rng, [
        n for n in gm.graph.nodes if n.op == "get_attr" and not n.target.startswith("_tensor_constant")
    ], "retarget")
    others = [name for name, _ in gm.named_buffers() if name != node.target and not name.startswith("_tensor_constant")]
    old, node.target = node.target, rng.choice(sorted(others))
    return [f"`{node.name}` changed", f"attribute `{old}`", f"attribute `{node.target}`"]


def change_tensor_constant(gm: fx.GraphModule, rng: random.Random) -> list[str]:
    """A tensor constant of another shape or dtype."""
    node = pick(rng, [n for n in gm.graph.nodes if n.op == "get_attr" and n.target.startswith("_tensor_constant")],
                "change the tensor constant of")
    old = getattr(gm, node.target)
    new = rng.choice([torch.zeros(*old.shape, 2), old.double()])
    setattr(gm, node.target, new)
    if new.dtype != old.dtype:
        return [f"`{node.name}` changed", "(float32) in the original", "(float64) after de-ghosting"]
    return [f"`{node.name}` changed", f"shape {tuple(old.shape)}", f"shape {tuple(new.shape)}"]


MUTATIONS = [drop_node, change_function, swap_arguments, change_constant, change_module, add_node,
             retarget_attribute, change_tensor_constant]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("mutate", MUTATIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("model", MODELS, ids=lambda cls: cls.__name__)
def test_every_mutation_fails_verification_naming_what_changed(model, mutate, seed):
    original = traced(model)
    mutated = copy.deepcopy(original)
    expected = mutate(mutated, random.Random(seed))
    mutated.graph.lint()  # still a well-formed graph: the mutation is its only difference
    with pytest.raises(VerificationError) as caught:  # any other exception escapes and fails the test
        check_graph(original, mutated)
    message = str(caught.value)
    for words in expected:
        assert words in message, f"{words!r} is not in the message:\n{message}"


def test_a_copy_passes_so_the_mutations_are_what_fails():
    for model in MODELS:
        assert check_graph(traced(model), copy.deepcopy(traced(model))) == len(traced(model).graph.nodes)


# ----------------------------------------------------- labels in words


@pytest.mark.parametrize("model", MODELS, ids=lambda cls: cls.__name__)
def test_every_node_is_described_in_words_that_name_it(model):
    gm = traced(model)
    for node in gm.graph.nodes:
        words = describe(node_label(gm, node))
        if node.op in ("call_module", "call_function", "call_method"):
            assert named(node) in words
        elif node.op == "get_attr" and node.target.startswith("_tensor_constant"):
            value = getattr(gm, node.target)
            assert words == f"tensor constant of shape {tuple(value.shape)} (float32)"
        elif node.op in ("get_attr", "placeholder"):
            assert f"`{node.target}`" in words
        else:
            assert words.startswith("the output ")


def test_attributes_that_are_no_tensors_and_modules_the_graph_lacks_are_described():
    original = traced(Gate)
    odd = copy.deepcopy(original)
    odd.note = "not a tensor"
    odd._tensor_constant7 = None  # fx's counter name, yet no tensor
    placeholder = next(iter(odd.graph.nodes))
    with odd.graph.inserting_after(placeholder):
        for op, target in [("get_attr", "note"), ("get_attr", "_tensor_constant7"), ("call_module", "gone.block")]:
            odd.graph.create_node(op, target, (placeholder,) if op == "call_module" else ())
    with pytest.raises(VerificationError) as caught:
        check_graph(original, odd)
    message = str(caught.value)
    assert "only in the de-ghosted graph: attribute `note`" in message
    assert "only in the de-ghosted graph: attribute `_tensor_constant7`" in message
    assert "module `gone.block` (which the graph module does not hold)" in message


def test_a_label_of_another_kind_falls_back_to_its_repr():
    assert describe(None) == "None"
    assert describe(("call_function",)) == "('call_function',)"


# ------------------------------------------------ differences as a whole


class TwoRelus(nn.Module):
    """add(relu(a(x)), relu(b(x))): the two relus carry one label, so swapping add's inputs
    leaves every node with the same kinds of inputs; only the whole graph tells."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 3, 1)
        self.b = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return torch.sub(torch.relu(self.a(x)), torch.relu(self.b(x)))


def test_graphs_that_differ_only_as_a_whole_say_where_they_first_diverge():
    original = surgery.trace(TwoRelus())
    swapped = copy.deepcopy(original)
    sub = next(n for n in swapped.graph.nodes if n.target is torch.sub)
    sub.args = sub.args[::-1]
    with pytest.raises(VerificationError) as caught:
        check_graph(original, swapped)
    message = str(caught.value)
    assert "the same nodes with the same kinds of inputs but differ as a whole" in message
    assert "first diverge at `relu` (call torch.relu(%)): it takes [a] and feeds [torch.sub (argument 1)]" in message


# ------------------------------------------ a trace fed by an earlier trace


class CachesInEval(nn.Module):
    """Like timm's LeViT in eval mode: a value computed in forward is kept in a dict, so a
    second trace gets the first trace's proxy (once crashed the verifier with a TypeError)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))
        self.cache = {}

    def forward(self, x):
        key = str(x.device)
        if key not in self.cache:
            self.cache[key] = self.weight * 2
        return x + self.cache[key]


def test_a_trace_fed_by_an_earlier_trace_is_a_verification_error_naming_the_node():
    """surgery.trace puts the cache back (tests/test_trace_side_effects.py); plain fx does not, and a graph
    traced so must still be named, not crash the verifier."""
    model = CachesInEval()
    first, second = torch.fx.symbolic_trace(model), torch.fx.symbolic_trace(model)
    with pytest.raises(VerificationError, match=r"the original's fresh trace feeds `add` from `mul`, a node of "
                                                r"another trace: .*Empty that cache before each trace"):
        check_graph(second, first)
