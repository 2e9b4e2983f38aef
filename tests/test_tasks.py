"""torchvision's task families: which family a spec is, its example inputs and sizes, detection targets, the CLI."""

import json

import pytest
import torch
import torchvision

from surgery.apps.cli import main
from surgery.errors import InputSizeError
from surgery.zoo.models import build_model
from surgery.zoo.tasks import (
    TASKS,
    builders,
    default_submodule,
    detection_targets,
    example_inputs,
    input_size,
    parse_input_size,
    task_of,
    train_inputs,
)


@pytest.mark.parametrize(
    ("spec", "family"),
    [
        ("torchvision:resnet18", "classification"),
        ("timm:resnet18", "classification"),
        ("cifar:resnet20", "classification"),
        ("torchvision:fcn_resnet50", "segmentation"),
        ("torchvision:fasterrcnn_resnet50_fpn", "detection"),
        ("torchvision:r3d_18", "video"),
        ("torchvision:raft_small", "optical_flow"),
    ],
)
def test_a_spec_belongs_to_the_family_whose_torchvision_module_lists_it(spec, family):
    assert task_of(spec).name == family


def test_every_torchvision_builder_outside_quantization_has_a_family():
    listed = {name for task in TASKS.values() for name in builders(task)}
    quantized = set(torchvision.models.list_models(module=torchvision.models.quantization))
    assert set(torchvision.models.list_models()) - quantized == listed


@pytest.mark.parametrize(
    ("spec", "size", "shapes"),
    [
        ("torchvision:resnet18", (32,), [(2, 3, 32, 32)]),
        ("torchvision:fcn_resnet50", (48,), [(2, 3, 48, 48)]),
        ("torchvision:fasterrcnn_resnet50_fpn", (64,), [[(3, 64, 64), (3, 64, 64)]]),  # a list of images
        ("torchvision:r3d_18", (4, 32, 40), [(2, 3, 4, 32, 40)]),
        ("torchvision:raft_small", (128,), [(2, 3, 128, 128), (2, 3, 128, 128)]),  # an image pair
    ],
)
def test_example_inputs_have_the_shape_of_the_task(spec, size, shapes):
    inputs = example_inputs(spec, input_size(spec, size))
    assert [tuple(x.shape) if torch.is_tensor(x) else [tuple(i.shape) for i in x] for x in inputs] == shapes


def test_default_sizes_come_from_the_task_raised_to_what_the_weights_need():
    assert input_size("torchvision:resnet18") is None  # the model's own (default_input_size)
    assert input_size("torchvision:r3d_18") == (16, 112, 112)
    assert input_size("torchvision:s3d") == (16, 224, 224)  # its weights document 224 x 224 at least
    assert input_size("torchvision:fasterrcnn_resnet50_fpn") == (320,)
    assert input_size("torchvision:raft_small") == (128,)


@pytest.mark.parametrize(
    ("spec", "size", "words"),
    [
        ("torchvision:r3d_18", 112, ["video model", "T,H,W", "not 112", "--input-size 16,112,112"]),
        ("torchvision:resnet18", (8, 112, 112), ["classification model", "is S", "not 8,112,112"]),
        ("torchvision:raft_small", 132, ["multiples of 8", "not 132"]),
        ("torchvision:raft_small", 64, ["at least 128", "not 64"]),
        ("torchvision:mvit_v2_s", (16, 112, 112), ["at least 16,224,224"]),
    ],
)
def test_an_input_size_that_does_not_fit_the_task_is_refused_with_the_fix(spec, size, words):
    with pytest.raises(InputSizeError) as error:
        input_size(spec, size)
    assert all(word in str(error.value) for word in words), str(error.value)


@pytest.mark.parametrize("text", ["", "a", "8,x", "0", "8,0,112"])
def test_parse_input_size_rejects_what_is_not_positive_integers(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_input_size(text)
    assert parse_input_size("8,112,112") == (8, 112, 112)


def test_detection_builders_resize_to_the_input_size_and_take_no_downloads():
    with torch.device("meta"):
        rcnn = build_model("torchvision:fasterrcnn_resnet50_fpn", 3, input_size=(96,))
        ssd = build_model("torchvision:ssd300_vgg16", 3, input_size=(96,))  # SSD's size is fixed
    assert rcnn.transform.min_size == (96,) and rcnn.transform.max_size == 96
    assert ssd.transform.fixed_size == (300, 300)
    assert rcnn.roi_heads.box_predictor.cls_score.out_features == 3


def test_raft_ignores_num_classes_with_a_warning():
    with torch.device("meta"), pytest.warns(UserWarning, match="without classes"):
        build_model("torchvision:raft_small", 10)


@pytest.mark.parametrize(
    ("spec", "extra"),
    [
        ("torchvision:fasterrcnn_resnet50_fpn", set()),
        ("torchvision:maskrcnn_resnet50_fpn", {"masks"}),
        ("torchvision:keypointrcnn_resnet50_fpn", {"keypoints"}),
    ],
)
def test_detection_targets_carry_what_the_model_heads_predict(spec, extra):
    with torch.device("meta"):
        model = build_model(spec, 3)
    images = [torch.rand(3, 64, 80), torch.rand(3, 64, 80)]
    targets = detection_targets(model, images, num_classes=3)
    for target in targets:
        assert set(target) == {"boxes", "labels"} | extra
        boxes = target["boxes"]
        assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes[:, [0, 2]] <= 80).all() and (boxes[:, [1, 3]] <= 64).all()
        assert ((target["labels"] >= 1) & (target["labels"] < 3)).all()
    if "keypoints" in extra:
        assert targets[0]["keypoints"].shape == (2, 17, 3)
    if "masks" in extra:
        assert targets[0]["masks"].shape == (2, 64, 80) and targets[0]["masks"].sum() > 0


def test_train_inputs_add_targets_to_a_detector_only():
    x = (torch.randn(2, 3, 8, 8),)
    assert train_inputs(torch.nn.Conv2d(3, 3, 1), x) is x
    model = build_model("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", 3, input_size=(64,))
    images, targets = train_inputs(model, example_inputs("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", (64,)))
    losses = model.train()(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} == set(losses)


def test_default_submodule_is_the_task_part_where_the_whole_does_not_trace():
    assert default_submodule("torchvision:fasterrcnn_resnet50_fpn") == ("backbone",)
    assert default_submodule("torchvision:raft_small") == ("feature_encoder", "context_encoder")
    assert default_submodule("torchvision:fcn_resnet50") is None
    assert default_submodule("torchvision:r3d_18") is None


# ------------------------------------------------------------------------- CLI


def _inspect(capsys, *argv):
    assert main(["inspect", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    ("spec", "size", "submodules", "outside"),
    [
        ("torchvision:fcn_resnet50", "48", [], []),
        ("torchvision:r3d_18", "2,32,32", [], []),
        ("torchvision:raft_small", "128", ["feature_encoder", "context_encoder"], ["corr_block", "update_block"]),
        ("torchvision:fasterrcnn_resnet50_fpn", "64", ["backbone"], ["transform", "rpn", "roi_heads"]),
    ],
)
def test_inspect_shows_what_was_compiled_and_what_was_left_outside(capsys, spec, size, submodules, outside):
    report = _inspect(capsys, spec, "--input-size", size)
    assert report["submodules"] == submodules and report["left_outside"] == outside
    assert report["parameters_compiled"] + report["parameters_outside"] == report["parameters"]
    assert (report["parameters_outside"] > 0) == bool(submodules)
    assert report["convs_covered"] == report["convs_targeted"] > 0


def test_inspect_submodule_flag_compiles_that_part(capsys):
    report = _inspect(capsys, "torchvision:fcn_resnet50", "--input-size", "48", "--submodule", "backbone")
    assert report["submodules"] == ["backbone"] and report["left_outside"] == ["classifier"]


def test_a_video_input_size_of_the_wrong_rank_is_a_clear_error(capsys):
    assert main(["inspect", "torchvision:r3d_18", "--input-size", "112"]) == 2
    error = capsys.readouterr().err
    assert "video model" in error and "T,H,W" in error and "--input-size 16,112,112" in error


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spec", "size", "checked"),
    [
        ("torchvision:fcn_resnet50", "48", "(a) graph isomorphic"),
        ("torchvision:r3d_18", "2,32,32", "(a) graph isomorphic"),
        ("torchvision:raft_small", "128", "(a) graphs of feature_encoder, context_encoder isomorphic"),
        ("torchvision:fasterrcnn_resnet50_fpn", "64", "(a) graphs of backbone isomorphic"),
    ],
)
def test_verify_round_trips_each_task_family(capsys, spec, size, checked):
    assert main(["verify", spec, "--input-size", size, "--sparsity", "0.9"]) == 0
    out = capsys.readouterr().out
    assert checked in out and "(c) outputs equal" in out and "(d) ghosted at alpha=0" in out, out


@pytest.mark.slow
def test_prune_of_a_detector_masks_its_backbone_and_export_names_the_part_onnx_cannot_take(capsys, tmp_path):
    spec, masks = "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", tmp_path / "m.safetensors"
    assert main(["prune", spec, "--method", "synflow", "--option", "rounds=2", "--sparsity", "0.9",  # 2 rounds empty the
                 "--input-size", "64", "--allow-empty-layers", "-o", str(masks)]) == 0          # FPN's lateral convs
    from surgery.compiler.masks import load_masks

    names = list(load_masks(masks)[0])
    assert names and all(name.startswith("backbone.") for name in names)
    capsys.readouterr()
    assert main(["export", spec, "--input-size", "64", "--masks", str(masks), "-o", str(tmp_path / "d.onnx")]) == 2
    error = capsys.readouterr().err
    assert "could not export FasterRCNN" in error and "outside backbone: transform, rpn, roi_heads" in error, error
