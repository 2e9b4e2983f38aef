"""surgery.compile(..., submodule=...): ToST on the traceable part of a model fx cannot trace whole."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

import surgery
from surgery.compiler.ghosts import ghosts
from surgery.compiler.masks import masked_parameters

TOST = {"ghost_skip": {"projection": "conv1x1"}, "soft_activation": {"kind": "pswish"}}
X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(16)

    def forward(self, x):
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


class Detector(nn.Module):
    """A traceable backbone under a forward fx cannot trace: the head filters rows in Python."""

    def __init__(self):
        super().__init__()
        self.backbone = Backbone()
        self.head = nn.Sequential(nn.Linear(16, 4))
        self.spare = nn.Sequential(nn.Linear(4, 4))  # never called

    def forward(self, x):
        scores = self.head(self.backbone(x).mean((2, 3)))
        kept = [row for row in scores if float(row.detach().max()) > -1e9]
        return {"scores": torch.stack(kept), "count": len(kept)}


def detector() -> Detector:
    torch.manual_seed(0)
    return Detector()


def test_the_whole_model_comes_back_with_its_backbone_ghosted_and_trains():
    model = detector()
    ghosted = surgery.compile(model, X, TOST, submodule="backbone")
    assert type(ghosted) is Detector and isinstance(ghosted.backbone, fx.GraphModule)
    assert surgery.compiled_submodules(ghosted) == {"backbone": ghosted.backbone}
    assert ghosts(ghosted) and all(name.startswith("backbone._ghosts.") for name, _ in ghosts(ghosted))
    assert surgery.set_ghost_strength(ghosted, alpha=0.5, beta=2.0) > 0
    optimizer = torch.optim.SGD(ghosted.parameters(), lr=0.1)
    ghosted.train()
    ghosted(X)["scores"].square().mean().backward()
    optimizer.step()
    assert all(p.grad is not None for p in surgery.ghost_parameters(ghosted))
    assert ghosted.head[0].weight.grad is not None and ghosted.backbone.conv1.weight.grad is not None


def test_the_manifest_of_the_whole_model_names_sites_in_it():
    manifest = surgery.manifest_of(surgery.compile(detector(), X, TOST, submodule="backbone"))
    assert manifest.model.endswith("Detector") and manifest.submodules == ["backbone"]
    assert manifest.summary()["submodules"] == ["backbone"]
    assert [s.site for s in manifest.skips] == ["backbone.conv2"]
    assert manifest.untargeted == [("backbone.conv1", "stem")]
    assert {a.site for a in manifest.activations} == {"backbone.relu"}


def test_deghost_gives_the_users_class_that_verifies_and_loads_strictly():
    model = detector()
    masks = {"backbone.conv2.weight": torch.rand(16, 8, 3, 3) > 0.5}
    ghosted = surgery.compile(model, X, {**TOST, "masks": masks}, submodule="backbone")
    assert list(masked_parameters(ghosted)) == ["backbone.conv2.weight"]
    clean = surgery.deghost(ghosted)
    assert type(clean) is Detector and not ghosts(clean) and not masked_parameters(clean)
    assert list(clean.state_dict()) == list(model.state_dict())
    assert torch.equal(clean.backbone.conv2.weight == 0, ~masks["backbone.conv2.weight"] | (model.backbone.conv2.weight == 0))
    Detector().load_state_dict(clean.state_dict(), strict=True)
    report = surgery.verify(model, clean, X, ghosted=ghosted)
    assert report.submodules == ["backbone"] and report.nodes > 0
    assert report.to_dict()["checks"][0]["text"].startswith("(a) graphs of backbone")


def test_verify_names_the_submodule_whose_graph_differs():
    clean = surgery.deghost(surgery.compile(detector(), X, TOST, submodule="backbone"))
    other = detector()
    other.backbone.relu = nn.ReLU6()
    with pytest.raises(surgery.VerificationError, match="submodule 'backbone': the de-ghosted graph differs"):
        surgery.verify(other, clean, X)


def test_several_submodules_each_get_their_own_masks_and_graph():
    model = detector()
    masks = {"backbone.conv2.weight": torch.rand(16, 8, 3, 3) > 0.5, "head.0.weight": torch.rand(4, 16) > 0.5}
    recipe = {"ghost_skip": {"targets": ["conv", "linear"]}, "masks": masks}
    ghosted = surgery.compile(model, X, recipe, submodule=["backbone", "head"])
    assert list(surgery.compiled_submodules(ghosted)) == ["backbone", "head"]
    assert sorted(masked_parameters(ghosted)) == sorted(masks)
    assert [m.param for m in surgery.manifest_of(ghosted).masks] == list(masks)
    report = surgery.verify(model, surgery.deghost(ghosted), X, ghosted=ghosted)
    assert report.submodules == ["backbone", "head"]


def test_inplace_deghost_keeps_parameter_identity_and_masks():
    masks = {"backbone.conv1.weight": torch.rand(8, 3, 3, 3) > 0.5}
    ghosted = surgery.compile(detector(), X, {**TOST, "masks": masks}, submodule="backbone")
    kept = {id(p) for p in ghosted.parameters()} - {id(p) for p in surgery.ghost_parameters(ghosted)}
    clean = surgery.deghost(ghosted, inplace=True, keep_masks=True)
    assert clean is ghosted and not ghosts(clean)
    assert {id(p) for p in clean.parameters()} == kept
    assert list(masked_parameters(clean)) == ["backbone.conv1.weight"]
    assert surgery.manifest_of(clean).deghosted


def test_the_users_model_is_not_modified():
    model = detector().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    surgery.compile(model, X, TOST, submodule="backbone")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm running stats included
    assert isinstance(model.backbone, Backbone) and not model.backbone._forward_pre_hooks


def test_masks_outside_the_compiled_part_are_refused():
    with pytest.raises(surgery.MaskError, match="outside the compiled submodules"):
        surgery.compile(detector(), X, {"masks": {"head.0.weight": torch.ones(4, 16)}}, submodule="backbone")


def test_an_untraceable_model_names_the_children_that_trace():
    with pytest.raises(surgery.TraceError) as error:
        surgery.compile(detector(), X, TOST)
    message = str(error.value)
    assert message.startswith("torch.fx could not trace the model's own forward")
    assert "'backbone' (Backbone, 1,440 parameters, 1 site ghost_skip wraps)" in message and 'submodule="backbone"' in message
    assert "'head'" not in message  # Linears only: the default recipe's ghost_skip would find nothing there
    assert "'spare'" not in message  # never called


class Untraceable(nn.Module):
    """Runs its blocks, but branches on a value in Python: fx cannot trace it."""

    def __init__(self, *blocks: nn.Module):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x):
        for block in self.blocks:
            x = block(x) if float(x.detach().abs().sum()) >= 0 else x
        return x


class Block(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)  # a stem of the part: not wrapped by default
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x)))


class Deep(nn.Module):
    """Neither the root nor its body traces; the blocks two levels down do; the classifier is a single Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = Untraceable(Block(8), Block(8))
        self.classifier = nn.Linear(8, 4)

    def forward(self, x):
        x = self.body(self.stem(x))
        if float(x.detach().sum()) > 1e30:
            return x
        return self.classifier(x.mean((2, 3)))


def test_parts_that_trace_are_searched_below_the_children_and_following_the_advice_compiles():
    torch.manual_seed(0)
    model = Deep()
    with pytest.raises(surgery.TraceError) as error:
        surgery.compile(model, X, TOST)
    message = str(error.value)
    assert "'body.blocks.0' (Block, 1,168 parameters, 1 site ghost_skip wraps)" in message
    assert "'body.blocks.1' (Block, " in message
    assert 'submodule=["body.blocks.0", "body.blocks.1"]' in message
    assert "'classifier'" not in message and "'stem'" not in message  # single layers: compile refuses them
    ghosted = surgery.compile(model, X, TOST, submodule=["body.blocks.0", "body.blocks.1"])
    assert set(surgery.compiled_submodules(ghosted)) == {"body.blocks.0", "body.blocks.1"}
    assert ghosts(ghosted)


def test_a_single_layer_that_traces_is_never_suggested():
    class Features(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return self.conv(x) if float(x.detach().sum()) > -1e30 else x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features, self.classifier = Features(), nn.Linear(8, 4)

        def forward(self, x):
            return self.classifier(self.features(x).mean((2, 3)))

    with pytest.raises(surgery.TraceError) as error:
        surgery.compile(Net(), X, TOST)
    message = str(error.value)
    assert "submodule=" not in message and "'classifier'" not in message
    assert "No part of it with a site of ghost_skip's targets ['conv'] traces on its own either" in message


def test_on_the_meta_device_the_advice_says_how_to_use_a_real_one():
    with torch.device("meta"):
        model = Deep()
    with pytest.raises(surgery.TraceError) as error:
        surgery.compile(model, X.to("meta"), TOST)
    assert 'model.to("cpu")' in str(error.value) and "--device cpu" in str(error.value)


def test_an_unknown_submodule_path_suggests_the_close_ones():
    with pytest.raises(surgery.SubmoduleError, match="names no module of Detector. Did you mean 'backbone'"):
        surgery.compile(detector(), X, TOST, submodule="backbon")


def test_a_submodule_the_forward_never_calls_is_named():
    with pytest.raises(surgery.SubmoduleError, match="'spare' .* was not reached by the forward"):
        surgery.compile(detector(), X, TOST, submodule=["backbone", "spare"])


def test_a_single_layer_is_not_a_submodule_to_compile():
    with pytest.raises(surgery.SubmoduleError, match="'backbone.conv1' is a single Conv2d layer.*submodule='backbone'"):
        surgery.compile(detector(), X, TOST, submodule="backbone.conv1")


def test_nested_submodules_are_refused():
    with pytest.raises(surgery.SubmoduleError, match="'backbone.bn1' lies inside 'backbone'"):
        surgery.compile(detector(), X, TOST, submodule=["backbone", "backbone.bn1"])


def test_faster_rcnn_backbone_trains_and_verifies_boxes_labels_scores():
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    torch.manual_seed(0)
    model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3,
                                                  min_size=128, max_size=128)  # its transform resizes to this
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 60.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[20.0, 30.0, 90.0, 100.0]]), "labels": torch.tensor([2])}]
    ghosted = surgery.compile(model, (images, targets), TOST, submodule="backbone")
    assert type(ghosted) is type(model) and ghosted.training
    losses = ghosted(images, targets)
    sum(losses.values()).backward()
    assert ghosted.backbone.body["0"][0].weight.grad is not None
    clean = surgery.deghost(ghosted)
    report = surgery.verify(model, clean, (images,))
    assert report.outputs_max_abs_diff == 0.0
    with torch.no_grad():
        detections = model.eval()(images)
    assert {"boxes", "labels", "scores"} <= set(detections[0]) and len(detections[0]["boxes"]) > 0


def test_a_segmentation_backbone_verifies():
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    torch.manual_seed(0)
    model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3)
    x = torch.rand(2, 3, 64, 64)
    ghosted = surgery.compile(model, x, TOST, submodule="backbone")
    ghosted(x)["out"].mean().backward()
    clean = surgery.deghost(ghosted)
    report = surgery.verify(model, clean, x, ghosted=ghosted)
    assert report.submodules == ["backbone"] and report.ghost_parity_max_abs_diff is not None


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x, scale=1.0, extra=None):
        y = self.relu(self.conv(x)) * scale
        return y if extra is None else y + extra


class CallsWithAFlag(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Scaled()

    def forward(self, x):
        return self.block(x, scale=2.0)


def test_a_submodule_called_with_a_keyword_flag_keeps_taking_it():
    model = CallsWithAFlag()
    ghosted = surgery.compile(model, X, {"soft_activation": {}}, submodule="block")
    assert torch.allclose(ghosted.block(X, scale=2.0), ghosted(X))
    surgery.verify(model, surgery.deghost(ghosted), X, ghosted=ghosted)


class TakesAList(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 1)
        self.merge = Merge()

    def forward(self, x):
        return self.merge([self.stem(x), x])


class Merge(nn.Module):
    def forward(self, features):
        return sum(features)


def test_a_submodule_called_with_a_list_of_tensors_is_explained():
    with pytest.raises(surgery.SubmoduleError, match="'merge' .* called with a list of tensors as `features`"):
        surgery.compile(TakesAList(), X, TOST, submodule="merge")
