"""result.json, a run's record: written at every end (completed, interrupted, failed), read by the
report, the CLI summary and --resume; a run that fails before training leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_run_config

import surgery
from surgery.apps.cli import main
from surgery.errors import MaskError, VerificationError
from surgery.train import RunConfig, pipeline
from surgery.train.record import STAGES, config_hash
from surgery.train.report import write_report
from surgery.train.run_files import RunFiles
from surgery.train.trainer import Interrupted, Trainer

pytestmark = pytest.mark.slow  # trains tiny runs to completion


tiny_config = tiny_run_config


def record_of(config: RunConfig) -> dict:
    return json.loads(RunFiles(config.run_dir).result.read_text())


def test_a_completed_run_records_its_outcome_as_data(tmp_path):
    config = tiny_config(tmp_path, export={"onnx": True})
    result = pipeline.run(config)
    files = RunFiles(config.run_dir)
    record = record_of(config)

    assert record["status"] == "completed" and record["reason"] is None
    assert record["config"] == {"name": "tiny", "hash": config_hash(config)}
    assert record["ghosts"]["removed_at"] == {"step": 20, "epoch": 2} and result.ghosts_removed_at == (20, 2)
    assert record["ghosts"]["kept"] is False and record["ghosts"]["parameters"] == result.ghost_parameters > 0
    assert record["accuracy"]["test"] == result.history[-1]["test_acc"] == result.test_accuracy
    assert record["accuracy"]["selected"] == "last" and record["accuracy"]["best_val"] is None  # no val split
    assert record["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert record["weights"]["kept"] == sum(int(w.count_nonzero()) for w in surgery.compiler.masks.prunable_weights(
        result.model).values())
    assert record["tweaks"]["ghost_skips"] == 18 and record["tweaks"]["soft_activations"] == 19
    assert record["verification"]["status"] == "passed"
    assert record["verification"]["report"] == json.loads(json.dumps(result.verify.to_dict()))
    export = record["export"]
    assert export["path"] == str(files.onnx) and export["sparse"] is True
    assert export["bytes"] == files.onnx.stat().st_size < export["dense_bytes"]
    assert record["training"] == {"epochs": 3, "steps": 30, "seconds": pytest.approx(result.seconds)}
    assert record["timings"]["seconds"] >= record["training"]["seconds"]
    assert record["versions"]["surgery"] == surgery.__version__ and record["versions"]["torch"]

    # the report is rebuilt from the record alone: verify.txt and the ONNX sidecar are for people
    files.verify.unlink()
    files.onnx_sidecar.unlink()
    text = write_report(files.root, title="again").read_text()
    assert "| verification | **passed** (4 checks): (a) graph isomorphic" in text  # (c) in eval and in train mode
    assert "(c) outputs equal in train mode" in text
    assert "| ONNX size |" in text and "| ghosts | removed before epoch 3 (step 20)" in text


def test_a_run_records_the_wall_seconds_of_every_stage(tmp_path):
    config = tiny_config(tmp_path, export={"onnx": True})
    result = pipeline.run(config)
    record = record_of(config)
    stages = record["stages"]

    assert set(stages) == set(STAGES) and stages["startup"] is None  # run() called from Python: no start-up to time
    timed = {stage: seconds for stage, seconds in stages.items() if stage != "startup"}
    assert all(isinstance(seconds, float) and seconds >= 0 for seconds in timed.values()), timed
    assert all(timed[stage] > 0 for stage in ("data", "compile", "lrsi", "training", "verify", "export", "report"))
    assert sum(timed.values()) <= record["timings"]["seconds"] + 0.05  # the stages lie within the run, report included
    assert timed["training"] >= record["training"]["seconds"] - 1e-3 and timed["lrsi"] >= record["lrsi"]["seconds"] - 1e-3
    assert result.record["stages"] == stages  # the record written last holds the report's seconds too
    per_check = record["verification"]["report"]["seconds"]  # verify's seconds, check by check (each mode apart)
    assert set(per_check) == {"graph", "strict_load", "outputs", "train_outputs"} and min(per_check.values()) >= 0


def test_a_run_from_the_command_line_times_its_start_up(tmp_path):
    out_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}  # the summary's rows unwrapped
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "surgery", *TINY_TRAIN, "--no-lrsi", "--set", "export.onnx=false",
                           "--out", str(out_dir)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    record = json.loads(RunFiles(out_dir).result.read_text())
    startup = record["stages"]["startup"]
    assert 0 < startup < wall and startup + record["timings"]["seconds"] <= wall  # the interpreter and imports
    assert record["stages"]["lrsi"] == record["stages"]["export"] == 0.0  # stages that did not run
    assert " s outside it (" in done.stdout and "startup" in done.stdout  # the summary's time line


def test_an_interrupted_run_records_the_signal_and_resumes_to_completion(tmp_path, monkeypatch):
    config = tiny_config(tmp_path)
    step = Trainer._train_step

    def sigterm_at_step_25(self, *args):  # after the ghosts left (step 20)
        if self.step == 25:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, *args)

    monkeypatch.setattr(Trainer, "_train_step", sigterm_at_step_25)
    with pytest.raises(Interrupted):
        pipeline.run(config)
    record = record_of(config)
    assert record["status"] == "interrupted"
    assert record["reason"]["signal"] == "SIGTERM" and record["reason"]["stage"] == "training"
    assert "--resume" in record["reason"]["message"]

    monkeypatch.undo()
    result = pipeline.run(config, resume=True)
    assert record_of(config)["status"] == "completed" and result.status == "completed"
    assert record_of(config)["ghosts"]["removed_at"] == {"step": 20, "epoch": 2}  # carried by the checkpoint


def test_a_run_that_fails_after_training_keeps_its_directory_and_records_why(tmp_path, monkeypatch):
    def differs(*args, **kwargs):
        raise VerificationError("outputs of the original and the de-ghosted model differ: 0.3 > 1e-05\nmore")

    monkeypatch.setattr(pipeline, "verify", differs)  # where the run looks it up
    config = tiny_config(tmp_path, train={"epochs": 1}, lr_schedule={"milestones": []})
    with pytest.raises(VerificationError):
        pipeline.run(config)
    record = record_of(config)
    assert record["status"] == "failed"
    assert record["reason"] == {"error": "VerificationError", "stage": "finish",
                                "message": "outputs of the original and the de-ghosted model differ: 0.3 > 1e-05"}
    assert record["verification"]["status"] == "failed" and record["verification"]["message"].endswith("more")
    assert RunFiles(config.run_dir).holds_checkpoint()


def test_a_run_that_fails_before_training_removes_what_it_created(tmp_path):
    config = tiny_config(tmp_path, mask={"file": str(tmp_path / "missing.safetensors")})
    with pytest.raises(MaskError, match="missing.safetensors' does not exist"):
        pipeline.run(config)
    assert not config.run_dir.exists()


def test_a_failure_before_training_in_a_directory_with_a_checkpoint_keeps_it(tmp_path):
    first = tiny_config(tmp_path, train={"epochs": 1}, lr_schedule={"milestones": []})
    pipeline.run(first)
    again = tiny_config(tmp_path, train={"epochs": 1}, lr_schedule={"milestones": []},
                        mask={"file": str(tmp_path / "missing.safetensors")})
    with pytest.raises(MaskError):
        pipeline.run(again)
    record = record_of(again)
    assert record["status"] == "failed" and record["reason"]["error"] == "MaskError"
    assert record["reason"]["stage"] == "setup" and RunFiles(again.run_dir).holds_checkpoint()


# ------------------------------------------------------------------ resume of a completed run


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


TINY_TRAIN = ["train", "cifar:resnet20", "--data", "synthetic", "--image-size", "8", "--batch-size", "100",
              "--epochs", "1", "--sparsity", "0.8", "--no-progress"]


def test_resume_of_a_completed_run_says_so_and_force_verifies_and_exports_again(capsys, tmp_path):
    out_dir = tmp_path / "run"
    files = RunFiles(out_dir)
    code, out, err = cli(capsys, *TINY_TRAIN, "--out", out_dir)
    assert code == 0, err
    recorded, exported = files.result.read_text(), files.onnx.stat().st_mtime_ns

    code, out, err = cli(capsys, *TINY_TRAIN, "--out", out_dir, "--resume")
    assert code == 0, err
    assert f"is already complete: its results are in {out_dir}" in out and "epoch" not in out
    assert files.result.read_text() == recorded and files.onnx.stat().st_mtime_ns == exported

    code, out, err = cli(capsys, *TINY_TRAIN, "--out", out_dir, "--resume", "--force")
    assert code == 0, err
    assert "resumed from" in out and "epoch 1/1" not in out  # the final checkpoint: nothing left to train
    assert "(c) outputs equal" in out and files.onnx.stat().st_mtime_ns != exported
    assert json.loads(files.result.read_text())["timings"] != json.loads(recorded)["timings"]

    code, _, err = cli(capsys, *TINY_TRAIN, "--out", out_dir, "--force")
    assert code == 2 and "give it with --resume" in err

    # in Python, resume=True of a completed run returns its recorded result, weights loaded
    config = RunConfig.from_yaml(files.config)
    result = pipeline.run(config, resume=True)
    assert result.record == json.loads(files.result.read_text()) and result.history[-1]["epoch"] == 1
    saved = load_file(str(files.weights))
    assert all(torch.equal(saved[k], v) for k, v in result.model.state_dict().items())


def test_resume_with_another_config_is_refused_before_anything_is_rewritten(capsys, tmp_path):
    out_dir = tmp_path / "run"
    files = RunFiles(out_dir)
    code, _, err = cli(capsys, *TINY_TRAIN, "--out", out_dir)
    assert code == 0, err
    recorded, config = files.result.read_text(), files.config.read_text()

    code, _, err = cli(capsys, *TINY_TRAIN, "--out", out_dir, "--resume", "--set", "optimizer.lr=0.05")
    assert code == 2 and "the config differs" in err and "optimizer.lr" in err
    assert files.result.read_text() == recorded and files.config.read_text() == config


def test_a_runs_mask_files_name_the_layers_they_leave_dense(capsys, tmp_path):
    out_dir = tmp_path / "run"
    files = RunFiles(out_dir)
    code, _, err = cli(capsys, *TINY_TRAIN, "--dense-last", "--out", out_dir)
    assert code == 0, err
    # the mask the run wrote applies to the same model again without --partial-masks
    code, _, err = cli(capsys, "export", "cifar:resnet20", "--masks", files.masks, "--input-size", "8",
                       "-o", tmp_path / "again.onnx")
    assert code == 0, err


def test_prune_rounds_record_the_sparsity_of_each_round(capsys, tmp_path):
    out_dir = tmp_path / "imp"
    code, _, err = cli(capsys, "prune", "cifar:resnet20", "--method", "imp", "--sparsity", "0.75", "--option",
                       "rounds=2", "--data", "synthetic", "--image-size", "8", "--batch-size", "100", "--epochs", "1",
                       "--no-progress", "--out", out_dir, "-o", tmp_path / "imp.safetensors")
    assert code == 0, err
    record = json.loads(RunFiles(out_dir).result.read_text())
    assert record["status"] == "completed" and record["kind"] == "mask rounds" and record["mask"]["method"] == "imp"
    assert record["mask_file"] == str(tmp_path / "imp.safetensors")
    assert [round_["sparsity"] for round_ in record["rounds"]] == pytest.approx([0.5, 0.75])
    assert record["sparsity"] == pytest.approx(0.75, abs=1e-3) and record["timings"]["seconds"] > 0
    assert record["model"]["class"] == "surgery.zoo.cifar.CifarResNet" and record["model"]["spec"] == "cifar:resnet20"


def test_masks_given_in_python_are_checked_and_an_allowed_empty_layer_is_recorded(tmp_path):
    config = tiny_config(tmp_path, recipe="none")
    masks = surgery.pruning.random_masks(pipeline.build(config, pipeline.load_data(config)), 0.8, seed=0)
    masks["layer3.2.conv2.weight"] = torch.zeros_like(masks["layer3.2.conv2.weight"])
    with pytest.raises(MaskError, match=r"masks given to surgery.train.run keeps no weight in 1 of 22 .*layer3.2.conv2"):
        pipeline.run(config, masks=masks)
    allowed = tiny_config(tmp_path, recipe="none", mask={"method": "snip", "allow_empty_layers": True})
    pipeline.run(allowed, masks=masks)
    assert record_of(allowed)["weights"]["empty_layers"] == ["layer3.2.conv2.weight"]
    assert "| empty layers | **1** keep no weight (mask.allow_empty_layers): `layer3.2.conv2.weight` |" in \
        RunFiles(allowed.run_dir).summary.read_text()


def test_a_model_given_in_python_is_recorded_as_it_is_and_its_resume_needs_it_again(capsys, tmp_path):
    from conftest import SmallCNN
    from surgery.errors import UnknownModelError

    config = tiny_config(tmp_path, train={"epochs": 1}, lr_schedule={"milestones": []}, recipe="none")
    pipeline.run(config, model=SmallCNN(num_classes=10))
    files = RunFiles(config.run_dir)
    record = record_of(config)
    parameters = sum(p.numel() for p in SmallCNN(num_classes=10).parameters())

    assert record["model"] == {"class": "conftest.SmallCNN", "source": "python", "spec": None,
                               "parameters": parameters}
    assert "given in Python (conftest.SmallCNN" in files.summary.read_text() and "resnet20" not in files.summary.read_text()
    saved = RunConfig.from_yaml(files.config)
    assert saved.model.spec == "python:conftest.SmallCNN"  # not the config's cifar:resnet20, which did not train
    with pytest.raises(UnknownModelError, match="given in Python .* model=SmallCNN"):
        pipeline.run(saved, resume=True)  # nothing builds it: refused, naming how to give it again
    assert pipeline.run(saved, model=SmallCNN(num_classes=10), resume=True).record == record

    built = tiny_config(tmp_path, name="built", train={"epochs": 1}, lr_schedule={"milestones": []}, recipe="none")
    assert main(["run", str(_saved(built)), "--no-progress"]) == 0
    assert record_of(built)["model"]["source"] == "spec" and record_of(built)["model"]["spec"] == "cifar:resnet20"
    assert record_of(built)["model"]["class"] == "surgery.zoo.cifar.CifarResNet" and record_of(built)["model"]["parameters"] > 0
    assert "cifar:resnet20 (surgery.zoo.cifar.CifarResNet, " in capsys.readouterr().out


def _saved(config: RunConfig):
    path = config.run_dir.parent / f"{config.name}.yaml"
    path.write_text(config.to_yaml())
    return path
