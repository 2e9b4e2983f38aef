"""surgery.integrations.lightning.ToSTCallback in a 2-epoch CPU Lightning run, and its bad input."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import SmallCNN, seeded

from surgery.errors import MissingExtraError, ToSTError
from surgery.compiler.ghosts import ghosts
from surgery.compiler.masks import masked_parameters
from surgery.pruning import random_masks
from surgery.train.data import load_dataset

pl = pytest.importorskip("lightning.pytorch")
from surgery.integrations.lightning import ToSTCallback  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class Classifier(pl.LightningModule):
    def __init__(self, milestones=(1,)):
        super().__init__()
        self.model = seeded(SmallCNN, num_classes=10)
        self.milestones = list(milestones)
        self.example_input_array = torch.zeros(2, 3, 8, 8)

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        if not self.milestones:
            return optimizer
        return [optimizer], [torch.optim.lr_scheduler.MultiStepLR(optimizer, self.milestones, gamma=0.1)]


def synthetic_loader(samples: int = 200, batch_size: int = 50) -> torch.utils.data.DataLoader:
    train = load_dataset("synthetic", image_size=8).split("train")
    images = train.images[:samples].float() / 255
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, train.labels[:samples]),
                                       batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))


def fit(module, *callbacks, epochs: int = 2) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, enable_progress_bar=False, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, callbacks=list(callbacks))
    trainer.fit(module, synthetic_loader())
    return trainer


class Strengths(pl.Callback):
    """alpha before every training batch."""

    def __init__(self, tost_callback):
        self.tost_callback, self.alphas = tost_callback, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.alphas.append(self.tost_callback.tost.strength()["alpha"])


def test_a_two_epoch_run_ghosts_the_submodule_removes_before_the_first_milestone_and_ends_verified(tmp_path):
    module = Classifier(milestones=[1])
    masks = random_masks(module.model, 0.8, seed=0)
    callback = ToSTCallback("model", masks=masks, export=tmp_path / "model.onnx")
    seen = Strengths(callback)
    trainer = fit(module, callback, seen)

    assert seen.alphas == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0, None, None, None, None])  # 4 batches an epoch, decay at epoch 1
    assert callback.removal.step == 4 and callback.removal.parameters > 0
    optimizer = trainer.optimizers[0]
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["lr"] == pytest.approx(0.005)
    assert module.model is callback.clean and not ghosts(module) and not masked_parameters(module)
    assert callback.report.outputs_max_abs_diff is not None  # verified against the original SmallCNN
    for name, mask in masks.items():
        assert not module.model.get_parameter(name)[~mask].any(), name
    fresh = SmallCNN(num_classes=10)
    fresh.load_state_dict(module.model.state_dict())  # strict: the original's keys
    assert (tmp_path / "model.onnx").is_file()


def test_an_epoch_to_remove_at_and_inputs_from_a_batch_without_a_scheduler():
    module = Classifier(milestones=[])
    module.example_input_array = None
    callback = ToSTCallback(remove_at=1, example_inputs=lambda batch: batch[0][:2], verify=False)
    fit(module, callback)
    assert callback.path == "model" and callback.removal.step == 4 and callback.report is None


def test_bad_submodules_and_missing_inputs_are_clear_errors():
    with pytest.raises(ToSTError, match="has no submodule 'modle'. Did you mean 'model'"):
        fit(Classifier(), ToSTCallback("modle"), epochs=1)
    module = Classifier()
    module.example_input_array = None
    with pytest.raises(ToSTError, match="needs example inputs: set self.example_input_array"):
        fit(module, ToSTCallback("model"), epochs=1)
    with pytest.raises(ToSTError, match="remove_at='later'"):
        ToSTCallback(remove_at="later")


def test_without_the_extra_importing_the_callback_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)  # what an absent package looks like to import
    monkeypatch.delitem(sys.modules, "lightning.pytorch")
    monkeypatch.delitem(sys.modules, "surgery.integrations.lightning")
    with pytest.raises(MissingExtraError, match=r'pip install "tost-surgery\[lightning\]"'):
        importlib.import_module("surgery.integrations.lightning")


def test_importing_surgery_does_not_import_lightning():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    code = "import json, sys, surgery, surgery.train; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert not [name for name in json.loads(done.stdout) if name.split(".")[0] in ("lightning", "pytorch_lightning")]


def test_the_released_codes_preset_keeps_its_ghosts_and_puts_the_trained_architecture_back(tmp_path):
    module = Classifier(milestones=[1])
    callback = ToSTCallback("model", recipe="tost-official", masks=random_masks(module.model, 0.8, seed=0),
                            export=tmp_path / "kept.onnx")
    fit(module, callback)
    assert callback.removal is None and ghosts(module.model) and not masked_parameters(module.model)
    assert callback.tost.architecture.startswith("kept ") and callback.report is None
    assert json.loads((tmp_path / "kept.onnx.json").read_text())["architecture"] == callback.tost.architecture
