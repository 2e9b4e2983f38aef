"""surgery.verify: the original is the oracle; failures say what differs in plain words."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from conftest import SmallCNN, seeded
from torch import nn

import surgery
from surgery.compiler.passes.ghost_skip import CONV_KINDS
from surgery.pruning import random_masks
from surgery.compiler.verify import check_graph, node_label, to_networkx

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
EVERY_CONV = {"targets": list(CONV_KINDS)}  # small models whose convs are stems: wrap them anyway
RECIPE = {"ghost_skip": EVERY_CONV, "soft_activation": {}}


def compiled(model, recipe=RECIPE):
    ghosted = surgery.compile(model, X, recipe)
    return ghosted, surgery.deghost(ghosted)


def test_a_faithful_deghost_passes_all_four_checks(small_cnn):
    ghosted, clean = compiled(small_cnn, {**RECIPE, "masks": random_masks(small_cnn, 0.5)})
    report = surgery.verify(small_cnn, clean, X, ghosted=ghosted)
    assert [check["check"] for check in report.to_dict()["checks"]] == [
        "graph", "strict_load", "outputs", "train_outputs", "ghost_parity"]
    assert report.mode_graphs == 1 and report.train_outputs_max_abs_diff <= 1e-5
    assert report.nodes == len(surgery.trace(small_cnn).graph.nodes)
    assert report.outputs_max_abs_diff <= 1e-5 and report.ghost_parity_max_abs_diff <= 1e-5
    assert "(d) ghosted at alpha=0" in str(report)
    data = json.loads(json.dumps(report.to_dict()))  # JSON-able, for run records
    assert data["passed"] is True and data["nodes"] == report.nodes
    assert data["checks"][2]["max_abs_diff"] == report.outputs_max_abs_diff
    assert "\n".join(check["text"] for check in data["checks"]) == str(report)


def test_verify_refuses_a_model_that_still_holds_ghosts(small_cnn):
    ghosted, _ = compiled(small_cnn)
    with pytest.raises(surgery.VerificationError, match=r"still holds 4 ghosts .*surgery.deghost\(ghosted\)"):
        surgery.verify(small_cnn, ghosted, X)


# ----------------------------------------------------------- (a) the graph


def test_a_changed_activation_is_named_with_its_module_and_class():
    original = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(inplace=True))
    wrong = surgery.trace(nn.Sequential(nn.Conv2d(3, 3, 1), nn.GELU()))
    with pytest.raises(surgery.VerificationError) as caught:
        surgery.verify(original, wrong)
    message = str(caught.value)
    assert ("`_1` changed: module `1` (ReLU(inplace=True)) in the original, "
            "module `1` (GELU(approximate='none')) after de-ghosting") in message


def test_a_lost_inplace_flag_is_a_difference():
    original = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(inplace=True))
    with pytest.raises(surgery.VerificationError, match=r"ReLU\(inplace=True\)"):
        surgery.verify(original, surgery.trace(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())))


def test_a_leftover_node_is_listed():
    original = SmallCNN()
    _, clean = compiled(seeded(SmallCNN))
    graph = clean.graph
    output = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(output):
        extra = graph.call_function(torch.neg, (output.args[0],))
    output.args = (extra,)
    clean.recompile()
    with pytest.raises(surgery.VerificationError, match=r"only in the de-ghosted graph: call torch\.neg\(%\) at `neg`"):
        surgery.verify(original, clean)


def test_rewired_inputs_are_described_when_nodes_match():
    class AMinusB(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 3, 1)
            self.b = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.a(x) - self.b(x)

    class BMinusA(AMinusB):
        def forward(self, x):
            return self.b(x) - self.a(x)

    with pytest.raises(surgery.VerificationError) as caught:
        surgery.verify(AMinusB(), surgery.trace(BMinusA()))
    message = str(caught.value)
    assert "`sub` (call operator.sub(%, %)) takes inputs [a, b] in the original, [b, a] after de-ghosting" in message


def test_isomorphism_ignores_node_names_and_order():
    model = seeded(SmallCNN)
    reference = surgery.trace(model)
    renamed = surgery.trace(model)
    for i, node in enumerate(renamed.graph.nodes):
        if node.op not in ("placeholder", "output"):
            node.name = f"n{i}"
    renamed.recompile()
    assert check_graph(reference, renamed) == len(reference.graph.nodes)


def test_labels_carry_op_module_class_and_constants():
    gm = surgery.trace(nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU()))
    conv = next(n for n in gm.graph.nodes if n.target == "0")
    label = node_label(gm, conv)
    assert label[:3] == ("call_module", "0", "Conv2d") and "stride=(2, 2)" in label[3]
    assert to_networkx(gm).number_of_edges() == 3  # input -> conv -> relu -> output


# ------------------------------------------------------ (b) strict state_dict


def test_an_extra_tensor_fails_the_strict_load_naming_the_key(small_cnn):
    _, clean = compiled(small_cnn)
    clean.register_buffer("leftover", torch.zeros(1))
    with pytest.raises(surgery.VerificationError) as caught:
        surgery.verify(small_cnn, clean, X)
    message = str(caught.value)
    assert "does not load strictly into SmallCNN" in message and "leftover" in message


def test_a_wrongly_shaped_tensor_fails_the_strict_load(small_cnn):
    _, clean = compiled(small_cnn)
    clean.fc.bias = nn.Parameter(torch.zeros(7))
    with pytest.raises(surgery.VerificationError, match="fc.bias"):
        surgery.verify(small_cnn, clean, X)


# ---------------------------------------------------------- (c) outputs


class ReLU(nn.ReLU):
    """Same class name and repr as torch's: only the numbers betray it."""

    def forward(self, x):
        return super().forward(x) + 1e-3


def test_different_outputs_under_an_identical_graph_are_caught(small_cnn):
    _, clean = compiled(small_cnn)
    clean.relu = ReLU(inplace=True)
    with pytest.raises(surgery.VerificationError, match=r"output of the original class and the de-ghosted module differ in eval mode: max \|diff\|"):
        surgery.verify(small_cnn, clean, X)


def test_outputs_are_compared_in_the_users_class_with_the_clean_weights(small_cnn):
    model, x = seeded(SmallCNN), X
    _, clean = compiled(model, {**RECIPE, "masks": random_masks(model, 0.9)})
    report = surgery.verify(small_cnn, clean, x)  # another instance, other weights: its class is what matters
    assert report.outputs_max_abs_diff == 0.0


# --------------------------------------------------- (d) ghosted parity


def test_a_ghosted_model_that_does_not_match_the_clean_one_is_caught(small_cnn):
    ghosted_a, clean_a = compiled(small_cnn, {**RECIPE, "masks": random_masks(small_cnn, 0.5, seed=0)})
    ghosted_b, _ = compiled(small_cnn, {**RECIPE, "masks": random_masks(small_cnn, 0.5, seed=1)})
    surgery.verify(small_cnn, clean_a, X, ghosted=ghosted_a)
    with pytest.raises(surgery.VerificationError, match=r"ghosted module \(alpha=0, activations restored\)"):
        surgery.verify(small_cnn, clean_a, X, ghosted=ghosted_b)


def test_parity_check_does_not_disturb_the_ghosted_model(small_cnn):
    ghosted, clean = compiled(small_cnn)
    surgery.verify(small_cnn, clean, X, ghosted=ghosted)
    assert {b.item() for n, b in ghosted.named_buffers() if n.endswith("alpha")} == {1.0}
    assert len(surgery.manifest_of(ghosted).activations) == 2
    assert any(n.target.startswith("_ghosts.act") for n in ghosted.graph.nodes if n.op == "call_module")


# ---------------------------------------------------------------- devices


def test_meta_models_get_the_structural_checks_only():
    with torch.device("meta"):
        model = torchvision.models.resnet18(num_classes=10)
    ghosted = surgery.compile(model, torch.randn(1, 3, 32, 32), {**RECIPE, "masks": random_masks(model, 0.9)})
    report = surgery.verify(model, surgery.deghost(ghosted), torch.randn(1, 3, 32, 32), ghosted=ghosted)
    assert [check["check"] for check in report.checks()] == ["graph", "strict_load"]
    assert report.outputs_max_abs_diff is None and report.ghost_parity_max_abs_diff is None


def test_verify_uses_the_leaves_the_module_was_compiled_with():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(x).relu()

    model = nn.Sequential(nn.Conv2d(3, 3, 1), Block())
    clean = surgery.deghost(surgery.compile(model, X, {"ghost_skip": EVERY_CONV}, leaf_modules=["1"]))
    assert surgery.verify(model, clean, X).nodes == len(clean.graph.nodes)  # Block stays one node
    with pytest.raises(surgery.VerificationError):
        surgery.verify(model, clean, X, leaf_modules=[])  # traced through, the original has more nodes


class AuxHead(nn.Module):
    """Like GoogLeNet: an extra output only in training, decided in Python."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.aux = nn.Linear(4, 2)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        features = self.conv(x).mean((2, 3))
        if self.training:
            return self.head(features), self.aux(features)
        return self.head(features)


def test_a_python_branch_on_training_compiles_in_either_mode_and_verifies_in_both():
    x = torch.randn(2, 3, 8, 8)
    for mode in (True, False):
        model = AuxHead().train(mode)
        ghosted = surgery.compile(model, x, {"ghost_skip": EVERY_CONV})
        report = surgery.verify(model, surgery.deghost(ghosted), x, ghosted=ghosted)
        assert report.mode_graphs == 2 and "in train and in eval mode" in str(report)
        assert report.outputs_max_abs_diff == 0 and report.train_outputs_max_abs_diff == 0
        assert model.training == mode


def test_a_train_mode_forward_the_original_cannot_run_is_said_not_checked():
    model = SmallCNN()
    clean = surgery.deghost(surgery.compile(model, X, {"ghost_skip": EVERY_CONV}))
    one_pixel = torch.randn(1, 3, 1, 1)  # BatchNorm needs more than one value per channel in training
    report = surgery.verify(model, clean, one_pixel)
    assert report.train_outputs_max_abs_diff is None
    assert "(c) train mode not checked: the original raises ValueError in train mode" in str(report)
