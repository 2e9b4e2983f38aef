"""The examples run as a user runs them."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torchvision
import yaml

import surgery
from surgery.pruning import method
from surgery.train.config import RunConfig
from surgery.train.sweeps import sweep

pytestmark = pytest.mark.slow  # runs the examples end to end

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_round_trip_example_runs_and_writes_its_files(tmp_path):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "round_trip.py"), "--steps", "3", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(d) ghosted at alpha=0 with activations restored equals it" in done.stdout
    assert "weights zero: 9" in done.stdout  # ~90% of conv/linear weights
    assert {p.name for p in tmp_path.iterdir()} >= {"mask.safetensors", "resnet18.onnx", "resnet18.onnx.json"}


def test_tost_config_compiles_a_model():
    model = torchvision.models.resnet18(num_classes=10)
    ghosted = surgery.compile(model, __import__("torch").randn(2, 3, 64, 64), EXAMPLES / "configs" / "tost.yaml")
    summary = surgery.manifest_of(ghosted).summary()
    assert summary["convs_covered"] == 16 and summary["activations_swapped"] == 17  # the body's 3x3 convs


CONFIGS = sorted(p for p in (EXAMPLES / "configs").glob("*.yaml") if p.name != "tost.yaml")
STUDIES = [p for p in CONFIGS if "sweep" in (yaml.safe_load(p.read_text()) or {})]  # `surgery sweep` grids
CPU_STUDIES = [EXAMPLES / "configs" / f"{name}.yaml" for name in ("sweep-digits", "study-cifar")]  # docs/results.md's
RUN_CONFIGS = [p for p in CONFIGS if p not in CPU_STUDIES]  # paper-scale runs (Table 2's also carries its grids)


WORKFLOWS = {"tost-cifar10", "tost-table2", "lottery-retrain", "pruning-pipeline", "optg", "asni", "asni-centroids"}


def test_there_is_a_run_config_per_paper_workflow():
    assert {p.stem for p in RUN_CONFIGS} == WORKFLOWS


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.stem)
def test_each_run_config_is_a_valid_paper_scale_run_that_a_script_runs(path):
    config = RunConfig.from_yaml(path)  # validates every field, the mask method and its options' names
    assert "\nrecipe:" in path.read_text()  # every config says which tweaks train: no ghost leaks into a baseline
    assert config.train.epochs >= 160 and config.data.dataset in ("cifar10", "cifar100")
    method(config.mask.method)
    # The configs run (scaled down) through their workflow scripts, tested below.
    assert any(f'load("{path.stem}")' in script.read_text() for script in EXAMPLES.glob("*.py"))


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_each_study_config_plans_its_sweep(path, tmp_path, monkeypatch):
    dataset = RunConfig.from_yaml(path).data.dataset
    if dataset.startswith("cifar10-jpeg:"):  # a capacity-matched cell counts its model's size, built for the data
        archive = Path(dataset.partition(":")[2])
        if not (EXAMPLES.parent / archive).is_file():
            pytest.skip(f"{archive} (the shared CIFAR-10 JPEG archive) is absent; {path.name} plans from it")
        monkeypatch.chdir(EXAMPLES.parent)
    rows = sweep(path, out=tmp_path / "sweep", dry_run=True)  # every grid value checked against the config
    assert len(rows) >= 2 and {row["status"] for row in rows} == {"pending"}


def test_the_cpu_studies_and_table_2_are_studies():
    assert [p.stem for p in STUDIES] == ["study-cifar", "sweep-digits", "tost-table2"]


def test_asni_centroids_config_retrains_the_asni_configs_mask():
    asni, again = (RunConfig.from_yaml(EXAMPLES / "configs" / f"{n}.yaml") for n in ("asni", "asni-centroids"))
    run_from_the_repo_root = EXAMPLES.parent / asni.run_dir / "masks.safetensors"
    assert Path(again.mask.file).resolve() == run_from_the_repo_root.resolve() and again.init.centroids
    assert again.model == asni.model  # the mask fits: same architecture and classes


SCRIPTS = {  # extra arguments; lines the output must hold (methods and the sparsity reached)
    "tost_any_mask.py": (["--methods", "random"], ["random  ToST      ", "90.0%     verified"]),
    "tost_any_mask.py --table2": (["--methods", "random", "--table2"], ["random  plain     ", "random  ToST      "]),
    "lottery_ticket.py": (["--rounds", "2"], ["ticket at 80.0%", "AT + TRT (rewound)"]),
    "pruning_pipeline.py": ([], ["ZerO + learned mask", "90.0%"]),
    "optg.py": ([], ["optg", "gmp", "rigl", "90.0%"]),
    "asni.py": ([], ["-> 90%", "retrained from the centroids", "90.0% sparse"]),
}


def test_there_is_a_script_per_paper_workflow():
    scripts = {key.split()[0] for key in SCRIPTS}
    assert {p.name for p in EXAMPLES.glob("*.py")} == {*scripts, "round_trip.py", "workflow.py", "detection_backbone.py", "onnx_inference.py", *OWN_LOOPS}


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_workflow_script_runs_tiny(script, tmp_path, monkeypatch, capsys):
    """Run as ``python examples/SCRIPT ...`` would, in this process (a subprocess costs seconds of imports)."""
    extra, expected = SCRIPTS[script]
    monkeypatch.syspath_prepend(str(EXAMPLES))  # the script's own directory, for `import workflow`
    monkeypatch.setattr(sys, "argv", [script.split()[0], "--data", "synthetic", "--image-size", "8", "--epochs", "2",
                                      "--out", str(tmp_path), "--no-export", *extra])
    runpy.run_path(str(EXAMPLES / script.split()[0]), run_name="__main__")
    out = capsys.readouterr().out
    assert all(line in out for line in expected), out[-2000:]


OWN_LOOPS = {  # ToST in the user's training code: extra arguments; lines the output must hold
    "own_loop.py": (["--epochs", "2", "--image-size", "8"],
                    ["ghosts removed after step 11", "(c) outputs equal", "90.0% of the masked weights are zero"]),
    "lightning_tost.py": (["--epochs", "2", "--image-size", "8", "--no-export"],
                          ["ghosts removed after step 11", "(c) outputs equal", "clean: test"]),
}


@pytest.mark.parametrize("script", OWN_LOOPS)
def test_each_own_loop_example_runs_tiny(script, monkeypatch, capsys):
    if script.startswith("lightning"):
        pytest.importorskip("lightning")
    extra, expected = OWN_LOOPS[script]
    monkeypatch.setattr(sys, "argv", [script, *extra])
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    out = capsys.readouterr().out
    assert all(line in out for line in expected), out[-2000:]


def test_detection_backbone_example_trains_verifies_and_exports_the_backbone(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["detection_backbone.py", "--steps", "4", "--image-size", "96", "--batch", "2",
                                      "--out", str(tmp_path)])
    runpy.run_path(str(EXAMPLES / "detection_backbone.py"), run_name="__main__")
    out = capsys.readouterr().out
    expected = ["ghosts removed after step 2", "(a) graphs of backbone isomorphic", "(c) outputs equal",
                "a FasterRCNN again, 90.0% of the backbone's masked weights are zero", "onnxruntime parity"]
    assert all(line in out for line in expected), out[-2000:]
    assert (tmp_path / "backbone.onnx").is_file()
