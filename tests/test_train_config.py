"""RunConfig: YAML in, validation with named fields, overrides, resume differences."""

from __future__ import annotations

import pytest

from surgery.errors import ConfigError
from surgery.train.config import RunConfig, config_differences


def test_defaults_are_tosts():
    c = RunConfig()
    assert (c.optimizer.name, c.optimizer.lr, c.optimizer.momentum, c.optimizer.weight_decay) == ("sgd", 0.1, 0.9, 2e-4)
    assert (c.data.batch_size, c.train.epochs, c.lr_schedule.milestones, c.lr_schedule.gamma) == (128, 180, [90, 135], 0.1)
    assert c.ghost_plan().removal_epoch(c.lr_plan(), c.train.epochs) == 90


def test_yaml_round_trip_with_relative_paths(tmp_path):
    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "run.yaml"
    path.write_text(
        "name: r\nmask: {file: masks/m.safetensors}\noptimizer: {weight_decay: 5e-4}\n"
        "train: {epochs: 10}\nlr_schedule: {milestones: [5, 8]}\n"
    )
    c = RunConfig.from_yaml(path)
    assert c.optimizer.weight_decay == 5e-4  # YAML reads 5e-4 as text; the config makes it a float
    assert c.mask.file == str(tmp_path / "configs" / "masks" / "m.safetensors")
    again = RunConfig.from_dict(c.to_dict())
    assert again == c


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"optimiser": {}}, "no field 'optimiser'.*optimizer"),
        ({"optimizer": {"name": "sgdd"}}, "unknown optimizer 'sgdd'.*sgd"),
        ({"optimizer": {"lr": "fast"}}, "optimizer.lr"),
        ({"lr_schedule": {"kind": "poly"}}, "unknown learning-rate schedule 'poly'"),
        ({"ghosts": {"alpha": {"kind": "exp"}}}, "unknown schedule kind 'exp'"),
        ({"ghosts": {"remove_at": 500}}, "after the run ends"),
        ({"train": {"epochs": 0}}, "at least 1 epoch"),
        ({"train": {"amp": "fp8"}}, "unknown train.amp"),
        ({"mask": {"sparsity": 1.0}}, "outside \\[0, 1\\)"),
        ({"label_smoothing": {"start": 1.2}}, "outside \\[0, 1\\)"),
        ({"data": []}, "must be a mapping"),
    ],
)
def test_bad_configs_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict(data)


def test_overrides():
    c = RunConfig().with_overrides(["train.epochs=4", "lr_schedule.milestones=[2, 3]", "recipe.ghost_skip={projection: none}"])
    assert c.train.epochs == 4 and c.lr_schedule.milestones == [2, 3]
    assert c.recipe["ghost_skip"] == {"projection": "none"}
    with pytest.raises(ConfigError, match="no field 'epoch'.*epochs"):
        RunConfig().with_overrides(["train.epoch=4"])
    with pytest.raises(ConfigError, match="section.field=value"):
        RunConfig().with_overrides(["train.epochs"])


def test_resume_differences_list_what_matters():
    a = RunConfig().to_dict()
    b = RunConfig().with_overrides(["optimizer.lr=0.05", "train.log_every=3", "output=elsewhere"]).to_dict()
    assert config_differences(a, b) == ["optimizer.lr: 0.1 in the checkpoint, 0.05 now"]
