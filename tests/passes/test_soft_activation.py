"""The soft_activation pass: every ReLU spelling becomes PSwish / Swish / Mish; nothing else does."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import MLP, AllReLUs, SmallCNN, seeded
from torch import nn

import surgery
from surgery.compiler.ghosts import Mish, ModuleActivation, PSwish, SoftActivation, Swish, ghosts
from surgery.compiler.passes.soft_activation import ACTIVATIONS

RELU_FUNCTIONS = set(ACTIVATIONS["relu"].functions)


def relu_nodes(gm):
    """Every node of ``gm`` that computes a ReLU, however spelled."""
    def is_relu(node):
        if node.op == "call_module":
            return isinstance(gm.get_submodule(node.target), nn.ReLU)
        if node.op == "call_function":
            return node.target in RELU_FUNCTIONS
        return node.op == "call_method" and node.target in ("relu", "relu_")

    return [node for node in gm.graph.nodes if is_relu(node)]


def test_every_relu_spelling_is_replaced_and_gelu_is_left_alone():
    model = AllReLUs()
    assert len(relu_nodes(surgery.trace(model))) == AllReLUs.RELU_SITES
    ghosted = surgery.compile(model, torch.randn(2, 3), {"soft_activation": {}})
    assert relu_nodes(ghosted) == []
    acts = [g for _, g in ghosts(ghosted)]
    assert len(acts) == AllReLUs.RELU_SITES and all(type(g) is PSwish for g in acts)
    assert any(isinstance(ghosted.get_submodule(n.target), nn.GELU) for n in ghosted.graph.nodes if n.op == "call_module")


def test_manifest_names_each_spelling():
    ghosted = surgery.compile(AllReLUs(), torch.randn(2, 3), {"soft_activation": {}})
    originals = [(r.site, r.original) for r in surgery.manifest_of(ghosted).activations]
    assert originals == [
        ("relu", "nn.ReLU()"),
        ("relu", "nn.ReLU()"),  # the shared instance: one record and one ghost per call site
        ("relu_2", "F.relu"),
        ("relu_3", "torch.relu"),
        ("relu_4", "Tensor.relu"),
        ("relu_", "Tensor.relu_"),
        ("relu_5", "F.relu"),
        ("relu_ip", "nn.ReLU(inplace=True)"),
        ("relu__1", "torch.relu_"),
    ]
    assert len({r.ghost for r in surgery.manifest_of(ghosted).activations}) == AllReLUs.RELU_SITES


def test_ghosted_model_computes_pswish_wherever_relu_was():
    model = AllReLUs()
    x = torch.randn(4, 3)
    ghosted = surgery.compile(model, x, {"soft_activation": {"beta": 2.0}})

    def ps(t):
        return t * torch.sigmoid(2.0 * t)

    expected = ps(x) + ps(x - 1) + ps(x + 1) + ps(x * 2) + ps(x * 3) + ps(x * 4) + ps(x * 5) + ps(x * 6) + ps(x * 7)
    torch.testing.assert_close(ghosted(x), expected + F.gelu(x))


def test_readers_of_an_in_place_activations_input_see_the_soft_value():
    class ReadsAfter(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)
            self.act = nn.ReLU(inplace=True)

        def forward(self, x):
            y = self.conv(x)
            before = y * 1  # read before the in-place op: the raw conv output
            self.act(y)  # result discarded; `y` itself is now activated
            return y + before

    model = seeded(ReadsAfter).eval()
    x = torch.randn(1, 2, 3, 3)
    ghosted = surgery.compile(model, x, {"soft_activation": {}})
    raw = model.conv(x)
    torch.testing.assert_close(ghosted(x), raw * torch.sigmoid(raw) + raw)


@pytest.mark.parametrize(("kind", "cls"), [("pswish", PSwish), ("swish", Swish), ("mish", Mish)])
def test_kind_chooses_the_soft_activation(kind, cls):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).eval()
    x = torch.randn(3, 4)
    ghosted = surgery.compile(model, x, {"soft_activation": {"kind": kind}})
    ((_, ghost),) = ghosts(ghosted)
    assert type(ghost) is cls
    h = model[0](x)
    expected = {"pswish": h * torch.sigmoid(h), "swish": F.silu(h), "mish": F.mish(h)}[kind]
    torch.testing.assert_close(ghosted(x), expected)
    assert surgery.manifest_of(ghosted).activations[0].kind == kind



@pytest.mark.parametrize("kind", [nn.SiLU, functools.partial(nn.LeakyReLU, 0.2), lambda: nn.Softplus(beta=2.0)],
                         ids=["class", "partial", "factory"])
def test_kind_may_be_a_module_class_or_a_factory_and_deghosts_to_the_relu(kind):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2), nn.ReLU()).eval()
    x = torch.randn(3, 4)
    ghosted = surgery.compile(model, x, {"soft_activation": {"kind": kind}})
    held = [ghost for _, ghost in ghosts(ghosted)]
    assert len(held) == 2 and all(isinstance(g, ModuleActivation) for g in held)
    assert held[0].activation is not held[1].activation  # one instance per site
    h = kind()(model[0](x))
    torch.testing.assert_close(ghosted(x), kind()(model[2](h)))
    plain = surgery.deghost(ghosted)
    assert not ghosts(plain) and sum(isinstance(m, nn.ReLU) for m in plain.modules()) == 2
    torch.testing.assert_close(plain(x), model(x))


def test_a_class_kind_is_recorded_by_its_dotted_name():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    recipe = surgery.Recipe(soft_activation={"kind": nn.SiLU})
    ghosted = surgery.compile(model, torch.randn(2, 4), recipe)
    assert recipe.to_dict()["soft_activation"]["kind"] == "torch.nn.modules.activation.SiLU"
    assert surgery.manifest_of(ghosted).activations[0].kind == "torch.nn.modules.activation.SiLU"
    yaml.safe_load(yaml.safe_dump(recipe.to_dict()))  # plain strings only


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        (3, r"soft_activation.kind = 3 is neither a name from \['pswish', 'swish', 'mish'\] nor callable"),
        (nn.LeakyReLU(), r"kind = LeakyReLU.* is a module, not a class or factory; pass nn.LeakyReLU"),
        (lambda: torch.relu, r"soft_activation.kind = .*<lambda> built a builtin_function_or_method, not an activation"),
        (nn.Threshold, r"soft_activation.kind = torch.nn.modules.activation.Threshold cannot be called without"),
        ("sigmoid", r"'sigmoid' is not one of .*from Python it may also be an nn.Module class"),
    ],
    ids=["number", "instance", "not-a-module", "needs-arguments", "unknown-name"],
)
def test_a_bad_kind_is_a_recipe_error_naming_the_accepted_forms(kind, message):
    with pytest.raises(surgery.RecipeError, match=message):
        surgery.Recipe(soft_activation={"kind": kind})


def test_beta_applies_to_pswish_only_also_for_a_class_kind():
    with pytest.raises(surgery.RecipeError, match=r"beta applies to kind 'pswish' only \(torch.nn.modules.activation.SiLU"):
        surgery.Recipe(soft_activation={"kind": nn.SiLU, "beta": 2.0})


def test_beta_option_is_the_starting_beta_and_a_buffer():
    ghosted = surgery.compile(seeded(SmallCNN), torch.randn(2, 3, 8, 8), {"soft_activation": {"beta": 4.0}})
    betas = {n: b for n, b in ghosted.named_buffers() if n.endswith(".beta")}
    assert len(betas) == 2 and {b.item() for b in betas.values()} == {4.0}
    assert not any(n.endswith(".beta") for n, _ in ghosted.named_parameters())


@pytest.mark.parametrize(
    ("act", "target"),
    [(nn.GELU(), "gelu"), (nn.SiLU(), "silu"), (nn.ReLU6(), "relu6"), (nn.LeakyReLU(), "leaky_relu"), (nn.ELU(), "elu")],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_other_activations_change_only_when_targeted(act, target):
    model = nn.Sequential(nn.Linear(4, 4), act, nn.Linear(4, 4), nn.ReLU())
    x = torch.randn(2, 4)
    default = surgery.compile(model, x, {"soft_activation": {}})
    assert type(default.get_submodule("1")) is type(act)
    assert [r.site for r in surgery.manifest_of(default).activations] == ["3"]
    targeted = surgery.compile(model, x, {"soft_activation": {"targets": [target]}})
    assert [r.site for r in surgery.manifest_of(targeted).activations] == ["1"]
    both = surgery.compile(model, x, {"soft_activation": {"targets": ["relu", target]}})
    assert [r.site for r in surgery.manifest_of(both).activations] == ["1", "3"]


def test_functional_gelu_with_kwargs_is_targetable():
    class G(nn.Module):
        def forward(self, x):
            return F.gelu(x, approximate="tanh")

    ghosted = surgery.compile(G(), torch.randn(3), {"soft_activation": {"targets": "gelu"}})
    (node,) = [n for n in ghosted.graph.nodes if n.op == "call_module"]
    assert node.kwargs == {"approximate": "tanh"}  # kept for the exact restore


def test_exclude_patterns_keep_matching_sites():
    ghosted = surgery.compile(AllReLUs(), torch.randn(2, 3), {"soft_activation": {"exclude": ["relu_ip", "relu_?"]}})
    manifest = surgery.manifest_of(ghosted)
    sites = [r.site for r in manifest.activations]
    assert "relu_ip" not in sites and not any(len(s) == 6 and s.startswith("relu_") for s in sites)
    assert ("relu_ip", "excluded by soft_activation.exclude") in manifest.skipped
    assert len(sites) == AllReLUs.RELU_SITES - 5  # relu_ip, relu_2..relu_5


def test_no_relu_at_all_warns_instead_of_silently_doing_nothing():
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU())
    with pytest.warns(UserWarning, match="found no relu"):
        ghosted = surgery.compile(model, torch.randn(2, 4), {"soft_activation": {}})
    assert ghosts(ghosted) == []


def test_soft_ghosts_carry_the_original_op_and_target():
    ghosted = surgery.compile(MLP(), torch.randn(2, 8), {"soft_activation": {}})
    ((_, ghost),) = ghosts(ghosted)
    assert isinstance(ghost, SoftActivation)
    assert (ghost.original_op, ghost.original_target) == ("call_module", "act")


def test_no_warning_when_relus_exist():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        surgery.compile(MLP(), torch.randn(2, 8), {"soft_activation": {}})
