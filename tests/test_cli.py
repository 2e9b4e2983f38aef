"""The `surgery` command, driven through surgery.apps.cli.main([...]) and once as the installed script."""

import json
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import surgery
from surgery.apps.cli import FLAG_FIELDS, build_parser, configured, flag_fields, main
from surgery.apps.cli.flags import FLAGS
from surgery.compiler.masks import load_masks, save_masks
from surgery.zoo.models import build_model
from surgery.compiler.preprocessing import Preprocessing
from surgery.pruning import random_masks
from surgery.train.config import RunConfig

NETS = textwrap.dedent(
    """
    from torch import nn

    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            if x.sum() > 0:
                return self.conv(x)
            return x

    class TinyNet(nn.Module):
        def __init__(self, num_classes=10, gated=True):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.act = nn.ReLU()
            self.gate = Gate() if gated else nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Linear(8, num_classes)

        def forward(self, x):
            x = self.gate(self.act(self.bn(self.stem(x))))
            return self.head(x.mean((2, 3)))

    def gated(num_classes=10):
        return TinyNet(num_classes)

    def plain(num_classes=10):
        return TinyNet(num_classes, gated=False)

    def broken():
        raise RuntimeError("a bug in the user's factory")

    class AuxNet(TinyNet):
        def __init__(self, num_classes=10):
            super().__init__(num_classes, gated=False)
            self.aux = nn.Linear(8, num_classes)

        def forward(self, x):
            x = self.gate(self.act(self.bn(self.stem(x)))).mean((2, 3))
            if self.training:
                return self.head(x), self.aux(x)
            return self.head(x)

    def aux(num_classes=10):
        return AuxNet(num_classes)

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            return self.conv2(self.conv1(x).relu()).relu()

    class Deep(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.backbone = Backbone()
            self.head = nn.Linear(8, num_classes)

        def forward(self, x):
            x = self.backbone(x)
            if x.sum() > 1e30:
                return x
            return self.head(x.mean((2, 3)))

    def deep(num_classes=10):
        return Deep(num_classes)
    """
)


@pytest.fixture
def every_conv(tmp_path) -> Path:
    """A recipe that wraps the stem too: TinyNet's only conv outside its gate is its stem."""
    path = tmp_path / "every-conv.yaml"
    path.write_text("ghost_skip: {targets: [conv, stem, pointwise, pooled]}\nsoft_activation: {}\n")
    return path


@pytest.fixture
def nets(tmp_path) -> Path:
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ basics


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and surgery.__version__ in out


@pytest.mark.parametrize("command", ["inspect", "verify", "export", "train", "run", "demo"])
def test_each_command_has_help_with_an_example(capsys, command):
    code, out, _ = run(capsys, command, "-h")
    assert code == 0 and "example:" in out and f"surgery {command}" in out


def test_usage_error_exits_2(capsys):
    code, _, err = run(capsys, "inspect")
    assert code == 2 and "MODEL" in err


@pytest.mark.slow
def test_installed_console_script():
    script = shutil.which("surgery", path=str(Path(sys.executable).parent)) or shutil.which("surgery")
    assert script, "the `surgery` console script is not installed (pip install -e .)"
    version = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and surgery.__version__ in version.stdout
    inspect = subprocess.run(
        [script, "inspect", "torchvision:resnet18"], capture_output=True, text=True, timeout=120
    )
    assert inspect.returncode == 0, inspect.stderr
    assert "16 of 20 found" in inspect.stdout


@pytest.mark.parametrize("command", [[], ["inspect"], ["verify"], ["export"], ["prune"], ["train"], ["run"], ["demo"]])
def test_every_help_works(capsys, command):
    code, out, err = run(capsys, *command, "--help")
    assert code == 0 and "usage: surgery" in out and "Traceback" not in err


def test_a_third_party_failure_is_one_message_and_debug_shows_its_traceback(capsys):
    command = ["verify", "torchvision:vit_b_16", "--input-size", "64", "--device", "meta"]
    code, _, err = run(capsys, *command)
    assert code == 2 and err.startswith("surgery verify: error: ") and "Traceback" not in err
    assert "Wrong image height" in err  # the third party's own reason, in our message
    code, _, err = run(capsys, "--debug", *command)
    assert code == 2 and "Traceback" in err and "AssertionError" in err
    assert err.rstrip().splitlines()[-2].startswith("surgery verify: error: ")


def test_debug_shows_where_a_warning_was_raised(capsys, tmp_path):
    model = tmp_path / "fixed.py"
    model.write_text("from torch import nn\n\ndef fixed():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())\n")
    command = ["inspect", f"{model}:fixed", "--num-classes", "3", "--input-size", "8"]
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # each command is a fresh process; here both must warn
        _, _, plain = run(capsys, *command)  # a factory without num_classes: warned, then ignored
        _, _, debug = run(capsys, "--debug", *command)
    assert "surgery: warning: " in plain and "UserWarning at " not in plain
    assert "UserWarning at " in debug


# ----------------------------------------------------------------- inspect


def test_inspect_table(capsys):
    code, out, _ = run(capsys, "inspect", "torchvision:resnet18", "--num-classes", "10")
    assert code == 0
    for text in ["16 of 20 found (not targeted: 1 stem, 3 pointwise", "13 identity, 3 conv1x1",
                 "17 (17 x nn.ReLU(inplace=True))", "on meta", "173,824 dense training-only parameters"]:
        assert text in out


def test_inspect_builds_a_fixed_size_timm_model_for_the_input_size(capsys, tmp_path):
    recipe = tmp_path / "gelu.yaml"
    recipe.write_text("soft_activation: {targets: [gelu]}\n")
    code, out, err = run(capsys, "inspect", "timm:vit_tiny_patch16_224", "--input-size", "64", "--recipe", recipe)
    assert code == 0, err
    assert "2 x 3 x 64 x 64" in out and err == ""


def test_inspect_compares_the_ghosts_with_what_a_mask_keeps(capsys):
    code, out, _ = run(capsys, "inspect", "torchvision:resnet18", "--num-classes", "10", "--sparsity", "0.98", "--json")
    report = json.loads(out)
    assert code == 0 and report["kept_weights"] == round(11_172_032 * 0.02)
    assert report["ghost_cost"] == "173,824 dense training-only parameters = 78% of the 223,441 kept weights"
    code, out, _ = run(capsys, "inspect", "torchvision:resnet18", "--num-classes", "10", "--sparsity", "0.98")
    assert "0 (--sparsity 0.98 only sizes the ghost-cost" in " ".join(out.split())  # not a mask that failed


def test_inspect_json(capsys):
    code, out, _ = run(capsys, "inspect", "timm:resnet18", "--input-size", "64", "--json")
    report = json.loads(out)
    assert code == 0
    assert report["convs_found"] == 20 and report["convs_covered"] == report["convs_targeted"] == 16
    assert report["convs_not_targeted"] == {"stem": 1, "pointwise": 3}
    assert report["activations_swapped"] == 17
    assert report["maskable_weights"] == 21
    assert report["input_shape"] == [2, 3, 64, 64]
    assert report["device"] == "meta"
    assert report["parameters"] == sum(p.numel() for p in build_model("timm:resnet18").parameters())


def test_inspect_leaf_shows_what_is_out_of_reach(capsys, nets, every_conv):
    code, out, _ = run(capsys, "inspect", f"{nets}:gated", "--leaf", "gate", "--input-size", "16", "--json",
                       "--recipe", every_conv)
    report = json.loads(out)
    assert code == 0
    assert [leaf["module"] for leaf in report["leaf_modules"]] == ["gate"]
    assert report["unreached"] == [{"module": "gate.conv", "class": "Conv2d", "inside": "gate", "what": "conv"}]
    assert report["convs_found"] == 2 and report["convs_covered"] == 1


def test_inspect_names_where_the_forward_branches_on_training(capsys, nets, every_conv):
    code, out, _ = run(capsys, "inspect", f"{nets}:aux", "--input-size", "8", "--json", "--recipe", every_conv)
    report = json.loads(out)
    line = NETS.splitlines().index("        if self.training:") + 1
    assert code == 0 and report["mode_graphs"] == 2
    assert [(b["module"], b["code"], b["modes"]) for b in report["mode_branches"]] == [
        ("(the model)", "if self.training:", "train")]
    assert report["mode_branches"][0]["where"].endswith(f"nets.py:{line}")
    code, out, _ = run(capsys, "inspect", f"{nets}:aux", "--input-size", "8", "--recipe", every_conv)
    assert "two graphs, one per mode" in out and "Where the forward branches on self.training" in out


def test_verify_checks_a_model_with_a_train_branch_in_both_modes(capsys, nets, every_conv):
    code, out, err = run(capsys, "verify", f"{nets}:aux", "--input-size", "8", "--device", "cpu", "--recipe", every_conv)
    assert code == 0, err
    assert "isomorphic to the original trace in train and in eval mode" in out
    assert "(c) outputs equal in eval mode" in out and "(c) outputs equal in train mode" in out


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_leaf_is_repeatable_and_leaves_the_model_alone(command):
    args = build_parser().parse_args([command, "--leaf", "gate", "--leaf", "Block", "cifar:resnet20"])
    assert args.leaf == ["gate", "Block"] and args.model == "cifar:resnet20"


def test_a_recipe_that_leaves_no_conv_to_wrap_says_which_option_brings_it_back(capsys, nets):
    code, out, err = run(capsys, "inspect", f"{nets}:gated", "--leaf", "gate", "--input-size", "16")
    assert code == 2 and out == "" and "Traceback" not in err
    assert "1 stem (reads a model input" in err and "add 'stem' to ghost_skip.targets" in err


def test_inspect_recipe_file(capsys, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("ghost_skip: {projection: parameter_free}\nsoft_activation: {kind: mish}\n")
    code, out, _ = run(capsys, "inspect", "torchvision:resnet18", "--recipe", recipe, "--json")
    report = json.loads(out)
    assert code == 0 and report["projections"] == {"identity": 13, "parameter_free": 3}
    assert report["ghost_parameters"] == 0


# ------------------------------------------------------------ user errors


def test_untraceable_model_names_module_and_line(capsys, nets):
    code, out, err = run(capsys, "inspect", f"{nets}:gated", "--input-size", "16")
    assert code == 2 and out == ""
    assert "module `gate`" in err and "if x.sum() > 0:" in err and "--leaf gate" in err
    assert "Traceback" not in err


def test_train_and_run_take_leaf_into_model_leaf_modules():
    args = build_parser().parse_args(["train", "cifar:resnet20", "--leaf", "gate", "--leaf", "Block"])
    assert configured(RunConfig.from_dict({}), args).model.leaf_modules == ["gate", "Block"]
    args = build_parser().parse_args(["run", "x.yaml", "--leaf", "gate"])
    assert configured(RunConfig.from_dict({}), args).model.leaf_modules == ["gate"]


def test_trace_advice_from_train_names_train_flags_and_says_it_has_no_submodule(capsys, nets, tmp_path):
    code, _, err = run(capsys, "train", f"{nets}:deep", *TINY_RUN, "--epochs", "1", "--out", tmp_path / "run")
    assert code == 2 and "Traceback" not in err
    assert "(surgery train: --leaf PATH)" in err and "CLI:" not in err
    assert "'backbone' (Backbone, " in err and "surgery train trains the whole model and has no --submodule" in err
    assert 'surgery.compile(model, example_inputs, recipe, submodule="backbone")' in err
    assert "surgery inspect MODEL --submodule backbone" in err


def test_following_trains_leaf_advice_names_the_convs_the_leaf_hides(capsys, nets, tmp_path):
    code, _, err = run(capsys, "train", f"{nets}:gated", *TINY_RUN, "--epochs", "1", "--out", tmp_path / "run")
    assert code == 2 and "surgery train: --leaf gate" in err
    code, _, err = run(capsys, "train", f"{nets}:gated", *TINY_RUN, "--epochs", "1", "--out", tmp_path / "run",
                       "--leaf", "gate")
    assert code == 2 and "1 conv hides inside 1 leaf module" in err and "'gate' (1 conv)" in err
    assert "surgery train's --leaf" in err and "in your own loop (surgery train trains the whole model)" in err


def test_trace_advice_from_inspect_names_its_submodule_flag(capsys, nets):
    code, _, err = run(capsys, "inspect", f"{nets}:deep", "--input-size", "8")
    assert code == 2 and "surgery inspect ... --submodule backbone" in err
    assert "real device" not in err  # inspect retries on the CPU, where the parts are listed
    code, out, _ = run(capsys, "inspect", f"{nets}:deep", "--input-size", "8", "--submodule", "backbone", "--json")
    assert code == 0 and json.loads(out)["convs_covered"] == 1


def test_trace_advice_on_the_meta_device_names_the_flag_that_selects_a_real_one(capsys, nets):
    code, _, err = run(capsys, "verify", f"{nets}:deep", "--device", "meta", "--input-size", "8")
    assert code == 2 and "compile on a real device: surgery verify ... --device cpu" in err


def test_unknown_pass_in_recipe(capsys, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("ghost_skp: {projection: conv1x1}\n")
    code, _, err = run(capsys, "inspect", "torchvision:resnet18", "--recipe", recipe)
    assert code == 2
    assert "unknown pass 'ghost_skp'" in err and "Did you mean 'ghost_skip'" in err


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("torchvision:resnet81", "Did you mean 'resnet18'"),
        ("timm:resnt18", "Did you mean 'resnet18'"),
        ("resnet18", "torchvision:NAME, timm:NAME, cifar:NAME, hf:ModelClass[:config.json] or path/to/file.py:factory"),
        ("hf:VitForImageClassification", "Did you mean 'ViTForImageClassification'"),
        ("ViTForImageClassification", "Did you mean 'hf:ViTForImageClassification'"),
        ("no/such/file.py:net", "model file 'no/such/file.py' does not exist"),
    ],
)
def test_bad_model_specs(capsys, spec, expected):
    code, _, err = run(capsys, "inspect", spec)
    assert code == 2 and expected in err and "Traceback" not in err


def test_file_without_the_factory(capsys, nets):
    code, _, err = run(capsys, "verify", f"{nets}:gatd")
    assert code == 2 and "has no factory 'gatd'. Did you mean 'gated'" in err


def test_unexpected_errors_keep_their_traceback(nets):
    with pytest.raises(RuntimeError, match="a bug in the user's factory"):
        main(["inspect", f"{nets}:broken"])


def test_bad_sparsity(capsys, nets):
    code, _, err = run(capsys, "verify", f"{nets}:plain", "--sparsity", "1.5")
    assert code == 2 and "sparsity 1.5 is outside [0, 1)" in err


# ------------------------------------------------------------------ verify


def test_verify_on_cpu_with_random_masks(capsys):
    argv = ["verify", "torchvision:resnet18", "--num-classes", "10", "--input-size", "64", "--sparsity", "0.8"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    for text in ["16/20 convs covered", "21 weights masked", "(a) graph", "(c) outputs", "(d) ghosted", "80.0%"]:
        assert text in out


def test_verify_on_meta_checks_structure_only(capsys):
    code, out, _ = run(capsys, "verify", "torchvision:resnet18", "--device", "meta")
    assert code == 0
    assert "(b) state_dict loads strictly" in out and "(c)" not in out and "skipped on the meta device" in out


def test_verify_with_a_mask_file_and_leaf(capsys, nets, tmp_path, every_conv):
    masks = random_masks(build_model(f"{nets}:gated"), 0.5, seed=1)
    path = save_masks(masks, tmp_path / "masks.safetensors")
    code, out, _ = run(capsys, "verify", f"{nets}:gated", "--leaf", "gate", "--masks", path, "--input-size", "16",
                       "--recipe", every_conv)
    assert code == 0 and "1/2 convs covered" in out and "3 weights masked" in out and "(d) ghosted" in out


# ------------------------------------------------------------------ export


def test_export_with_random_masks_is_sparse(capsys, nets, tmp_path):
    out_path = tmp_path / "tiny.onnx"
    code, out, err = run(capsys, "export", f"{nets}:plain", "--sparsity", "0.9", "--input-size", "16", "-o", out_path)
    assert code == 0, err
    sidecar = json.loads(Path(f"{out_path}.json").read_text())
    assert out_path.is_file() and "onnxruntime parity" in out
    assert sidecar["totals"]["stored_sparse"] >= 1
    assert sidecar["max_rel_error"] <= sidecar["rtol"]


def test_export_loads_weights_strictly(capsys, nets, tmp_path):
    from safetensors.torch import save_file

    weights = tmp_path / "w.safetensors"
    model = build_model(f"{nets}:plain", num_classes=3)
    with torch.no_grad():
        model.head.weight.zero_()
    save_file(model.state_dict(), str(weights))
    out_path = tmp_path / "w.onnx"
    argv = ["export", f"{nets}:plain", "--num-classes", 3, "--weights", weights, "--sparse", "--input-size", 16]
    code, _, err = run(capsys, *argv, "-o", out_path)
    assert code == 0, err
    layers = {row["name"]: row for row in json.loads(Path(f"{out_path}.json").read_text())["layers"]}
    assert layers["head.weight"]["nonzeros"] == 0

    code, _, err = run(capsys, "export", f"{nets}:plain", "--weights", weights, "-o", tmp_path / "x.onnx")
    assert code == 2 and "do not fit TinyNet: 2 shapes differ, file vs model (head.weight (3, 8) vs (10, 8), " in err
    assert len(err.strip().splitlines()) == 1  # one line, not the hundreds of keys torch lists


def test_export_records_the_preprocessing_of_the_run_the_weights_come_from(capsys, nets, tmp_path):
    from safetensors.torch import save_file

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_file(build_model(f"{nets}:plain", num_classes=3).state_dict(), str(run_dir / "model.safetensors"))
    feed = Preprocessing(input_size=(16, 16), mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), class_names=("a", "b", "c"))
    (run_dir / "result.json").write_text(json.dumps({"status": "completed", "preprocessing": feed.to_dict()}))
    argv = ["export", f"{nets}:plain", "--num-classes", 3, "--weights", run_dir / "model.safetensors", "--input-size", 16]
    code, out, err = run(capsys, *argv, "-o", tmp_path / "a.onnx")
    assert code == 0, err
    assert f"preprocessing from {run_dir / 'result.json'}" in out.replace("\n", "")
    assert Preprocessing.from_metadata(ort_metadata(tmp_path / "a.onnx")) == feed
    bare = tmp_path / "feed.json"
    bare.write_text(json.dumps(feed.to_dict() | {"class_names": ["x", "y", "z"]}))
    code, _, err = run(capsys, *argv, "--preprocessing", bare, "-o", tmp_path / "b.onnx")
    assert code == 0, err
    assert Preprocessing.from_metadata(ort_metadata(tmp_path / "b.onnx")).class_names == ("x", "y", "z")
    bare.write_text("{}")
    code, _, err = run(capsys, *argv, "--preprocessing", bare, "-o", tmp_path / "c.onnx")
    assert code == 2 and "records no preprocessing (no input_size, mean, std)" in err


def ort_metadata(path):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.get_modelmeta().custom_metadata_map


def _sidecar_layers(path):
    return {row["name"]: row for row in json.loads(Path(f"{path}.json").read_text())["layers"]}


def test_export_weights_alone_store_mostly_zero_weights_sparse(capsys, nets, tmp_path):
    from safetensors.torch import save_file

    model = build_model(f"{nets}:plain")
    with torch.no_grad():
        model.gate.weight.mul_(torch.rand_like(model.gate.weight) < 0.02)  # about 98% zeros, no mask file
    weights = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(weights))
    out_path = tmp_path / "w.onnx"
    code, _, err = run(capsys, "export", f"{nets}:plain", "--weights", weights, "--input-size", 16, "-o", out_path)
    assert code == 0, err
    stored = {row["stored"] for name, row in _sidecar_layers(out_path).items() if row["sparsity"] >= 0.7}
    assert stored == {"sparse"}
    assert {row["stored"] for row in _sidecar_layers(out_path).values() if row["sparsity"] < 0.7} == {"dense"}


def test_export_weights_from_a_training_checkpoint_or_a_mask_file(capsys, nets, tmp_path):
    model = build_model(f"{nets}:plain")
    x = torch.randn(2, 3, 16, 16)
    ghosted = surgery.compile(model, x, {"masks": random_masks(model, 0.9, seed=2)})
    checkpoint = tmp_path / "epoch0001-step000010.pt"
    torch.save({"format": "tost-surgery-checkpoint", "epoch": 1, "model": ghosted.state_dict()}, checkpoint)
    out_path = tmp_path / "c.onnx"
    code, _, err = run(capsys, "export", f"{nets}:plain", "--weights", checkpoint, "--input-size", 16, "-o", out_path)
    assert code == 0, err
    assert _sidecar_layers(out_path)["head.weight"]["stored"] == "sparse"  # the checkpoint's masks, baked in

    mask_file = save_masks(random_masks(model, 0.9), tmp_path / "m.safetensors")
    code, _, err = run(capsys, "export", f"{nets}:plain", "--weights", mask_file, "-o", tmp_path / "m.onnx")
    assert code == 2 and f"'{mask_file}' is a mask file, not weights: pass it as --masks" in err


# ------------------------------------------------------------- train / run / demo

TINY_RUN = ["--data", "synthetic", "--image-size", "8", "--batch-size", "100", "--no-progress"]


@pytest.mark.slow
def test_train_runs_the_whole_pipeline_and_reports(capsys, tmp_path):
    out_dir = tmp_path / "r20"
    code, out, err = run(capsys, "train", "cifar:resnet20", *TINY_RUN, "--epochs", "2", "--sparsity", "0.8",
                         "--label-smoothing", "0.1", "--out", out_dir)
    assert code == 0, err
    assert "epoch 2/2" in out and "test accuracy" in out and "80.0% of conv/linear weights are zero" in out
    assert "(b) state_dict loads strictly" in out and "ghosts" in out
    assert {"config.yaml", "masks.safetensors", "metrics.csv", "model.onnx", "summary.md", "verify.txt"} <= {
        p.name for p in out_dir.iterdir()}
    saved = yaml.safe_load((out_dir / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 2 and saved["label_smoothing"]["start"] == 0.1
    assert RunConfig.from_dict(saved).lr_plan().milestones == (1,)  # 50% and 75% of 2 epochs: both at epoch 1


def test_run_takes_a_config_and_overrides(capsys, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "name": "tiny", "model": {"spec": "cifar:resnet20"}, "mask": {"sparsity": 0.5}, "recipe": "tost",
        "data": {"dataset": "synthetic", "image_size": 8, "batch_size": 100},
        "lr_schedule": {"milestones": [1]}, "train": {"epochs": 2, "tensorboard": False},
    }))
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "run", config, "--out", out_dir, "--no-progress", "--set", "export.onnx=false",
                         "--set", "optimizer.lr=0.05")
    assert code == 0, err
    saved = yaml.safe_load((out_dir / "config.yaml").read_text())
    assert saved["optimizer"]["lr"] == 0.05 and saved["export"]["onnx"] is False
    assert not (out_dir / "model.onnx").exists() and (out_dir / "model.safetensors").is_file()
    # the run is finished; resuming it with another learning rate names the field that differs
    code, _, err = run(capsys, "run", config, "--out", out_dir, "--no-progress", "--resume", "--set", "export.onnx=false")
    assert code == 2 and "optimizer.lr: 0.05 in the checkpoint, 0.1 now" in err


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["cifar:resnet21"], "no CIFAR model 'resnet21'. Did you mean"),
        (["cifar:resnet20", "--epochs", "2", "--data", "mnist"], "unknown dataset 'mnist'"),
        (["cifar:resnet20", "--epochs", "2", "--optimizer", "sgdd"], "unknown optimizer 'sgdd'. Did you mean 'sgd'"),
        (["cifar:resnet20", "--epochs", "2", "--lr-schedule", "cosin"], "unknown learning-rate schedule 'cosin'. Did you mean 'cosine'"),
        (["cifar:resnet20", "--epochs", "2", "--set", "ghosts.alpha.kind=expo"], "unknown schedule kind 'expo'"),
        (["cifar:resnet20", "--epochs", "4", "--set", "ghosts.remove_at=9"], "removed after the run ends"),
        (["cifar:resnet20", "--epochs", "2", "--sparsity", "1.0"], "outside [0, 1)"),
        (["cifar:resnet20", "--epochs", "2", "--set", "train.epoch=3"], "no field 'epoch'. Did you mean 'epochs'"),
    ],
)
def test_train_bad_input_is_one_clear_line(capsys, flags, expected, tmp_path):
    model, *rest = flags  # the flags under test come last, so they win over the tiny defaults
    code, _, err = run(capsys, "train", model, "--data", "synthetic", "--image-size", "8", "--out", tmp_path,
                       "--no-progress", *rest)
    assert code == 2 and expected in err and "Traceback" not in err, err


def test_a_missing_dataset_says_where_it_looked_and_how_to_download(capsys, tmp_path):
    code, _, err = run(capsys, "train", "cifar:resnet20", "--data", "cifar10", "--data-root", tmp_path / "none",
                       "--out", tmp_path / "run")
    assert code == 2 and str(tmp_path / "none") in err and "--download" in err


def test_run_of_a_missing_config_names_the_file(capsys, tmp_path):
    code, _, err = run(capsys, "run", tmp_path / "nope.yaml")
    assert code == 2 and "nope.yaml' does not exist" in err


@pytest.mark.slow
def test_demo_trains_verifies_and_exports(capsys, tmp_path):
    code, out, err = run(capsys, "demo", "--out", tmp_path, "--epochs", "2", "--set", "lrsi.iterations=3")
    assert code == 0, err
    assert {p.name for p in tmp_path.iterdir()} >= {
        "masks.safetensors", "model.onnx", "model.onnx.json", "summary.md", "curves.png", "verify.txt"}
    masks, metadata = load_masks(tmp_path / "masks.safetensors")
    assert metadata["method"] == "random" and abs(float(metadata["sparsity"]) - 0.9) < 1e-3
    assert "cifar:resnet20 (surgery.zoo.cifar.CifarResNet" in out and "epoch 2/2" in out and "learned in 3 iterations" in out
    assert "(c) outputs equal" in out and "90.0% of conv/linear weights" in out
    code, out, _ = run(capsys, "demo", "--out", tmp_path, "--epochs", "2", "--set", "lrsi.iterations=3", "--resume")
    assert code == 0 and f"demo is already complete: its results are in {tmp_path}" in out and "epoch" not in out


# ------------------------------------------------------------- flags -> config

CONFIG_COMMANDS = ("train", "run", "demo", "prune")
NOT_CONFIG_FLAGS = {"help", "config", "overrides", "resume", "force", "list", "output", "input_size", "submodule",
                    "allow_untrained"}


def _subparsers():
    import argparse

    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.mark.parametrize("command", CONFIG_COMMANDS)
def test_every_flag_of_a_config_command_maps_through_the_one_table(command):
    mapped = {dest for dest, _, _ in FLAG_FIELDS}
    assert {a.dest for a in _subparsers()[command]._actions} - mapped <= NOT_CONFIG_FLAGS


def test_each_flag_is_offered_as_the_one_table_spells_it():
    """A flag is declared once: every config command offers the table's option for it, never one of its own."""
    offered: dict[str, set] = {}
    for command in CONFIG_COMMANDS:
        for action in _subparsers()[command]._actions:
            if action.dest in FLAGS:
                offered.setdefault(action.dest, set()).add(tuple(action.option_strings))
    assert set(offered) == set(FLAGS)  # no flag in the table that no command offers
    for dest, spellings in offered.items():
        option = FLAGS[dest].option
        assert spellings == {(option,) if option.startswith("-") else ()}, dest


def test_flags_become_typed_config_fields_and_set_overrides_win():
    args = build_parser().parse_args(["train", "cifar:resnet20", "--epochs", "3", "--name", "on", "--device", "cpu",
                                      "--no-progress", "--option", "rounds=2", "--set", "optimizer.lr=0.05"])
    config = configured(RunConfig.from_dict({}), args)
    assert config.name == "on" and config.train.device == "cpu" and config.train.progress is False
    assert config.mask.options == {"rounds": 2} and config.optimizer.lr == 0.05
    assert config.lr_plan().milestones == (1, 2)  # --epochs 3 decays at 50% and 75% of it
    assert flag_fields(build_parser().parse_args(["run", "x.yaml"])) == {}  # nothing set: the config's values stand


# ------------------------------------------------------------------ prune


def test_prune_lists_every_method(capsys):
    code, out, _ = run(capsys, "prune", "--list")
    assert code == 0
    for name in ("random", "magnitude", "snip", "grasp", "synflow", "imp", "gmp", "rigl", "asni", "optg", "learned"):
        assert f"│ {name} " in out, name


def test_prune_writes_a_mask_file_with_metadata_and_a_layer_table(capsys, tmp_path):
    out_file = tmp_path / "r20.safetensors"
    code, out, err = run(capsys, "prune", "cifar:resnet20", "--method", "random", "--sparsity", "0.9",
                         "--distribution", "erk", "--dense-last", "--seed", "3", "-o", out_file)
    assert code == 0, err
    masks, meta = load_masks(out_file)
    assert meta["method"] == "random" and meta["distribution"] == "erk" and meta["model"] == "cifar:resnet20"
    assert meta["seed"] == "3" and meta["version"] == surgery.__version__ and float(meta["target_sparsity"]) == 0.9
    assert abs(float(meta["sparsity"]) - 0.9) < 1e-4 and "fc.weight" not in masks
    assert "layer1.0.conv1.weight" in out and "89.79%" in out  # of every prunable weight: fc.weight is dense
    assert re.search(r"fc\.weight +│ 10x64 +│ +640 │ +640 │ +0\.0% │", out)  # the dense layer, at 0%


def test_prune_defaults_are_what_its_help_says(capsys, tmp_path):
    code, out, err = run(capsys, "prune", "-h")
    assert "default random" in out
    out_file = tmp_path / "m.safetensors"
    code, _, err = run(capsys, "prune", "cifar:resnet20", "--sparsity", "0.5", "-o", out_file)
    assert code == 0, err
    assert load_masks(out_file)[1]["method"] == "random"


def test_prune_magnitude_scores_trained_weights_or_untrained_ones_on_request(capsys, tmp_path):
    from safetensors.torch import save_file

    model = build_model("cifar:resnet20")
    with torch.no_grad():
        model.fc.weight.copy_(torch.arange(640.0).view(10, 64))
    weights = tmp_path / "trained.safetensors"
    save_file(model.state_dict(), str(weights))
    out_file = tmp_path / "m.safetensors"
    code, _, err = run(capsys, "prune", "cifar:resnet20", "--method", "magnitude", "--sparsity", "0.5", "--weights", weights,
                       "--scope", "layer", "-o", out_file)
    assert code == 0, err
    assert load_masks(out_file)[0]["fc.weight"].flatten().tolist() == [False] * 320 + [True] * 320  # the larger half
    code, _, err = run(capsys, "prune", "cifar:resnet20", "--method", "magnitude", "--sparsity", "0.5",
                       "--allow-untrained", "-o", out_file)
    assert code == 0, err


def test_prune_exclude_keeps_layers_dense_and_names_a_pattern_that_matches_nothing(capsys, tmp_path):
    out_file = tmp_path / "m.safetensors"
    code, out, err = run(capsys, "prune", "cifar:resnet20", "--sparsity", "0.5", "--exclude", "layer3.*",
                         "--exclude", "conv1.weight", "-o", out_file)
    assert code == 0, err
    masks, _ = load_masks(out_file)
    assert not any(n.startswith("layer3.") for n in masks) and "conv1.weight" not in masks and "fc.weight" in masks
    code, _, err = run(capsys, "prune", "cifar:resnet20", "--sparsity", "0.5", "--exclude", "layer9.*", "-o", out_file)
    assert code == 2 and "exclude pattern 'layer9.*' matches no prunable weight" in err and "conv1.weight" in err


def test_prune_snip_on_data_then_train_on_the_mask(capsys, tmp_path):
    mask_file = tmp_path / "snip.safetensors"
    code, _, err = run(capsys, "prune", "cifar:resnet20", "--method", "snip", "--sparsity", "0.8", "--data", "synthetic",
                       "--image-size", "8", "-o", mask_file)
    assert code == 0, err
    code, out, err = run(capsys, "train", "cifar:resnet20", *TINY_RUN, "--epochs", "2", "--masks", mask_file,
                         "--out", tmp_path / "run", "--set", "export.onnx=false")
    assert code == 0, err
    assert "80.0% of conv/linear weights are zero" in out


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--method", "snip", "--sparsity", "1.0", "--data", "synthetic"], "sparsity 1.0 is outside [0, 1)"),
        (["--method", "snip", "--sparsity", "0.9"], "'snip' scores weights with gradients on real data: give --data"),
        (["--method", "imp", "--sparsity", "0.9"], "'imp' trains the model: give --data"),
        (["--method", "snipp", "--sparsity", "0.9"], "unknown mask method 'snipp'. Did you mean 'snip'"),
        (["--method", "imp", "--sparsity", "0.9", "--data", "synthetic", "--option", "rounds=2", "--option", "rate=0.2"],
         "short of the target 0.9"),
        (["--method", "snip"], "needs MODEL and --sparsity S"),
        (["--method", "magnitude", "--sparsity", "0.5"], "scores trained weights, but no --weights were given"),
    ],
)
def test_prune_bad_input(capsys, tmp_path, flags, expected):
    code, _, err = run(capsys, "prune", "cifar:resnet20", *flags, "--image-size", "8", "-o", tmp_path / "m.safetensors",
                       "--out", tmp_path / "run", "--no-progress")
    assert code == 2 and expected in err and "Traceback" not in err, err


@pytest.mark.slow
def test_a_mask_file_must_cover_the_model_it_is_applied_to(capsys, tmp_path):
    mask_file = tmp_path / "r20.safetensors"
    assert run(capsys, "prune", "cifar:resnet20", "--method", "random", "--sparsity", "0.5", "--dense-last",
               "-o", mask_file)[0] == 0
    onnx_file = tmp_path / "m.onnx"
    code, _, err = run(capsys, "export", "cifar:resnet32", "--masks", mask_file, "-o", onnx_file)
    assert code == 2 and not onnx_file.exists()
    assert "made for cifar:resnet20, not for cifar:resnet32" in err  # the metadata's model, named with the target
    assert "12 of the model's 34 prunable weights have no mask: layer1.3.conv1.weight" in err and "--partial-masks" in err
    code, _, err = run(capsys, "export", "cifar:resnet32", "--masks", mask_file, "--partial-masks", "-o", onnx_file)
    assert code == 0 and onnx_file.exists(), err
    code, _, err = run(capsys, "export", "cifar:resnet20", "--masks", mask_file, "-o", onnx_file)  # fc.weight: dense on purpose
    assert code == 0 and "warning" not in err, err


def test_a_mask_file_for_another_model_lists_what_differs(capsys, tmp_path):
    mask_file = tmp_path / "r20.safetensors"
    assert run(capsys, "prune", "cifar:resnet20", "--method", "random", "--sparsity", "0.5", "-o", mask_file)[0] == 0
    code, _, err = run(capsys, "train", "cifar:resnet32", *TINY_RUN, "--epochs", "2", "--masks", mask_file,
                       "--num-classes", "7", "--out", tmp_path / "run")
    assert code == 2 and "does not fit" in err and "(made for cifar:resnet20)" in err
    assert "fc.weight: (10, 64) in the file, (7, 64) in the model" in err
    code, _, err = run(capsys, "train", "cifar:vgg11", *TINY_RUN, "--epochs", "2", "--masks", mask_file, "--out", tmp_path / "v")
    assert code == 2 and "22 names the model does not have: conv1.weight, fc.weight, layer1.0.conv1.weight" in err


def test_demo_takes_no_progress_like_the_other_run_commands():
    from surgery.apps.demo import demo_config

    assert configured(demo_config(), build_parser().parse_args(["demo", "--no-progress"])).train.progress is False
