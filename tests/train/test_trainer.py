"""The trainer: schedules in motion, ghosts leaving the optimizer cleanly, masks, divergence,
signals, resuming bit-identically, and config mismatches on resume."""

from __future__ import annotations

import signal

import pytest
import torch

from conftest import tiny_run_config

import surgery
from surgery.errors import CheckpointError, ConfigError, DivergedError
from surgery.compiler.ghosts import ghost_parameters, ghosts
from surgery.compiler.masks import masked_parameters
from surgery.hooks import TrainingHook
from surgery.pruning import random_masks
from surgery.train import pipeline
from surgery.train.checkpoint import load_checkpoint
from surgery.train.config import RunConfig
from surgery.train.selection import BestValidation
from surgery.train.settings import TrainerSettings
from surgery.train.trainer import Interrupted, Trainer


def tiny_config(tmp_path, name="tiny", **sections):
    """The tiny run with label smoothing decaying 0.1 -> 0."""
    smoothing = {"kind": "linear", "start": 0.1, "end": 0.0, **sections.pop("label_smoothing", {})}
    return tiny_run_config(tmp_path, name, label_smoothing=smoothing, **sections)


def build_trainer(config: RunConfig, hooks=()) -> Trainer:
    torch.manual_seed(config.train.seed)
    dataset = pipeline.load_data(config)
    model = pipeline.build(config, dataset)
    masks = random_masks(model, config.mask.sparsity, seed=config.train.seed)
    ghosted = surgery.compile(model, pipeline.example_batch(dataset), config.recipe_object().replace(masks=masks))
    train, evals = pipeline.loaders(config, dataset, pipeline.Distributed())
    config.run_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(ghosted, TrainerSettings.from_config(config), train, evals, run_dir=config.run_dir, hooks=hooks)


def read_csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_run_moves_the_schedules_removes_ghosts_and_verifies(tmp_path):
    config = tiny_config(tmp_path)
    result = pipeline.run(config)
    run_dir = config.run_dir
    epochs = read_csv(run_dir / "metrics.csv")
    assert [row["ghosts"] for row in epochs] == ["on", "on", "removed"]
    steps = read_csv(run_dir / "steps.csv")
    per_epoch = len(steps) // 3
    last_ghosted = steps[2 * per_epoch - 1]
    assert float(steps[0]["alpha"]) == 1.0 and float(last_ghosted["alpha"]) == 0.0
    assert float(steps[0]["beta"]) == 1.0 and float(last_ghosted["beta"]) == 50.0
    assert steps[-1]["alpha"] == "" and float(steps[-1]["lr"]) == pytest.approx(0.01)
    assert float(steps[0]["label_smoothing"]) == pytest.approx(0.1) and float(steps[-1]["label_smoothing"]) == 0.0
    assert "(a) graph isomorphic" in (run_dir / "verify.txt").read_text()
    for name in ("summary.md", "curves.png", "schedules.png", "sparsity.png", "masks.safetensors", "model.safetensors"):
        assert (run_dir / name).is_file(), name
    assert result.test_accuracy is not None and result.sparsity == pytest.approx(0.8, abs=0.01)
    assert not ghosts(result.model) and not masked_parameters(result.model)
    assert result.tweaks_text == "ghost skips: 18 (16 identity, 2 conv1x1), soft activations: 19 pswish, " \
        "LRsI (10 iterations), label smoothing 0.1 -> 0"  # tost: the four tweaks
    assert result.ghost_parameters == 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64  # two 1x1 projections + their norms
    summary = (run_dir / "summary.md").read_text()
    assert "| tweaks | ghost skips: 18 (16 identity, 2 conv1x1), soft activations: 19 pswish" in summary
    assert f"| ghost cost | {result.ghost_parameters:,} dense training-only parameters = " in summary


def test_a_baseline_says_it_trained_no_tweaks(tmp_path):
    config = tiny_config(tmp_path, recipe="none", label_smoothing={"start": 0.0, "kind": "constant"},
                         train={"epochs": 1}, lr_schedule={"milestones": []})
    result = pipeline.run(config)
    assert result.tweaks_text == "none (plain sparse training)" and result.ghost_parameters == 0
    summary = (config.run_dir / "summary.md").read_text()
    assert "| tweaks | none (plain sparse training) |" in summary and "ghost cost" not in summary


# ------------------------------------------------------------------ validation split


def scripted_evaluation(monkeypatch, val, test):
    """Trainer.evaluate returns these accuracies, epoch by epoch, for the val and test splits."""
    def evaluate(self, loader):
        split = next(name for name, candidate in self.eval_loaders.items() if candidate is loader)
        return 1.0, {"val": val, "test": test}[split][self.epoch]

    monkeypatch.setattr(Trainer, "evaluate", evaluate)


def test_best_validation_weights_come_from_an_epoch_without_ghosts(tmp_path, monkeypatch):
    # ghosts leave before epoch 3 (the decay at 2): epoch 1's best validation score does not count
    scripted_evaluation(monkeypatch, val=[0.9, 0.5, 0.7, 0.6], test=[0.1, 0.2, 0.3, 0.4])
    trainer = build_trainer(tiny_config(tmp_path, data={"val_split": 0.2}, train={"epochs": 4}))
    snapshots = {}
    track = BestValidation.after_epoch

    def snapshot(self, trainer):
        snapshots[trainer.history[-1]["epoch"]] = weights(trainer.module)
        track(self, trainer)

    monkeypatch.setattr(BestValidation, "after_epoch", snapshot)
    result = trainer.fit()
    assert result.selected == "best_val" and result.best == {"epoch": 3, "val_acc": 0.7, "test_acc": 0.3}
    final = weights(result.model)
    assert all(torch.equal(final[k], snapshots[3][k]) for k in final)
    state, _ = trainer.store.load_latest()  # a resumed run knows the best epoch and its weights
    assert state["best"]["epoch"] == 3 and all(torch.equal(state["best_state"][k], snapshots[3][k]) for k in final)


def test_ghosts_leaving_at_the_runs_end_leave_no_epoch_to_select_and_the_final_checkpoint_without_them(
        tmp_path, monkeypatch):
    # every epoch trains with the ghosts, which leave after the last one: no epoch is the final architecture
    scripted_evaluation(monkeypatch, val=[0.5, 0.6, 0.9], test=[0.1, 0.2, 0.3])
    trainer = build_trainer(tiny_config(tmp_path, data={"val_split": 0.2}, ghosts={"remove_at": 3}))
    result = trainer.fit()
    assert (result.selected, result.best) == ("last", None) and not ghosts(result.model)
    assert result.ghosts_removed_at == (3 * trainer.steps_per_epoch, 3)
    state, _ = trainer.store.load_latest()
    assert state["deghosted"] and state["ghosts_removed_at"] == result.ghosts_removed_at


def test_the_run_reports_last_and_best_validation_test_accuracy(tmp_path, monkeypatch):
    scripted_evaluation(monkeypatch, val=[0.5, 0.8, 0.6], test=[0.2, 0.35, 0.4])
    config = tiny_config(tmp_path, data={"val_split": 0.2}, lr_schedule={"milestones": [1]})
    result = pipeline.run(config)
    assert (result.selected, result.test_accuracy, result.test_accuracy_last) == ("best_val", 0.35, 0.4)
    summary = (config.run_dir / "summary.md").read_text()
    assert "| test accuracy (kept weights) | 35.00% (weights of the best-validation epoch 2, val 80.00%); " \
        "last epoch 40.00% |" in summary
    last = pipeline.run(tiny_config(tmp_path, "last", data={"val_split": 0.2}, lr_schedule={"milestones": [1]},
                                    train={"select": "last"}))
    assert (last.selected, last.test_accuracy, last.best_val["test_acc"]) == ("last", 0.4, 0.35)


def test_best_validation_selection_refuses_a_mask_that_changes_during_training(tmp_path):
    config = tiny_config(tmp_path, data={"val_split": 0.2}, mask={"method": "gmp", "sparsity": 0.8},
                         train={"select": "best_val"})
    with pytest.raises(ConfigError, match="best_val needs a fixed mask, but gmp changes the mask"):
        pipeline.run(config)


def test_removing_ghosts_keeps_every_other_parameters_momentum(tmp_path):
    trainer = build_trainer(tiny_config(tmp_path))
    trainer.train_loader.set_epoch(0)
    x, y = next(iter(trainer.train_loader.batches(0)))
    trainer._train_step(x, y, 0.0)
    leaving = {id(p) for p in ghost_parameters(trainer.module)}
    kept = [p for g in trainer.optimizer.param_groups if g["name"] == "weights" for p in g["params"]]
    momentum = {id(p): trainer.optimizer.state[p]["momentum_buffer"].clone() for p in kept}
    trainer.ghosts.remove(trainer)
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["weights"]
    assert not leaving & {id(p) for p in trainer.optimizer.state}
    assert all(p is q for p, q in zip(kept, trainer.optimizer.param_groups[0]["params"]))
    assert all(torch.equal(trainer.optimizer.state[p]["momentum_buffer"], momentum[id(p)]) for p in kept)
    assert {id(p) for p in trainer.module.parameters()} == {id(p) for p in kept}
    trainer._train_step(x, y, 0.0)  # the optimizer still steps the de-ghosted model


def test_pruned_weights_stay_exactly_zero_through_training(tmp_path):
    trainer = build_trainer(tiny_config(tmp_path, train={"epochs": 2}, lr_schedule={"milestones": [1]}))
    masks = {k: v.clone() for k, v in masked_parameters(trainer.module).items()}
    result = trainer.fit()
    for name, mask in masks.items():
        owner, _, attr = name.rpartition(".")
        stored = result.model.get_submodule(owner).parametrizations[attr].original
        assert torch.count_nonzero(stored[~mask]) == 0, name


def test_a_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path):
    trainer = build_trainer(tiny_config(tmp_path, train={"epochs": 3, "checkpoint_every": 1}))
    loss_fn = trainer.loss_fn

    def poisoned(logits, y, x, ls):
        loss = loss_fn(logits, y, x, ls)
        return loss * float("nan") if trainer.step == 13 else loss

    trainer.loss_fn = poisoned
    with pytest.raises(DivergedError, match=r"became nan at step 14 \(epoch 2\).*last good checkpoint is .*epoch0001"):
        trainer.fit()
    assert [p.name for p in trainer.store.checkpoints()] == ["epoch0001-step000010.pt"]


class EpochWatcher(TrainingHook):
    """Notes the clock and the logged row at every ``after_epoch``; its notes travel in checkpoints."""

    name = "watcher"
    changes_mask = False

    def __init__(self):
        self.seen = []

    def after_epoch(self, trainer):
        self.seen.append((trainer.epoch, trainer.batch, trainer.history[-1]["epoch"]))

    def state_dict(self):
        return {"seen": list(self.seen)}


def test_a_hook_sees_each_epoch_logged_and_what_it_does_then_is_in_that_epochs_checkpoint(tmp_path):
    watcher = EpochWatcher()
    config = tiny_config(tmp_path, train={"epochs": 2, "keep_checkpoints": 3}, lr_schedule={"milestones": [1]})
    trainer = build_trainer(config, hooks=[watcher])
    trainer.fit()
    assert watcher.seen == [(1, 0, 1), (2, 0, 2)]  # after the epoch's row, the clock at the next epoch
    saved = [load_checkpoint(path)["hooks"]["watcher"]["seen"] for path in trainer.store.checkpoints()]
    assert saved == [watcher.seen[:1], watcher.seen]  # epoch 1's checkpoint, then the final one


def test_sigterm_checkpoints_mid_epoch_and_the_resumed_run_is_bit_identical(tmp_path):
    reference = build_trainer(tiny_config(tmp_path, "reference")).fit()

    config = tiny_config(tmp_path, "interrupted")
    first = build_trainer(config)
    loss_fn = first.loss_fn

    def interrupt_at_step_15(logits, y, x, ls):
        if first.step == 15:
            first._signal = signal.SIGTERM
        return loss_fn(logits, y, x, ls)

    first.loss_fn = interrupt_at_step_15
    with pytest.raises(Interrupted, match="SIGTERM.*--resume") as stop:
        first.fit()
    assert stop.value.checkpoint.name == "epoch0001-step000016.pt"  # mid-epoch: 10 steps per epoch

    resumed = build_trainer(config).fit(resume=True)
    expected, got = weights(reference.model), weights(resumed.model)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert len(read_csv(config.run_dir / "steps.csv")) == 30  # the re-run part is not logged twice


def test_a_run_stopped_at_the_last_step_before_the_ghosts_leave_resumes_to_the_same_removal(tmp_path):
    reference = build_trainer(tiny_config(tmp_path, "reference")).fit()  # the ghosts leave after epoch 2, step 20

    config = tiny_config(tmp_path, "interrupted")
    first = build_trainer(config)
    loss_fn = first.loss_fn

    def interrupt_at_step_20(logits, y, x, ls):
        if first.step == 19:
            first._signal = signal.SIGTERM
        return loss_fn(logits, y, x, ls)

    first.loss_fn = interrupt_at_step_20
    with pytest.raises(Interrupted):
        first.fit()
    resumed = build_trainer(config).fit(resume=True)
    assert resumed.ghosts_removed_at == reference.ghosts_removed_at == (20, 2)
    assert [row["ghosts"] for row in resumed.history] == ["on", "on", "removed"]
    assert [row["ghosts"] for row in read_csv(config.run_dir / "metrics.csv")] == ["on", "on", "removed"]
    expected, got = weights(reference.model), weights(resumed.model)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_resuming_with_a_different_config_lists_the_fields(tmp_path):
    config = tiny_config(tmp_path, train={"epochs": 2}, lr_schedule={"milestones": [1]})
    build_trainer(config).fit()
    changed = tiny_config(tmp_path, train={"epochs": 2}, lr_schedule={"milestones": [1]}, optimizer={"lr": 0.05})
    with pytest.raises(CheckpointError, match=r"optimizer.lr: 0.1 in the checkpoint, 0.05 now"):
        build_trainer(changed).fit(resume=True)


def test_a_truncated_checkpoint_is_skipped_for_the_previous_good_one(tmp_path):
    config = tiny_config(tmp_path, train={"epochs": 3, "checkpoint_every": 1, "keep_checkpoints": 3})
    reference = build_trainer(config).fit()
    trainer = build_trainer(config)
    newest = trainer.store.checkpoints()[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="truncated"):
        resumed = trainer.fit(resume=True)
    expected, got = weights(reference.model), weights(resumed.model)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.slow
def test_bf16_autocast_channels_last_and_torch_compile_survive_de_ghosting(tmp_path, monkeypatch):
    """The GPU settings, exercised on the CPU: bf16 autocast, channels_last, and torch.compile
    (the aot_eager backend: dynamo and AOTAutograd, without a C++ toolchain). After the ghosts
    leave, the compiled wrapper is rebuilt around the plain model."""
    compiled = []
    real_compile = torch.compile

    def compile_aot_eager(module, **kwargs):
        compiled.append(module)
        return real_compile(module, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", compile_aot_eager)
    config = tiny_config(tmp_path, train={"epochs": 2, "amp": "bf16", "channels_last": True, "compile": True},
                         lr_schedule={"milestones": [1]})
    trainer = build_trainer(config)
    assert trainer.amp_dtype == torch.bfloat16
    assert trainer.module.get_submodule("conv1").parametrizations.weight.original.is_contiguous(memory_format=torch.channels_last)
    result = trainer.fit()
    assert len(compiled) == 2 and compiled[-1] is result.model and not ghosts(result.model)
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in result.history)


AUX_NET = '''
from torch import nn


class AuxNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, num_classes)
        self.aux = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.bn(self.conv(self.stem(x).relu())).relu().mean((2, 3))
        if self.training:
            return self.head(x), self.aux(x)
        return self.head(x)


def aux(num_classes=10):
    return AuxNet(num_classes)
'''


@pytest.mark.slow
def test_a_model_with_an_aux_head_in_training_trains_on_both_heads_and_verifies_in_both_modes(tmp_path):
    (tmp_path / "auxnet.py").write_text(AUX_NET)
    runs = {}
    for weight in (0.0, 0.3):
        config = tiny_config(tmp_path, name=f"aux-{weight}", model={"spec": f"{tmp_path / 'auxnet.py'}:aux"},
                             lrsi={"enabled": True, "iterations": 3}, optimizer={"weight_decay": 0.0},
                             train={"aux_loss_weight": weight},
                             recipe={"ghost_skip": {"targets": ["conv", "stem"]}, "soft_activation": {}})
        runs[weight] = pipeline.run(config)
        verification = (config.run_dir / "verify.txt").read_text()
        assert "isomorphic to the original trace in train and in eval mode" in verification
        assert "(c) outputs equal in train mode" in verification
    torch.manual_seed(config.train.seed)
    initial = pipeline.build(config, pipeline.load_data(config)).state_dict()["aux.weight"]
    ignored, trained = (runs[w].model.state_dict()["aux.weight"] for w in (0.0, 0.3))
    kept = ignored != 0
    assert torch.equal(ignored[kept], initial[kept])  # weight 0: the aux head gets no gradient
    assert not torch.equal(trained[kept], initial[kept])
