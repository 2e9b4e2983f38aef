"""De-ghosting: every ghost leaves exactly, masks are baked, state_dict keys come back, in place too."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import AllReLUs, SmallCNN, graph_signature, node_signature, seeded
from torch import nn
from torch.nn.utils import parametrize

import surgery
from surgery.compiler.ghosts import GHOSTS_ROOT, Ghost, ghosts
from surgery.compiler.masks import masked_parameters
from surgery.compiler.passes.ghost_skip import CONV_KINDS
from surgery.pruning import random_masks

# every conv kind: these tests are about stripping ghosts, on small models whose first conv is a stem
FULL = {"ghost_skip": {"projection": "conv1x1", "targets": list(CONV_KINDS)}, "soft_activation": {"kind": "pswish"}}
X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
LABELS = torch.arange(4) % 5


def full_recipe(model, sparsity=0.6):
    return {**FULL, "masks": random_masks(model, sparsity, seed=1)}


def train_steps(gm, optimizer, steps=2):
    gm.train()
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(gm(X), LABELS).backward()
        optimizer.step()


def assert_no_ghost_left(clean):
    assert ghosts(clean) == []
    assert not hasattr(clean, GHOSTS_ROOT)
    assert masked_parameters(clean) == {}
    assert not any(parametrize.is_parametrized(m) for m in clean.modules())
    assert not any(n.endswith((".alpha", ".beta")) for n, _ in clean.named_buffers())
    for node in clean.graph.nodes:
        if node.op == "call_module":
            assert not isinstance(clean.get_submodule(node.target), Ghost)


# ------------------------------------------------------------------ structure


def test_deghost_returns_the_original_graph_node_for_node():
    model = seeded(SmallCNN)
    clean = surgery.deghost(surgery.compile(model, X, full_recipe(model)))
    assert_no_ghost_left(clean)
    assert graph_signature(clean) == graph_signature(surgery.trace(model))


def test_soft_activations_are_restored_to_the_exact_original_nodes():
    model = AllReLUs()
    reference = surgery.trace(model)
    ghosted = surgery.compile(model, torch.randn(2, 3), {"soft_activation": {}})
    clean = surgery.deghost(ghosted)
    assert graph_signature(clean) == graph_signature(reference)
    inplace = [node_signature(n) for n in clean.graph.nodes if n.kwargs.get("inplace")]
    assert inplace and all(sig[3] == {"inplace": True} for sig in inplace)
    assert clean.get_submodule("relu_ip").inplace is True


def test_ghost_skip_strips_to_its_main_input():
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU())
    clean = surgery.deghost(surgery.compile(model, X, {"ghost_skip": {"targets": list(CONV_KINDS)}}))
    relu = next(n for n in clean.graph.nodes if n.target == "2")
    assert relu.args[0].target == "1"  # the norm the skip was anchored on


def test_state_dict_keys_equal_the_originals_in_order(small_cnn):
    clean = surgery.deghost(surgery.compile(small_cnn, X, full_recipe(small_cnn)))
    assert list(clean.state_dict()) == list(small_cnn.state_dict())
    assert [n for n, _ in clean.named_parameters()] == [n for n, _ in small_cnn.named_parameters()]
    type(small_cnn)().load_state_dict(clean.state_dict(), strict=True)


def test_masks_are_baked_into_plain_weights():
    model = seeded(SmallCNN)
    recipe = full_recipe(model)
    ghosted = surgery.compile(model, X, recipe)
    clean = surgery.deghost(ghosted)
    for name, mask in recipe["masks"].items():
        weight = clean.get_parameter(name)
        assert type(weight) is nn.Parameter
        assert torch.equal(weight, model.get_parameter(name).detach() * mask)


def test_deghost_copies_by_default_and_leaves_the_ghosted_model_working(small_cnn):
    ghosted = surgery.compile(small_cnn, X, full_recipe(small_cnn)).eval()
    before = ghosted(X)
    held, masks = len(ghosts(ghosted)), set(masked_parameters(ghosted))
    surgery.deghost(ghosted)
    assert len(ghosts(ghosted)) == held and set(masked_parameters(ghosted)) == masks
    assert torch.equal(ghosted(X), before)
    again = surgery.deghost(ghosted)  # the copy's parametrizations did not break the original's class
    assert_no_ghost_left(again)


def test_alpha_zero_ghosted_with_relu_restored_equals_deghosted(small_cnn):
    ghosted = surgery.compile(small_cnn, X, full_recipe(small_cnn))
    train_steps(ghosted, torch.optim.SGD(ghosted.parameters(), lr=0.05, momentum=0.9))
    clean = surgery.deghost(ghosted).eval()
    probe = surgery.compile(small_cnn, X, {"ghost_skip": FULL["ghost_skip"], "masks": full_recipe(small_cnn)["masks"]})
    probe.load_state_dict({k: v for k, v in ghosted.state_dict().items() if "_ghosts.act" not in k}, strict=True)
    surgery.set_ghost_strength(probe, alpha=0.0)
    assert torch.equal(probe.eval()(X), clean(X))


# ------------------------------------------------------------------ in place


def test_in_place_deghost_keeps_parameter_identity_and_optimizer_state(small_cnn):
    ghosted = surgery.compile(small_cnn, X, full_recipe(small_cnn))
    optimizer = torch.optim.SGD(ghosted.parameters(), lr=0.05, momentum=0.9)
    train_steps(ghosted, optimizer)
    kept = {id(p) for n, p in ghosted.named_parameters() if not n.startswith(GHOSTS_ROOT)}
    momentum = {id(p): optimizer.state[p]["momentum_buffer"].clone() for p in ghosted.parameters() if id(p) in kept}
    clean = surgery.deghost(ghosted, inplace=True)
    assert clean is ghosted
    assert_no_ghost_left(clean)
    assert {id(p) for p in clean.parameters()} == kept
    for p in clean.parameters():
        assert torch.equal(optimizer.state[p]["momentum_buffer"], momentum[id(p)])
    train_steps(clean, optimizer, steps=1)  # training goes on with the same optimizer


def test_keep_masks_keeps_pruned_weights_at_zero_for_further_training(small_cnn):
    recipe = full_recipe(small_cnn)
    ghosted = surgery.compile(small_cnn, X, recipe)
    optimizer = torch.optim.AdamW(ghosted.parameters(), lr=0.05, weight_decay=0.1)
    train_steps(ghosted, optimizer)
    clean = surgery.deghost(ghosted, inplace=True, keep_masks=True)
    assert ghosts(clean) == [] and set(masked_parameters(clean)) == set(recipe["masks"])
    train_steps(clean, optimizer)
    for name, mask in recipe["masks"].items():
        module = clean.get_submodule(name.rpartition(".")[0])
        stored = module.parametrizations.weight.original
        assert torch.equal(stored[~mask], torch.zeros_like(stored[~mask]))
    final = surgery.deghost(clean)
    assert_no_ghost_left(final)
    assert list(final.state_dict()) == list(small_cnn.state_dict())


# ---------------------------------------------------------------- tricky graphs


class InPlaceReread(nn.Module):
    """An in-place ReLU whose input is read again afterwards, feeding another conv."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        y = self.bn(self.conv1(x))
        self.act(y)
        return self.conv2(y) + y


@pytest.mark.parametrize("order", ["skip-first", "activation-first"])
def test_in_place_activation_rereads_survive_both_pass_orders(order):
    model = seeded(InPlaceReread).eval()
    recipe = FULL if order == "skip-first" else dict(reversed(list(FULL.items())))
    ghosted = surgery.compile(model, X, recipe)
    assert surgery.manifest_of(ghosted).passes == list(recipe)
    clean = surgery.deghost(ghosted)
    assert graph_signature(clean) == graph_signature(surgery.trace(model))
    surgery.verify(model, clean, X, ghosted=ghosted)


def test_resnet18_end_to_end(resnet18, image32):
    masks = random_masks(resnet18, 0.8, seed=0)
    ghosted = surgery.compile(resnet18, image32, {**FULL, "masks": masks})
    summary = surgery.manifest_of(ghosted).summary()
    assert summary["convs_covered"] == summary["convs_found"] == 20
    assert summary["projections"] == {"identity": 13, "conv1x1": 7}
    assert summary["activations_swapped"] == 17 and summary["weights_masked"] == 21
    optimizer = torch.optim.SGD(ghosted.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    ghosted.train()
    optimizer.zero_grad()
    ghosted(image32).logsumexp(1).mean().backward()
    optimizer.step()
    clean = surgery.deghost(ghosted)
    assert_no_ghost_left(clean)
    report = surgery.verify(resnet18, clean, image32, ghosted=ghosted)
    assert report.outputs_max_abs_diff <= 1e-5 and report.ghost_parity_max_abs_diff <= 1e-5
    fresh = torchvision.models.resnet18(num_classes=10)
    fresh.load_state_dict(clean.state_dict(), strict=True)
    for name, mask in masks.items():
        assert torch.equal(fresh.get_parameter(name)[~mask], torch.zeros(int((~mask).sum())))


def test_in_place_deghost_of_a_deepcopy_leaves_the_original_working(small_cnn):
    ghosted = surgery.compile(small_cnn, X, full_recipe(small_cnn)).eval()
    expected = ghosted(X)
    ema = copy.deepcopy(ghosted)  # what EMA helpers (timm's ModelEmaV2 ...) do
    surgery.deghost(ema, inplace=True)
    assert torch.equal(ghosted(X), expected)
    assert set(masked_parameters(ghosted)) == {"conv1.weight", "conv2.weight", "fc.weight"}


class Extras(nn.Module):
    """Functional ReLU and dropout, a tensor constant, a root parameter, an unused module."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.unused = nn.Linear(2, 2)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        y = F.relu(self.conv(x)) * self.scale + torch.tensor([0.5])
        return F.dropout(y, 0.2, self.training)


def test_round_trip_keeps_constants_dropout_and_unused_state():
    model = seeded(Extras).train()
    ghosted = surgery.compile(model, X, {**FULL, "masks": random_masks(model, 0.5)})
    clean = surgery.deghost(ghosted)
    assert list(clean.state_dict()) == list(model.state_dict())
    report = surgery.verify(model, clean, X, ghosted=ghosted)
    assert report.outputs_max_abs_diff == 0.0 and report.ghost_parity_max_abs_diff == 0.0


class Aliased(nn.Module):
    """One conv registered under two names (as shared or tied modules are)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.shared = self.conv

    def forward(self, x):
        return self.shared(torch.relu(self.conv(x)))


def test_a_module_registered_under_two_names_keeps_both_keys():
    model = seeded(Aliased)
    ghosted = surgery.compile(model, X, FULL)
    assert list(ghosted.state_dict())[:4] == list(model.state_dict())
    clean = surgery.deghost(ghosted)
    assert list(clean.state_dict()) == list(model.state_dict())
    surgery.verify(model, clean, X, ghosted=ghosted)
