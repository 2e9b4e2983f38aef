"""RunConfig: YAML in, validation with named fields, overrides, resume differences."""

from __future__ import annotations

from pathlib import Path

import pytest

from surgery.compiler.recipe import Recipe
from surgery.errors import ConfigError, RecipeError
from surgery.train.config import RunConfig, config_differences


def test_defaults_are_tosts():
    c = RunConfig()
    assert (c.optimizer.name, c.optimizer.lr, c.optimizer.momentum, c.optimizer.weight_decay) == ("sgd", 0.1, 0.9, 2e-4)
    assert (c.data.batch_size, c.train.epochs, c.lr_plan().milestones, c.lr_schedule.gamma) == (128, 180, (90, 135), 0.1)
    assert c.ghost_plan().removal_epoch(c.lr_plan(), c.train.epochs) == 90


def test_yaml_round_trip_with_relative_paths(tmp_path):
    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "run.yaml"
    path.write_text(
        "name: r\nrecipe: tost\nmask: {file: masks/m.safetensors}\noptimizer: {weight_decay: 5e-4}\n"
        "train: {epochs: 10}\nlr_schedule: {milestones: [5, 8]}\n"
    )
    c = RunConfig.from_yaml(path)
    assert c.optimizer.weight_decay == 5e-4  # YAML reads 5e-4 as text; the config makes it a float
    assert c.mask.file == str(tmp_path / "configs" / "masks" / "m.safetensors")
    again = RunConfig.from_dict(c.to_dict())
    assert again == c
    assert c.recipe == {"ghost_skip": {"projection": "conv1x1"}, "soft_activation": {"kind": "pswish"}}


def test_a_config_file_must_say_which_recipe_trains(tmp_path):
    path = tmp_path / "gmp.yaml"
    path.write_text("name: gmp-baseline\nmask: {method: gmp, sparsity: 0.9}\n")
    with pytest.raises(ConfigError, match=r"does not say which recipe trains: add 'recipe: tost'.*'recipe: none'"):
        RunConfig.from_yaml(path)
    path.write_text("name: gmp-baseline\nmask: {method: gmp, sparsity: 0.9}\nrecipe: none\n")
    assert RunConfig.from_yaml(path).recipe_object().passes == []


def test_recipe_by_name_or_file(tmp_path):
    (tmp_path / "skips.yaml").write_text("ghost_skip: {projection: parameter_free, targets: [conv, stem]}\n")
    config = tmp_path / "run.yaml"
    config.write_text("recipe: skips.yaml\n")
    assert RunConfig.from_yaml(config).recipe["ghost_skip"]["targets"] == ["conv", "stem"]
    assert RunConfig.from_dict({"recipe": "none"}).recipe == {}
    assert [n for n, _ in RunConfig.from_dict({"recipe": "tost"}).recipe_object().passes] == ["ghost_skip", "soft_activation"]
    with pytest.raises(ConfigError, match=r"unknown recipe preset 'tots'.*Did you mean 'tost'"):
        RunConfig.from_dict({"recipe": "tots"})


def test_a_run_config_reads_a_recipe_value_as_compile_does(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "skips").write_text("ghost_skip: {projection: parameter_free}\n")  # a path, any suffix
    for value in ("tost", "none", {"soft_activation": {"kind": "mish"}}, str(tmp_path / "recipes" / "skips")):
        assert RunConfig.from_dict({"recipe": value}).recipe_object().passes == Recipe.coerce(value).passes
    with pytest.raises(RecipeError, match=r"recipe 5 is not a recipe; give one of \['tost'"):
        Recipe.coerce(5)
    with pytest.raises(ConfigError, match=r"recipe 5 is not a recipe; give one of \['tost'"):
        RunConfig.from_dict({"recipe": 5})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"optimiser": {}}, "no field 'optimiser'.*optimizer"),
        ({"lrsi": {"enabled": True, "iterations": 0}}, r"lrsi option lrsi.iterations=0 is out of range"),
        ({"lrsi": {"enabled": True, "scale_lr": -1}}, r"lrsi.scale_lr=-1"),
        ({"lrsi": {"enabled": True, "eta": 0}}, r"lrsi.eta=0"),
        ({"lrsi": {"batches": 4}}, r"section 'lrsi' has no field 'batches'"),
        ({"train": {"select": "best"}}, r"unknown train.select 'best'.*best_val"),
        ({"train": {"select": "best_val"}}, r"no validation split: set data.val_split"),
        ({"optimizer": {"name": "sgdd"}}, "unknown optimizer 'sgdd'.*sgd"),
        ({"optimizer": {"lr": "fast"}}, "optimizer.lr"),
        ({"lr_schedule": {"kind": "poly"}}, "unknown learning-rate schedule 'poly'"),
        ({"ghosts": {"alpha": {"kind": "exp"}}}, "unknown schedule kind 'exp'"),
        ({"ghosts": {"remove_at": 500}}, "after the run ends"),
        ({"ghosts": {"beta": {"start": 1, "end": -2}}}, "ghosts.beta runs from 1 to -2; it must stay >= 0"),
        ({"train": {"epochs": 0}}, "at least 1 epoch"),
        ({"train": {"amp": "fp8"}}, "unknown train.amp"),
        ({"mask": {"sparsity": 1.0}}, "outside \\[0, 1\\)"),
        ({"label_smoothing": {"start": 1.2}}, "outside \\[0, 1\\)"),
        ({"data": []}, "must be a mapping"),
        ({"data": {"subset": -5}}, r"subset=-5 is not a positive integer"),
    ],
)
def test_bad_configs_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict(data)


@pytest.mark.parametrize(("epochs", "milestones"), [(1, ()), (2, (1,)), (3, (1, 2)), (10, (5, 7)), (180, (90, 135))])
def test_milestones_left_out_follow_the_epochs(epochs, milestones):
    assert RunConfig().with_overrides([f"train.epochs={epochs}"]).lr_plan().milestones == milestones


def test_every_problem_of_a_config_in_one_message():
    data = {"trian": {"epochs": 3}, "optimizer": {"nme": "sgd"}, "train": {"epoch": 3}, "mask": {"methd": "snip"}}
    with pytest.raises(ConfigError, match="the config has 4 problems") as error:
        RunConfig.from_dict(data)
    text = str(error.value)
    for hint in ("'trian'. Did you mean 'train'", "'nme'. Did you mean 'name'", "'epoch'. Did you mean 'epochs'",
                 "'methd'. Did you mean 'method'"):
        assert hint in text


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=three", "train.epochs must be an integer, got 'three'"),
        ("train.epochs=2.5", "train.epochs must be an integer, got 2.5"),
        ("optimizer.lr=fast", "optimizer.lr must be a number, got 'fast'"),
        ("train.compile=maybe", "train.compile must be true or false, got 'maybe'"),
        ("mask.prunable=conv", "mask.prunable must be a list, got 'conv'"),
        ("mask.options=3", "mask.options must be a mapping, got 3"),
    ],
)
def test_type_errors_name_the_type_expected(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        RunConfig().with_overrides([override])


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


def test_a_config_made_absolute_names_the_same_files_from_anywhere(tmp_path, monkeypatch):
    from surgery.train.record import config_hash

    monkeypatch.chdir(tmp_path)
    config = RunConfig.from_dict({"output": "runs/{name}", "data": {"dataset": "imagefolder:data/pets", "root": "cache"},
                                  "mask": {"file": "m.safetensors"}, "model": {"weights": "~/w.pt"}})
    absolute = config.absolute()
    assert absolute.run_dir == tmp_path / "runs" / "run"
    assert absolute.data.dataset == f"imagefolder:{tmp_path / 'data/pets'}" and absolute.data.root == str(tmp_path / "cache")
    assert absolute.mask.file == str(tmp_path / "m.safetensors") and not absolute.model.weights.startswith("~")
    assert config_hash(absolute) == config_hash(config)  # a relative path hashes as the file it names


def test_a_runs_own_config_yaml_acts_on_its_directory_and_no_other_file_does(tmp_path):
    run_dir = tmp_path / "copied"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(RunConfig.from_dict({"output": "/elsewhere/{name}"}).to_yaml())
    (run_dir / "other.yaml").write_text((run_dir / "config.yaml").read_text())
    assert RunConfig.from_yaml(run_dir / "config.yaml").run_dir == Path("/elsewhere/run")  # no record: not a run yet
    (run_dir / "result.json").write_text("{}")
    assert RunConfig.from_yaml(run_dir / "config.yaml").run_dir == run_dir
    assert RunConfig.from_yaml(run_dir / "other.yaml").run_dir == Path("/elsewhere/run")


def test_a_python_class_in_a_run_configs_recipe_is_refused_by_name_as_config_yaml_cannot_hold_it():
    from torch import nn

    with pytest.raises(ConfigError, match=r"recipe.soft_activation.kind is <class 'torch.nn.modules.activation.SiLU'>.*"
                                          r"soft_activation.kind: pswish"):
        RunConfig.from_dict({"recipe": {"soft_activation": {"kind": nn.SiLU}}})
    assert RunConfig.from_dict({"recipe": {"soft_activation": {"kind": "swish"}}}).to_yaml()
