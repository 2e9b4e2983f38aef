"""Recipe: passes and options from Python, dicts and YAML; every bad name or value is a RecipeError."""

from __future__ import annotations

import textwrap

import pytest
import torch
from conftest import SmallCNN, seeded

import surgery
from surgery.compiler.masks import masked_parameters, save_masks
from surgery.compiler.passes import GhostSkipOptions, MaskOptions, SoftActivationOptions
from surgery.pruning import random_masks


def test_sections_keep_their_order_and_become_typed_options():
    recipe = surgery.Recipe(soft_activation={"kind": "mish"}, ghost_skip={"projection": "parameter_free"})
    assert [name for name, _ in recipe.passes] == ["soft_activation", "ghost_skip"]
    assert recipe.options("ghost_skip") == GhostSkipOptions(projection="parameter_free")
    assert recipe.options("soft_activation") == SoftActivationOptions(kind="mish")
    assert recipe.options("masks") is None


@pytest.mark.parametrize("off", [None, False])
def test_a_section_set_off_is_skipped(off):
    recipe = surgery.Recipe.from_dict({"ghost_skip": off, "soft_activation": True})
    assert recipe.passes == [("soft_activation", SoftActivationOptions())]


def test_options_lists_become_tuples_and_a_single_name_a_list_of_one():
    options = surgery.Recipe(ghost_skip={"targets": "linear", "exclude": ["fc*"]}).options("ghost_skip")
    assert options.targets == ("linear",) and options.exclude == ("fc*",)
    assert surgery.Recipe(ghost_skip={"targets": ["conv", "linear"]}).options("ghost_skip").targets == ("conv", "linear")


def test_masks_section_accepts_masks_a_path_or_options(tmp_path):
    masks = random_masks(seeded(SmallCNN), 0.5)
    assert surgery.Recipe(masks=masks).options("masks").source is masks
    assert surgery.Recipe(masks="m.safetensors").options("masks") == MaskOptions(source="m.safetensors")
    options = surgery.Recipe(masks={"source": "from_zeros", "prunable": ["conv"]}).options("masks")
    assert options == MaskOptions(source="from_zeros", prunable=("conv",))


def test_yaml_recipe_with_a_mask_path_relative_to_the_file(tmp_path):
    model = seeded(SmallCNN)
    masks = random_masks(model, 0.8)
    (tmp_path / "masks").mkdir()
    save_masks(masks, tmp_path / "masks" / "m.safetensors")
    path = tmp_path / "recipe.yaml"
    path.write_text(
        textwrap.dedent(
            """
            soft_activation: {kind: pswish, beta: 2.0}
            ghost_skip:      {projection: conv1x1}
            masks:           masks/m.safetensors
            trace:           {leaf_modules: [fc]}
            """
        )
    )
    recipe = surgery.Recipe.from_yaml(path)
    assert [name for name, _ in recipe.passes] == ["soft_activation", "ghost_skip", "masks"]
    assert recipe.options("masks").source == str(tmp_path / "masks" / "m.safetensors")
    assert recipe.leaf_modules == ("fc",)
    ghosted = surgery.compile(model, torch.randn(2, 3, 8, 8), str(path))  # a path works as the recipe too
    assert set(masked_parameters(ghosted)) == set(masks)
    assert surgery.manifest_of(ghosted).passes == ["soft_activation", "ghost_skip", "masks"]


def test_to_dict_is_yaml_friendly_and_counts_python_masks():
    masks = random_masks(seeded(SmallCNN), 0.5)
    data = surgery.Recipe(ghost_skip={}, masks=masks, trace={"leaf_modules": ["fc"]}).to_dict()
    assert data["ghost_skip"] == {"projection": "conv1x1", "targets": ["conv"], "alpha": 1.0, "exclude": [], "identity": True,
                                  "fill": None}
    assert data["masks"]["source"] == "<3 masks given in Python>"
    assert data["trace"] == {"leaf_modules": ["fc"]}


def test_coerce_accepts_a_recipe_a_dict_a_path_and_none():
    recipe = surgery.Recipe(ghost_skip={})
    assert surgery.Recipe.coerce(recipe) is recipe
    assert surgery.Recipe.coerce({"ghost_skip": {}}).passes == recipe.passes
    assert surgery.Recipe.coerce(None).passes == []


# ------------------------------------------------------------------ bad input


def test_unknown_pass_is_named_with_a_suggestion():
    with pytest.raises(surgery.RecipeError) as caught:
        surgery.Recipe.from_dict({"ghost_skp": {}})
    message = str(caught.value)
    assert "unknown pass 'ghost_skp'" in message and "Did you mean 'ghost_skip'" in message
    assert "soft_activation" in message  # the known passes are listed


@pytest.mark.parametrize(
    ("section", "options", "named"),
    [
        ("ghost_skip", {"projecton": "conv1x1"}, "ghost_skip has no option 'projecton'. Did you mean 'projection'"),
        ("soft_activation", {"knd": "mish"}, "soft_activation has no option 'knd'"),
        ("masks", {"source": "m.safetensors", "prunabel": ["conv"]}, "masks has no option 'prunabel'"),
        ("trace", {"leaves": ["fc"]}, "trace has no option 'leaves'"),
    ],
)
def test_unknown_option_names_pass_and_option(section, options, named):
    with pytest.raises(surgery.RecipeError, match=named):
        surgery.Recipe.from_dict({section: options})


@pytest.mark.parametrize(
    ("section", "options", "named"),
    [
        ("ghost_skip", {"projection": "conv3x3"}, r"ghost_skip.projection = 'conv3x3' is not one of \['conv1x1', 'parameter_free', 'none'\]"),
        ("ghost_skip", {"targets": ["conv", "attention"]}, r"ghost_skip.targets = 'attention' is not one of"),
        ("ghost_skip", {"targets": []}, r"ghost_skip.targets is empty"),
        ("ghost_skip", {"alpha": "high"}, r"ghost_skip.alpha = 'high' must be a number"),
        ("ghost_skip", {"alpha": True}, r"ghost_skip.alpha = True must be a number"),
        ("soft_activation", {"kind": "pswsh"}, r"soft_activation.kind = 'pswsh' is not one of .* Did you mean 'pswish'"),
        ("soft_activation", {"beta": -1}, r"soft_activation.beta = -1 must be >= 0"),
        ("soft_activation", {"kind": "mish", "beta": 2.0}, r"soft_activation.beta applies to kind 'pswish' only"),
        ("soft_activation", {"targets": ["relu", "tanhh"]}, r"soft_activation.targets = 'tanhh' is not one of"),
        ("masks", {"prunable": ["conv"]}, r"masks needs a source"),
        ("masks", {"source": "from_zeros", "prunable": ["convs"]}, r"masks.prunable = 'convs' is not one of .* Did you mean 'conv'"),
        ("ghost_skip", "conv1x1", r"recipe section 'ghost_skip' must be a mapping of options, not 'conv1x1'"),
        ("trace", ["fc"], r"recipe section 'trace' must be a mapping"),
    ],
)
def test_bad_option_values_name_the_option_and_the_choices(section, options, named):
    with pytest.raises(surgery.RecipeError, match=named):
        surgery.Recipe.from_dict({section: options})


@pytest.mark.parametrize(
    ("section", "options", "named"),
    [
        ("ghost_skip", {"targets": 5}, r"ghost_skip.targets = 5 must be a name or a list of names"),
        ("masks", {"source": "from_zeros", "prunable": 3}, r"masks.prunable = 3 must be a name or a list of names"),
        ("ghost_skip", {"exclude": 5}, r"ghost_skip.exclude = 5 must be a pattern or a list of patterns"),
        ("soft_activation", {"exclude": ["relu", 7]}, r"soft_activation.exclude = \['relu', 7\] must be a pattern"),
        ("ghost_skip", {"alpha": float("nan")}, r"ghost_skip.alpha = nan must be a finite number"),
        ("soft_activation", {"beta": float("inf")}, r"soft_activation.beta = inf must be a finite number"),
    ],
)
def test_values_of_the_wrong_kind_are_recipe_errors_not_crashes(section, options, named):
    with pytest.raises(surgery.RecipeError, match=named):
        surgery.Recipe.from_dict({section: options})


@pytest.mark.parametrize("section", ["ghost_skip", "soft_activation"])
def test_a_single_exclude_pattern_is_a_list_of_one(section):
    assert surgery.Recipe.from_dict({section: {"exclude": "layer4.*"}}).options(section).exclude == ("layer4.*",)


def test_a_recipe_that_is_not_a_mapping_is_refused():
    with pytest.raises(surgery.RecipeError, match="not list"):
        surgery.Recipe.from_dict(["ghost_skip"])


def test_yaml_problems_name_the_file(tmp_path):
    with pytest.raises(surgery.RecipeError, match="missing.yaml' does not exist"):
        surgery.Recipe.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ghost_skip: {projection: [unclosed\n")
    with pytest.raises(surgery.RecipeError, match="bad.yaml' is not valid YAML"):
        surgery.Recipe.from_yaml(bad)


def test_a_mask_source_of_the_wrong_type_is_refused():
    with pytest.raises(surgery.RecipeError, match="masks.source of type int"):
        surgery.compile(seeded(SmallCNN), torch.randn(2, 3, 8, 8), {"masks": {"source": 42}})


def test_recipe_errors_are_surgery_errors():
    assert issubclass(surgery.RecipeError, surgery.SurgeryError)
    with pytest.raises(surgery.SurgeryError):
        surgery.Recipe(ghost_skip={"projection": "bad"})


def test_replace_adds_a_pass_last_keeps_an_existing_one_in_place_and_removes_with_none(tmp_path):
    recipe = surgery.Recipe(soft_activation={"kind": "mish"}, ghost_skip={}, trace={"leaf_modules": ["Block"]})
    masks = {"conv1.weight": torch.ones(3, 3, 3, 3, dtype=torch.bool)}
    updated = recipe.replace(masks=masks, soft_activation={"kind": "swish"})
    assert [name for name, _ in updated.passes] == ["soft_activation", "ghost_skip", "masks"]
    assert updated.options("soft_activation").kind == "swish"
    assert updated.options("masks").source is masks  # the tensors themselves, not a description
    assert updated.leaf_modules == ("Block",)
    assert [name for name, _ in recipe.passes] == ["soft_activation", "ghost_skip"]  # the original is unchanged
    assert [name for name, _ in updated.replace(ghost_skip=None).passes] == ["soft_activation", "masks"]
