"""One graph per mode: a forward that branches on ``self.training`` in Python (``surgery.fx.modes``).

``surgery.compile`` traces the model in train and in eval mode. Where the two programs differ it
returns a ``ModeGraphModule``: one union graph, passes run once on it (one ghost per site, masks
attached once, one state_dict), and the forward runs the program of the module's current mode.
These tests pin what a user of such a model relies on: each mode computes what the original
computes in that mode, whichever mode it was compiled from; de-ghosting and verify cover both;
the manifest says where the forward branches; what cannot work is refused, and the user's
model is left as it was.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from conftest import seeded
from torch import fx, nn

import surgery
from surgery.fx.branches import Branch
from surgery.compiler.ghosts import Ghost, ghost_parameters, ghosts
from surgery.compiler.masks import masked_parameters
from surgery.fx.modes import EVAL, MODE_KEY, TRAIN, ModeGraphModule, editing, graphs_by_mode
from surgery.compiler.passes.ghost_skip import CONV_KINDS
from surgery.pruning import random_masks

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
SKIPS = {"ghost_skip": {"targets": [*CONV_KINDS, "linear"]}}  # a skip at every conv and Linear
RECIPE = {**SKIPS, "soft_activation": {}}  # and PSwish for every ReLU
FROM_EITHER_MODE = pytest.mark.parametrize("training", [True, False], ids=["from-train", "from-eval"])


# ------------------------------------------------------------------ test models


class AuxHead(nn.Module):
    """GoogLeNet's pattern: an auxiliary head computed and returned only in training."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.aux_conv = nn.Conv2d(4, 4, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4, 3)
        self.aux = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        out = self.head(self.drop(torch.relu(self.conv(x)).mean((2, 3))))
        if self.training:
            return out, self.aux(torch.relu(self.aux_conv(x)).mean((2, 3)))
        return out


class Smooths(nn.Module):
    """Chooses its output by a conditional expression on its own ``self.training``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.smooth = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return torch.relu(self.smooth(y)) if self.training else torch.relu(y)


class Nested(nn.Module):
    """The branch sits in ``block``, not in the model's own forward."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = Smooths()
        self.drop = nn.Dropout(0.25)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.drop(self.block(torch.relu(self.stem(x))).mean((2, 3))))


class FunctionalDropout(nn.Module):
    """Reads ``self.training`` only as an argument: surgery makes the dropout a module, one program."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        y = F.dropout(torch.relu(self.conv(x)), 0.5, training=self.training)
        return self.head(y.mean((2, 3)))


class Plain(nn.Module):
    """No Python branch: BatchNorm and Dropout switch inside torch.nn's own modules."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.bn(self.conv(x))).mean((2, 3))))


class ScalesByMode(nn.Module):
    """A tensor made in the forward (fx parks it on the root as a constant) whose value depends on the mode."""

    def __init__(self, train_scale: float = 2.0, eval_scale: float = 3.0):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.scales = (train_scale, eval_scale)

    def forward(self, x):
        return torch.relu(self.conv(x)) * torch.tensor(self.scales[0] if self.training else self.scales[1])


class Classifier(nn.Module):
    """stem conv -> ``block`` (the module under test) -> pooled linear head."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = block
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.block(torch.relu(self.stem(x))).mean((2, 3)))


class FusesOnEval(nn.Module):
    """Re-parameterizes in ``train()``: eval() fuses its two convs into a new ``fused`` conv, train() drops it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.b = nn.Conv2d(4, 4, 3, padding=1)

    def train(self, mode: bool = True):
        super().train(mode)
        if not mode and not hasattr(self, "fused"):
            self.fused = nn.Conv2d(4, 4, 3, padding=1)
            with torch.no_grad():
                self.fused.weight.copy_(self.a.weight + self.b.weight)
                self.fused.bias.copy_(self.b.bias)
        elif mode and hasattr(self, "fused"):
            del self.fused
        return self

    def forward(self, x):
        if self.training:
            return self.a(x) + self.b(x)
        return self.fused(x)


class ReshapesOnEval(nn.Module):
    """Keeps its 1x1 weight as a matrix in eval mode: ``train()`` reshapes the parameter."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4, 1, 1))

    def train(self, mode: bool = True):
        super().train(mode)
        shape = (4, 4, 1, 1) if mode else (4, 4)
        if tuple(self.weight.shape) != shape:
            self.weight = nn.Parameter(self.weight.detach().reshape(shape))
        return self

    def forward(self, x):
        if self.training:
            return F.conv2d(x, self.weight)
        return torch.einsum("oc,nchw->nohw", self.weight, x)


class AddsOffsetInEval(nn.Module):
    """Registers a buffer the first time its forward runs in eval mode."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if self.training:
            return y
        if not hasattr(self, "offset"):
            self.register_buffer("offset", torch.full((4, 1, 1), 0.5))
        return y + self.offset


class MarksItsWeightInTraining(nn.Module):
    """Sets a Python attribute on its parameters when its forward runs in train mode."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        if self.training:
            for param in self.conv.parameters():
                param.seen = True
        return self.conv(x)


# ------------------------------------------------------------------ helpers


def forward(model: nn.Module, training: bool, x: torch.Tensor = X):
    """``model(x)`` in train or eval mode, every random generator seeded alike (dropout)."""
    model.train(training)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return model(x)


def tensors(output) -> list[torch.Tensor]:
    return list(output) if isinstance(output, (tuple, list)) else [output]


def assert_same_outputs(a, b, atol: float = 1e-6) -> None:
    assert type(a) is type(b) and len(tensors(a)) == len(tensors(b))
    for ta, tb in zip(tensors(a), tensors(b)):
        assert ta.shape == tb.shape and (ta - tb).abs().max().item() <= atol


def assert_runs_like(original: nn.Module, compiled: nn.Module) -> None:
    """Both modes, train first (its BatchNorm statistics update alike in both), seeded alike."""
    with torch.no_grad():
        for training in (True, False):
            assert_same_outputs(forward(compiled, training), forward(original, training))


def ghost_calls(graph: fx.Graph, gm: nn.Module) -> Counter:
    """How often ``graph`` calls each ghost module, by target."""
    return Counter(n.target for n in graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), Ghost))


def skip_ghosts(gm: nn.Module) -> dict[str, str]:
    """{conv or Linear site: its GhostSkip's target}."""
    return {s.site: s.ghost for s in surgery.manifest_of(gm).skips}


def branch_line(cls: type) -> tuple[str, int, str]:
    """File (as imported: this directory is on sys.path under pytest), number and text of the line in
    ``cls.forward`` that reads ``self.training``."""
    lines, start = inspect.getsourcelines(cls.forward)
    offset = next(i for i, text in enumerate(lines) if "self.training" in text)
    return os.path.basename(cls.forward.__code__.co_filename), start + offset, lines[offset].strip()


def module_state(model: nn.Module) -> dict[str, tuple]:
    """Per module: class, mode flag, Python attribute names, and which tensor objects of which shapes it holds."""
    return {
        path: (
            type(m),
            m.training,
            sorted(vars(m)),
            {name: (id(t), tuple(t.shape)) for name, t in [*m._parameters.items(), *m._buffers.items()] if t is not None},
            {name: sorted(vars(p)) for name, p in m._parameters.items() if p is not None},
        )
        for path, m in model.named_modules()
    }


# ------------------------------------------------------------------ 1. one program per mode


@FROM_EITHER_MODE
@pytest.mark.parametrize("factory", [AuxHead, Nested], ids=["aux-head", "nested-ternary"])
def test_each_mode_runs_the_originals_program_whichever_mode_it_was_compiled_from(factory, training):
    model = seeded(factory).train(training)
    gm = surgery.compile(model, X, SKIPS)
    assert isinstance(gm, ModeGraphModule) and surgery.manifest_of(gm).mode_graphs == 2
    assert gm.training == training and model.training == training
    surgery.set_ghost_strength(gm, alpha=0.0)  # the skips now pass their input through exactly
    assert_runs_like(model, gm)
    with torch.no_grad():
        train_out, eval_out = forward(model, True), forward(model, False)
    assert isinstance(train_out, tuple) or not torch.equal(train_out, eval_out)  # the two programs differ


@pytest.mark.parametrize("factory", [AuxHead, Nested], ids=["aux-head", "nested-ternary"])
def test_one_state_dict_serves_both_programs_a_train_step_moves_what_eval_reads(factory):
    model = seeded(factory).train()
    gm = surgery.compile(model, X, SKIPS)
    surgery.set_ghost_strength(gm, alpha=0.0)
    held = {id(p) for p in ghost_parameters(gm)}
    assert len({id(p) for p in gm.parameters()} - held) == len(list(model.parameters()))
    assert sorted(surgery.deghost(gm).state_dict()) == sorted(model.state_dict())
    for m in (model, gm):  # one SGD step in train mode on each, alike
        optimizer = torch.optim.SGD(m.parameters(), lr=0.5)
        sum(t.square().sum() for t in tensors(forward(m, True))).backward()
        optimizer.step()
    with torch.no_grad():
        assert_same_outputs(forward(gm, False), forward(model, False))


@pytest.mark.parametrize(
    ("factory", "both", "train_only"),
    [(AuxHead, {"stem", "conv", "head"}, {"aux_conv", "aux"}), (Nested, {"stem", "block.conv"}, {"block.smooth"})],
    ids=["aux-head", "nested-ternary"],
)
def test_a_site_both_modes_reach_has_one_ghost_which_both_programs_call(factory, both, train_only):
    gm = surgery.compile(seeded(factory), X, RECIPE)
    union = ghost_calls(gm.union, gm)
    assert set(union) == {name for name, _ in ghosts(gm)}
    by_mode = {mode: ghost_calls(graph, gm) for mode, graph in graphs_by_mode(gm).items()}
    assert all(set(calls.values()) == {1} for calls in by_mode.values())  # each ghost: one node per program
    assert set(by_mode[TRAIN]) | set(by_mode[EVAL]) == set(union)
    skips = skip_ghosts(gm)
    for site in both:
        assert by_mode[TRAIN][skips[site]] == by_mode[EVAL][skips[site]] == 1
    for site in train_only:
        assert by_mode[TRAIN][skips[site]] == 1 and skips[site] not in by_mode[EVAL]
    shared = gm.get_submodule(skips["stem"])
    calls = []
    shared.register_forward_hook(lambda module, args, output: calls.append(gm.training))
    with torch.no_grad():
        forward(gm, True), forward(gm, False)
    assert calls == [True, False]  # the one module object, called by each program


def test_a_site_after_the_branch_rejoins_has_one_ghost_for_both_modes():
    gm = surgery.compile(seeded(Nested), X, SKIPS)  # `head` reads the block's output, which differs by mode
    records = [s for s in surgery.manifest_of(gm).skips if s.site == "head"]
    assert len(records) == 1
    by_mode = {mode: Counter(n.target for n in graph.nodes if n.op == "call_module")
               for mode, graph in graphs_by_mode(gm).items()}
    assert by_mode[TRAIN][records[0].ghost] == by_mode[EVAL][records[0].ghost] == 1  # one ghost, trained in both


class ConvAfterTheBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.after = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.smooths = Smooths()

    def forward(self, x):
        return self.after(self.smooths(self.stem(x)))


def test_the_manifest_counts_a_conv_after_the_branch_once_not_once_per_mode():
    model = seeded(ConvAfterTheBranch)
    summary = surgery.manifest_of(surgery.compile(model, X, SKIPS)).summary()
    assert summary["convs_found"] == 4  # stem, smooths.conv, smooths.smooth, after: one node per mode
    assert summary["convs_covered"] == summary["convs_targeted"] == 4  # one ghost each, both modes share it


@pytest.mark.parametrize("factory", [AuxHead, Nested], ids=["aux-head", "nested-ternary"])
def test_masks_are_attached_once_and_both_programs_compute_with_the_pruned_weights(factory):
    model = seeded(factory).train()
    masks = random_masks(model, 0.5)
    gm = surgery.compile(model, X, {**SKIPS, "masks": masks})
    assert set(masked_parameters(gm)) == set(masks)
    for name in masks:
        module, attr = name.rsplit(".", 1)
        assert len(gm.get_submodule(module).parametrizations[attr]) == 1
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for name, mask in masks.items():
            pruned.get_parameter(name).mul_(mask)
    surgery.set_ghost_strength(gm, alpha=0.0)
    assert_runs_like(pruned, gm)


@pytest.mark.parametrize("factory", [AuxHead, Nested], ids=["aux-head", "nested-ternary"])
def test_deghost_strips_both_programs_and_verify_checks_each_mode(factory):
    model = seeded(factory).train()
    ghosted = surgery.compile(model, X, {**RECIPE, "masks": random_masks(model, 0.5)})
    clean = surgery.deghost(ghosted)
    assert isinstance(clean, ModeGraphModule) and not ghosts(clean) and not masked_parameters(clean)
    assert all(not ghost_calls(graph, ghosted) for graph in graphs_by_mode(clean).values())
    assert sorted(clean.state_dict()) == sorted(model.state_dict())
    report = surgery.verify(model, clean, X, ghosted=ghosted)
    assert report.mode_graphs == 2 and "in train and in eval mode" in str(report)
    assert report.outputs_max_abs_diff <= 1e-6 and report.train_outputs_max_abs_diff <= 1e-6
    assert report.ghost_parity_max_abs_diff <= 1e-6
    assert ghosts(ghosted)  # de-ghosting a copy left the ghosted module's programs alone
    with torch.no_grad():
        assert isinstance(forward(ghosted, True), tuple if factory is AuxHead else torch.Tensor)


@FROM_EITHER_MODE
def test_a_functional_dropout_on_self_training_is_one_program_that_follows_the_mode(training):
    model = seeded(FunctionalDropout).train(training)
    gm = surgery.compile(model, X, SKIPS)
    assert not isinstance(gm, ModeGraphModule) and gm.training == training
    manifest = surgery.manifest_of(gm)
    assert manifest.mode_graphs == 1 and manifest.mode_branches == []
    surgery.set_ghost_strength(gm, alpha=0.0)
    assert_runs_like(model, gm)
    with torch.no_grad():
        assert not torch.equal(forward(model, True), forward(model, False))  # dropout is on in training only


@FROM_EITHER_MODE
def test_a_model_without_a_branch_stays_one_plain_graph_at_no_extra_cost(training):
    model = seeded(Plain).train(training)
    gm = surgery.compile(model, X)
    assert type(gm).__mro__[1] is fx.GraphModule and not isinstance(gm, ModeGraphModule)
    assert [m.training for m in gm.modules()] == [m.training for m in model.modules()] == [training] * 5
    assert len(gm.graph.nodes) == len(surgery.trace(model).graph.nodes)
    assert graphs_by_mode(gm) == {"": gm.graph}
    assert surgery.manifest_of(gm).mode_graphs == 1
    assert_runs_like(model, gm)
    assert surgery.verify(model, surgery.deghost(gm), X).mode_graphs == 1


# ------------------------------------------------------------------ 2. where the forward branches


@FROM_EITHER_MODE
@pytest.mark.parametrize(
    ("factory", "path", "cls", "modes"),
    [(AuxHead, "", AuxHead, ("train",)), (Nested, "block", Smooths, ("train", "eval"))],
    ids=["aux-head-at-the-root", "ternary-in-block"],
)
def test_the_manifest_names_the_module_and_the_source_line_where_the_forward_branches(factory, path, cls, modes, training):
    gm = surgery.compile(seeded(factory).train(training), X, RECIPE)
    manifest = surgery.manifest_of(gm)
    file, line, code = branch_line(cls)
    assert manifest.mode_graphs == 2
    assert manifest.mode_branches == [Branch(path, f"{cls.__module__}.{cls.__qualname__}", f"{file}:{line}", code, modes)]
    assert code in manifest.mode_branches[0].describe()


# ------------------------------------------------------------------ 3. verify tells which mode differs


class AuxHeadSoftmaxInEval(AuxHead):
    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        out = self.head(self.drop(torch.relu(self.conv(x)).mean((2, 3))))
        if self.training:
            return out, self.aux(torch.relu(self.aux_conv(x)).mean((2, 3)))
        return out.softmax(-1)


class AuxHeadScaledAuxInTraining(AuxHead):
    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        out = self.head(self.drop(torch.relu(self.conv(x)).mean((2, 3))))
        if self.training:
            return out, self.aux(torch.relu(self.aux_conv(x)).mean((2, 3))) * 2
        return out


@pytest.mark.parametrize(
    ("other", "mode"), [(AuxHeadSoftmaxInEval, EVAL), (AuxHeadScaledAuxInTraining, TRAIN)], ids=["eval", "train"]
)
def test_verify_against_an_original_whose_one_mode_differs_names_that_mode(other, mode):
    model = seeded(AuxHead)
    clean = surgery.deghost(surgery.compile(model, X, RECIPE))
    surgery.verify(model, clean, X)
    different = other()
    different.load_state_dict(model.state_dict())
    with pytest.raises(surgery.VerificationError) as caught:
        surgery.verify(different, clean, X)
    fine = TRAIN if mode == EVAL else EVAL
    message = str(caught.value)
    assert f"{mode}-mode program differs from the original's in {mode} mode" in message
    assert f"{fine}-mode program" not in message


def test_an_edit_to_the_eval_only_nodes_of_the_union_reaches_the_eval_program_and_verify_catches_it():
    model = seeded(Nested)
    clean = surgery.deghost(surgery.compile(model, X, RECIPE))
    with editing(clean):
        (relu,) = [n for n in clean.graph.nodes if n.meta.get(MODE_KEY) == EVAL and n.target is torch.relu]
        relu.target = torch.sigmoid
    clean.recompile()
    with torch.no_grad():
        assert_same_outputs(forward(clean, True), forward(model, True))  # the train program is untouched
        assert not torch.allclose(forward(clean, False), forward(model, False))
    with pytest.raises(surgery.VerificationError, match=r"eval-mode program differs from the original's in eval mode"):
        surgery.verify(model, clean, X)


# ------------------------------------------------------------------ 4, 5. refused, the model left as it was


@FROM_EITHER_MODE
@pytest.mark.parametrize(
    ("block", "differs"),
    [(FusesOnEval, "block.fused.weight (absent in train mode, [4, 4, 3, 3] float32 in eval mode)"),
     (ReshapesOnEval, "block.weight ([4, 4, 1, 1] float32 in train mode, [4, 4] float32 in eval mode)")],
    ids=["fuses-on-eval", "reshapes-on-eval"],
)
def test_a_train_override_that_changes_the_parameters_is_refused_naming_them(block, differs, training):
    model = seeded(Classifier, block()).train(training)
    before = module_state(model)
    with pytest.raises(surgery.TraceError) as caught:
        surgery.compile(model, X, SKIPS)
    message = str(caught.value)
    assert "train- and eval-mode traces of Classifier hold different parameters or buffers" in message
    assert differs in message and "Fix:" in message
    assert module_state(model) == before


@pytest.mark.parametrize(
    ("block", "training", "change"),
    [(AddsOffsetInEval, True, "added buffer `block.offset`"),
     (MarksItsWeightInTraining, False, "set Python attribute(s) ['seen'] of parameter `block.conv.")],
    ids=["buffer-added-in-eval-compiled-from-train", "weight-marked-in-train-compiled-from-eval"],
)
def test_a_forward_that_changes_state_only_in_the_other_mode_is_refused_too(block, training, change):
    model = seeded(Classifier, block()).train(training)
    before = module_state(model)
    with pytest.raises(surgery.TraceError) as caught:
        surgery.compile(model, X, SKIPS)
    message = str(caught.value)
    assert change in message
    assert f"inside module `block` ({block.__module__}.{block.__qualname__})" in message
    assert module_state(model) == before


# ------------------------------------------------------------------ 6. tensor constants made by mode


@FROM_EITHER_MODE
def test_a_tensor_constant_whose_value_depends_on_the_mode_gives_each_modes_value(training):
    model = seeded(ScalesByMode).train(training)
    gm = surgery.compile(model, X, SKIPS)
    assert isinstance(gm, ModeGraphModule)
    surgery.set_ghost_strength(gm, alpha=0.0)
    assert_runs_like(model, gm)
    clean = surgery.deghost(gm)
    assert sorted(clean.state_dict()) == sorted(model.state_dict())  # the constants are not state
    report = surgery.verify(model, clean, X)
    assert report.mode_graphs == 2 and report.outputs_max_abs_diff == 0 and report.train_outputs_max_abs_diff == 0
    assert_runs_like(model, copy.deepcopy(clean))


def test_tensor_constants_equal_in_both_modes_are_one_program():
    model = seeded(ScalesByMode, 2.0, 2.0)
    gm = surgery.compile(model, X, SKIPS)
    assert not isinstance(gm, ModeGraphModule) and surgery.manifest_of(gm).mode_graphs == 1


# ------------------------------------------------------------------ 7. interop


@pytest.fixture
def aux_compiled() -> tuple[nn.Module, nn.Module, nn.Module]:
    """(the original AuxHead, ghosted with masks, de-ghosted), all in eval mode."""
    model = seeded(AuxHead).eval()
    ghosted = surgery.compile(model, X, {**RECIPE, "masks": random_masks(model, 0.5)})
    return model, ghosted, surgery.deghost(ghosted)


def test_a_deepcopy_keeps_both_programs_and_switches_mode_on_its_own(aux_compiled):
    _, ghosted, _ = aux_compiled
    twin = copy.deepcopy(ghosted)
    assert isinstance(twin, ModeGraphModule) and twin.code == ghosted.code
    assert not {id(p) for p in twin.parameters()} & {id(p) for p in ghosted.parameters()}
    assert_runs_like(ghosted, twin)
    twin.train(), ghosted.eval()
    with torch.no_grad():
        assert isinstance(twin(X), tuple) and torch.is_tensor(ghosted(X))


def test_a_shallow_copy_as_data_parallel_replicas_make_runs_both_programs_on_the_same_weights(aux_compiled):
    _, ghosted, _ = aux_compiled
    replica = ghosted._replicate_for_data_parallel()  # nn.DataParallel's copy of the module per device
    assert isinstance(replica, ModeGraphModule)
    assert {id(p) for p in replica.parameters()} == {id(p) for p in ghosted.parameters()}
    assert_runs_like(ghosted, replica)


def test_pickling_is_refused_with_advice_and_the_advice_works(aux_compiled, tmp_path):
    model, ghosted, clean = aux_compiled
    for module in (ghosted, clean):
        with pytest.raises(surgery.SurgeryError, match=r"torch.save\(model.state_dict\(\), path\)"):
            torch.save(module, tmp_path / "whole.pt")
    torch.save(ghosted.state_dict(), tmp_path / "state.pt")
    rebuilt = surgery.compile(model, X, {**RECIPE, "masks": random_masks(model, 0.5, seed=1)})
    rebuilt.load_state_dict(torch.load(tmp_path / "state.pt"))
    assert_runs_like(ghosted, rebuilt)


def test_graph_is_the_current_modes_program_for_fx_interpreter_and_torch_export(aux_compiled):
    _, _, clean = aux_compiled
    with torch.no_grad():
        clean.train()
        assert len(clean.graph.output_node().args[0]) == 2  # the train program returns (out, aux)
        clean.eval()
        expected = clean(X)
        assert torch.is_tensor(fx.Interpreter(clean).run(X)) and torch.equal(fx.Interpreter(clean).run(X), expected)
        exported = torch.export.export(clean, (X,), strict=False).module()
        assert torch.allclose(exported(X), expected, atol=1e-6)


def test_export_onnx_exports_the_eval_program(aux_compiled, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    _, _, clean = aux_compiled
    info = surgery.export_onnx(clean, (X,), tmp_path / "aux.onnx", sidecar=False)
    assert len(info.outputs) == 1 and info.max_rel_error <= 1e-4
    assert not clean.training


def test_inplace_deghost_keeping_masks_keeps_every_parameter_object(aux_compiled):
    _, ghosted, _ = aux_compiled
    held = {id(p) for p in ghost_parameters(ghosted)}
    kept = {name: p for name, p in ghosted.named_parameters() if id(p) not in held}
    masks = {name: mask.clone() for name, mask in masked_parameters(ghosted).items()}
    assert surgery.deghost(ghosted, inplace=True, keep_masks=True) is ghosted
    assert not ghosts(ghosted) and all(not ghost_calls(g, ghosted) for g in graphs_by_mode(ghosted).values())
    assert dict(ghosted.named_parameters()) == kept  # the same objects: an optimizer's state survives
    assert set(masked_parameters(ghosted)) == set(masks)
    assert all(torch.equal(masked_parameters(ghosted)[name], mask) for name, mask in masks.items())
    with torch.no_grad():
        assert isinstance(forward(ghosted, True), tuple) and torch.is_tensor(forward(ghosted, False))


# ------------------------------------------------------------------ 8. submodule=


def test_a_compiled_submodule_that_branches_runs_each_mode_like_the_original():
    model = seeded(Nested).train()
    whole = surgery.compile(model, X, SKIPS, submodule="block")
    assert type(whole) is Nested and isinstance(whole.block, ModeGraphModule)
    assert surgery.manifest_of(whole.block).mode_graphs == 2
    surgery.set_ghost_strength(whole, alpha=0.0)
    assert_runs_like(model, whole)  # whole.train() / .eval() switch the part's program
    ghosted = surgery.compile(model, X, RECIPE, submodule="block")
    report = surgery.verify(model, surgery.deghost(ghosted), X, ghosted=ghosted)
    assert report.submodules == ["block"] and report.mode_graphs == 2
    assert report.outputs_max_abs_diff <= 1e-6 and report.train_outputs_max_abs_diff <= 1e-6


# ------------------------------------------------------------------ 9. the user's model keeps its mode


@FROM_EITHER_MODE
def test_switching_the_compiled_models_mode_leaves_the_users_model_in_its_own(training):
    model = seeded(Nested).train(training)
    before = module_state(model)
    gm = surgery.compile(model, X, RECIPE)
    with torch.no_grad():
        forward(gm, not training), forward(gm, training), forward(gm, not training)
    assert module_state(model) == before


def test_a_frozen_batchnorm_stays_frozen_in_the_compiled_train_program():
    model = seeded(AuxHead).train()
    model.bn.eval()  # the user's fine-tuning setup: BatchNorm statistics frozen
    gm = surgery.compile(model, X, SKIPS)
    assert gm.training and not gm.bn.training
    surgery.set_ghost_strength(gm, alpha=0.0)
    statistics = gm.bn.running_mean.clone()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        expected = model(X)
        torch.manual_seed(0)
        assert_same_outputs(gm(X), expected)
    assert torch.equal(gm.bn.running_mean, statistics)


def test_a_submodule_that_branches_left_in_the_other_mode_is_refused_and_a_leaf_follows_its_own_flag():
    model = seeded(Nested).train()
    gm = surgery.compile(model, X, SKIPS)
    gm.train()
    gm.block.eval()  # the original would run block's eval branch inside a training model
    with pytest.raises(surgery.ModeError, match=r"module `block` is in eval mode .* --leaf block"):
        gm(X)
    leafed = surgery.compile(model, X, SKIPS, leaf_modules=["block"])  # opaque: block keeps its own Python
    assert not isinstance(leafed, ModeGraphModule)
    model.block.eval()
    leafed.train()
    leafed.block.eval()
    surgery.set_ghost_strength(leafed, alpha=0.0)
    with torch.no_grad():
        torch.manual_seed(0)
        expected = model(X)
        torch.manual_seed(0)
        assert torch.allclose(leafed(X), expected)
