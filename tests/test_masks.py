"""Masks: parametrization, pruned weights staying exactly zero, files, imports, and bad masks."""

from __future__ import annotations

import pytest
import torch
from conftest import SmallCNN, seeded
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrize, prune

import surgery
from surgery.compiler.masks import (
    MASK_FILE_FORMAT,
    Mask,
    MaskMetadata,
    attach_mask,
    baked_copy,
    dense_weights,
    load_masks,
    masked_parameters,
    masks_from_prune,
    masks_from_zeros,
    prunable_weights,
    save_masks,
)
from surgery.pruning import random_masks

X = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
LABELS = torch.arange(8) % 5


def model_and_masks(sparsity=0.7):
    model = seeded(SmallCNN)
    return model, random_masks(model, sparsity, seed=3)


def stored_and_effective(gm, name):
    module_name, _, attr = name.rpartition(".")
    module = gm.get_submodule(module_name)
    return module.parametrizations[attr].original, getattr(module, attr)


# ------------------------------------------------------------------ attaching


def test_every_prunable_weight_is_masked_by_a_parametrization():
    model, masks = model_and_masks()
    assert set(masks) == {"conv1.weight", "conv2.weight", "fc.weight"}  # conv and linear by default
    ghosted = surgery.compile(model, X, {"masks": masks})
    assert set(masked_parameters(ghosted)) == set(masks)
    for name, mask in masks.items():
        module = ghosted.get_submodule(name.rpartition(".")[0])
        assert parametrize.is_parametrized(module, "weight")
        assert any(isinstance(p, Mask) for p in module.parametrizations.weight)
        stored, effective = stored_and_effective(ghosted, name)
        assert torch.equal(effective, model.get_parameter(name).detach() * mask)
        assert torch.equal(stored == 0, ~mask | (model.get_parameter(name) == 0))
    records = {r.param: r for r in surgery.manifest_of(ghosted).masks}
    assert records["conv2.weight"].shape == (6, 3, 3, 3)
    assert records["conv2.weight"].sparsity == pytest.approx(1 - masks["conv2.weight"].float().mean().item())


def test_masks_do_not_touch_the_users_model():
    model, masks = model_and_masks()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    surgery.compile(model, X, {"masks": masks})
    assert not parametrize.is_parametrized(model.conv1)
    for name, value in before.items():
        assert torch.equal(model.get_parameter(name), value)


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.05),
        lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
        lambda params: torch.optim.AdamW(params, lr=0.05, weight_decay=0.1),
    ],
    ids=["sgd-momentum-wd", "sgd-nesterov", "adamw"],
)
def test_pruned_weights_stay_exactly_zero_through_training(make_optimizer):
    model, masks = model_and_masks()
    ghosted = surgery.compile(model, X, {"ghost_skip": {}, "soft_activation": {}, "masks": masks}).train()
    optimizer = make_optimizer(ghosted.parameters())
    start = {n: stored_and_effective(ghosted, n)[0].detach().clone() for n in masks}
    for _ in range(4):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(ghosted(X), LABELS).backward()
        optimizer.step()
    for name, mask in masks.items():
        stored, effective = stored_and_effective(ghosted, name)
        assert torch.equal(stored[~mask], torch.zeros_like(stored[~mask]))
        assert torch.equal(effective[~mask], torch.zeros_like(effective[~mask]))
        assert not torch.equal(stored[mask], start[name][mask])  # the kept weights did train
    trained = {n: stored_and_effective(ghosted, n)[0].detach().clone() for n in masks}
    clean = surgery.deghost(ghosted)
    for name, mask in masks.items():
        assert torch.equal(clean.get_parameter(name), trained[name])  # baked: w * mask, pruned entries 0


def test_prunable_kinds_are_configurable():
    model = seeded(SmallCNN)
    assert set(prunable_weights(model, ["conv"])) == {"conv1.weight", "conv2.weight"}
    assert set(prunable_weights(model, ["linear"])) == {"fc.weight"}
    assert set(prunable_weights(model, ["all"])) == {"conv1.weight", "conv2.weight", "fc.weight"}
    fc_mask = random_masks(model, 0.5)["fc.weight"]
    with pytest.raises(surgery.MaskError, match=r"'fc.weight' names a parameter that is not prunable with prunable=\['conv'\]"):
        surgery.compile(model, X, {"masks": {"source": {"fc.weight": fc_mask}, "prunable": ["conv"]}})


def test_all_covers_any_matrix_parameter_inside_submodules():
    class Lookup(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.randn(4, 6))

        def forward(self, idx):
            return self.table[idx]

    class Embedded(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = Lookup()
            self.fc = nn.Linear(6, 2)
            self.scale = nn.Parameter(torch.ones(2, 2))  # the root's own: never prunable

        def forward(self, idx):
            return self.fc(self.embed(idx)) @ self.scale

    model = Embedded()
    assert "embed.table" not in prunable_weights(model)
    assert set(prunable_weights(model, ["all"])) == {"embed.table", "fc.weight"}
    mask = torch.rand(4, 6) > 0.5
    ghosted = surgery.compile(
        model, torch.tensor([0, 3]), {"masks": {"source": {"embed.table": mask}, "prunable": ["all"]}}
    )
    assert torch.equal(ghosted.embed.table, model.embed.table.detach() * mask)


def test_ghost_parameters_are_never_prunable():
    ghosted = surgery.compile(seeded(SmallCNN), X, {"ghost_skip": {}})
    assert not any(n.startswith("_ghosts") for n in prunable_weights(ghosted, ["all"]))
    with pytest.raises(surgery.MaskError, match="_ghosts.skip.conv2.projection.conv.weight"):
        surgery.compile(
            seeded(SmallCNN),
            X,
            {"ghost_skip": {}, "masks": {"_ghosts.skip.conv2.projection.conv.weight": torch.ones(6, 3, 1, 1)}},
        )


# ------------------------------------------------------------------- files


def test_mask_file_round_trip_with_metadata(tmp_path):
    model, masks = model_and_masks(0.9)
    path = save_masks(masks, tmp_path / "m.safetensors", method="random", seed=3, model="SmallCNN")
    loaded, metadata = load_masks(path)
    assert set(loaded) == set(masks) and all(torch.equal(loaded[n], masks[n]) for n in masks)
    assert all(t.dtype == torch.bool for t in loaded.values())
    assert metadata["method"] == "random" and metadata["model"] == "SmallCNN" and metadata["seed"] == "3"
    assert float(metadata["sparsity"]) == pytest.approx(0.9, abs=0.01)
    ghosted = surgery.compile(model, X, {"masks": str(path)})
    assert all(torch.equal(masked_parameters(ghosted)[n], masks[n]) for n in masks)


def test_mask_file_metadata_is_one_typed_record_written_as_strings(tmp_path):
    model, masks = model_and_masks(0.5)
    given = MaskMetadata(method="imp", model="cifar:resnet20", seed=3, target_sparsity=0.5, options={"rounds": 2},
                         round=2, trained=True, dense={"fc.weight": [5, 6]}, extra={"asni.centroids": "{}"})
    path = save_masks(masks, tmp_path / "m.safetensors", given)
    stored = load_masks(path)[1]
    assert stored["seed"] == "3" and stored["options"] == '{"rounds": 2}' and stored["asni.centroids"] == "{}"
    read = MaskMetadata.read(stored, path)
    assert read.format == MASK_FILE_FORMAT and read.version == surgery.__version__
    assert read.sparsity == pytest.approx(0.5, abs=0.01)
    assert read == MaskMetadata(**{**vars(given), "sparsity": read.sparsity, "format": read.format,
                                   "version": read.version})
    keywords = save_masks(masks, tmp_path / "k.safetensors", method="imp", model="cifar:resnet20", seed=3,
                          target_sparsity=0.5, options={"rounds": 2}, round=2, trained=True,
                          dense={"fc.weight": [5, 6]}, **{"asni.centroids": "{}"})
    assert load_masks(keywords)[1] == stored  # the keywords are the record's fields


def test_mask_file_metadata_of_older_files_still_reads(tmp_path):
    masks = model_and_masks(0.5)[1]
    save_file({n: m.contiguous() for n, m in masks.items()}, str(tmp_path / "old.safetensors"),
              metadata={"method": "random", "seed": "0", "target_sparsity": "null", "sparsity": "0.5"})
    read = MaskMetadata.read(load_masks(tmp_path / "old.safetensors")[1])
    assert (read.method, read.seed, read.target_sparsity, read.sparsity, read.format) == ("random", 0, None, 0.5, None)


def test_mask_file_metadata_that_does_not_decode_is_a_mask_error_naming_file_and_field(tmp_path):
    model, masks = model_and_masks(0.5)
    with pytest.raises(surgery.MaskError, match=r"unwritable.safetensors' has unreadable 'seed' metadata 'three' "
                                                r"\(not int\); write the file with save_masks\(masks, path, seed=...\)"):
        save_masks(masks, tmp_path / "unwritable.safetensors", seed="three")
    assert not (tmp_path / "unwritable.safetensors").exists()
    save_file({n: m.contiguous() for n, m in masks.items()}, str(tmp_path / "bad.safetensors"),
              metadata={"dense": "[1, 2]"})
    with pytest.raises(surgery.MaskError, match=r"bad.safetensors' has unreadable 'dense' metadata '\[1, 2\]' "
                                                r"\(not dict\).*dense=dense_weights\(model, masks\)"):
        load_masks(tmp_path / "bad.safetensors", model=model)


def test_a_mask_file_must_cover_every_prunable_weight_unless_partial(tmp_path):
    model, masks = model_and_masks(0.5)
    del masks["conv2.weight"], masks["fc.weight"]
    path = save_masks(masks, tmp_path / "part.safetensors")
    with pytest.raises(surgery.MaskError, match=r"(?s)2 of the model's 3 prunable weights have no mask: conv2.weight, "
                                                r"fc.weight.*pass --partial-masks \(Python: partial=True\)"):
        load_masks(path, model=model)
    with pytest.raises(surgery.MaskError, match="have no mask"):
        surgery.compile(model, X, {"masks": str(path)})
    assert set(load_masks(path, model=model, partial=True)[0]) == {"conv1.weight"}
    ghosted = surgery.compile(model, X, {"masks": {"source": str(path), "partial": True}})
    assert set(masked_parameters(ghosted)) == {"conv1.weight"}


def test_weights_a_mask_file_leaves_dense_on_purpose_are_covered(tmp_path):
    model, masks = model_and_masks(0.5)
    del masks["fc.weight"]
    assert dense_weights(model, masks) == {"fc.weight": [5, 6]}
    path = save_masks(masks, tmp_path / "dense-last.safetensors", dense=dense_weights(model, masks))
    assert set(load_masks(path, model=model)[0]) == {"conv1.weight", "conv2.weight"}


def test_a_mask_file_made_for_another_model_spec_warns_naming_both(tmp_path):
    model, masks = model_and_masks(0.5)
    path = save_masks(masks, tmp_path / "m.safetensors", model="cifar:resnet20")
    with pytest.warns(UserWarning, match="made for cifar:resnet20, not for cifar:resnet32"):
        load_masks(path, model=model, spec="cifar:resnet32")


def test_missing_or_unreadable_mask_files_name_the_file(tmp_path):
    model = seeded(SmallCNN)
    with pytest.raises(surgery.MaskError, match="nope.safetensors' does not exist"):
        surgery.compile(model, X, {"masks": str(tmp_path / "nope.safetensors")})
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(surgery.MaskError, match="garbage.safetensors' is not a readable"):
        surgery.compile(model, X, {"masks": str(garbage)})
    with pytest.raises(surgery.MaskError, match=r"masks.npz' is neither \.safetensors"):
        surgery.compile(model, X, {"masks": str(tmp_path / "masks.npz")})


# ----------------------------------------------------------------- imports


def test_masks_from_a_state_dict_whose_zeros_mark_pruned_weights(tmp_path):
    model = seeded(SmallCNN)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["conv2.weight"][:, :2] = 0
    state["fc.weight"][0] = 0
    torch.save(state, tmp_path / "pruned.pt")
    ghosted = surgery.compile(model, X, {"masks": str(tmp_path / "pruned.pt")})
    masks = masked_parameters(ghosted)
    assert set(masks) == {"conv2.weight", "fc.weight"}  # conv1 has no zero: stays dense
    assert torch.equal(masks["conv2.weight"], state["conv2.weight"] != 0)
    assert torch.equal(masks["fc.weight"], state["fc.weight"] != 0)


def test_a_state_dict_that_prunes_nothing_is_an_error_naming_the_file(tmp_path):
    model = seeded(SmallCNN)
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "checkpoint.pt")
    with pytest.raises(surgery.MaskError, match=r"checkpoint.pt' names none of the model's prunable weights .*\['model', 'epoch'\]"):
        surgery.compile(model, X, {"masks": str(tmp_path / "checkpoint.pt")})
    torch.save(model.state_dict(), tmp_path / "dense.pt")
    with pytest.raises(surgery.MaskError, match="dense.pt' has no zero in its 3 prunable weights"):
        surgery.compile(model, X, {"masks": str(tmp_path / "dense.pt")})
    with pytest.raises(surgery.MaskError, match="from_zeros found no exact zero"):
        surgery.compile(model, X, {"masks": "from_zeros"})


def test_masks_from_the_models_own_zeros():
    model = seeded(SmallCNN)
    with torch.no_grad():
        model.fc.weight[:, :3] = 0
    assert set(masks_from_zeros(model)) == {"fc.weight"}
    ghosted = surgery.compile(model, X, {"masks": "from_zeros"})
    assert torch.equal(masked_parameters(ghosted)["fc.weight"], model.fc.weight != 0)


def pruned_small_cnn():
    model = seeded(SmallCNN)
    prune.l1_unstructured(model.conv2, "weight", amount=0.5)
    prune.random_unstructured(model.fc, "weight", amount=0.3)
    return model


def test_masks_from_prune_reads_weight_mask_buffers():
    model = pruned_small_cnn()
    masks = masks_from_prune(model)
    assert set(masks) == {"conv2.weight", "fc.weight"}
    assert torch.equal(masks["conv2.weight"], model.conv2.weight_mask.bool())


def test_compile_imports_torch_prune_masks_after_no_grad_pruning():
    with torch.no_grad():
        model = pruned_small_cnn()
    expected = {n: m.clone() for n, m in masks_from_prune(model).items()}
    ghosted = surgery.compile(model, X, {"masks": "from_prune"})
    assert {n: torch.equal(m, expected[n]) for n, m in masked_parameters(ghosted).items()} == {n: True for n in expected}
    clean = surgery.deghost(ghosted)
    assert set(clean.state_dict()) == set(seeded(SmallCNN).state_dict())  # weight_orig / weight_mask are gone
    assert hasattr(model.conv2, "weight_orig")  # the user's model keeps its pruning


def test_compile_imports_torch_prune_masks_from_a_normally_pruned_model():
    model = pruned_small_cnn()  # pruned the usual way, with autograd on
    ghosted = surgery.compile(model, X, {"masks": "from_prune"})
    assert set(masked_parameters(ghosted)) == {"conv2.weight", "fc.weight"}


def test_from_prune_on_a_model_without_pruning_says_so():
    with pytest.raises(surgery.MaskError, match="from_prune found no torch.nn.utils.prune masks"):
        surgery.compile(seeded(SmallCNN), X, {"masks": "from_prune"})


def test_random_masks_prune_exactly_the_requested_fraction_deterministically():
    model = seeded(SmallCNN)
    masks = random_masks(model, 0.75, seed=7)
    for name, mask in masks.items():
        assert int((~mask).sum()) == round(0.75 * mask.numel()), name
    assert all(torch.equal(masks[n], random_masks(model, 0.75, seed=7)[n]) for n in masks)
    assert not all(torch.equal(masks[n], random_masks(model, 0.75, seed=8)[n]) for n in masks)


# --------------------------------------------------------------- bad masks


def test_mask_for_an_unknown_parameter_names_it_and_suggests_the_right_one():
    model, masks = model_and_masks()
    with pytest.raises(surgery.MaskError) as caught:
        surgery.compile(model, X, {"masks": {"conv2.wieght": masks["conv2.weight"]}})
    message = str(caught.value)
    assert "'conv2.wieght' matches no parameter" in message and "Did you mean 'conv2.weight'" in message


def test_mask_with_the_wrong_shape_names_both_shapes():
    model, _ = model_and_masks()
    with pytest.raises(surgery.MaskError) as caught:
        surgery.compile(model, X, {"masks": {"conv2.weight": torch.ones(6, 3, 3)}})
    message = str(caught.value)
    assert "'conv2.weight'" in message and "(6, 3, 3)" in message and "(6, 3, 3, 3)" in message


@pytest.mark.parametrize("bad", [0.5, 2.0, -1.0, float("nan")])
def test_mask_with_non_binary_values_is_refused(bad):
    model, masks = model_and_masks()
    values = masks["fc.weight"].float()
    values[0, 0] = bad
    with pytest.raises(surgery.MaskError, match="'fc.weight' holds values other than 0 and 1"):
        surgery.compile(model, X, {"masks": {"fc.weight": values}})


def test_binary_masks_of_any_dtype_are_accepted():
    model, masks = model_and_masks()
    as_float = {n: m.float() for n, m in masks.items()}
    as_int = {n: m.to(torch.uint8) for n, m in masks.items()}
    for given in (as_float, as_int):
        ghosted = surgery.compile(model, X, {"masks": given})
        assert all(torch.equal(masked_parameters(ghosted)[n], masks[n]) for n in masks)


def test_mask_on_a_non_prunable_parameter_says_how_to_widen_prunable():
    model, _ = model_and_masks()
    with pytest.raises(surgery.MaskError, match=r"'bn1.weight' names a parameter that is not prunable.*\[all\]"):
        surgery.compile(model, X, {"masks": {"bn1.weight": torch.ones(3)}})


class ThreeParams(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.randn(3, 3))
        self.b = nn.Parameter(torch.randn(3))
        self.c = nn.Parameter(torch.randn(3, 3))

    def forward(self, x):
        return x @ self.a @ self.c + self.b


def test_baking_keeps_each_modules_parameter_order():
    model = nn.Sequential(ThreeParams())
    masks = {"0.a": torch.rand(3, 3) > 0.5, "0.c": torch.rand(3, 3) > 0.5}
    ghosted = surgery.compile(model, torch.randn(2, 3), {"masks": {"source": masks, "prunable": ["all"]}})
    clean = surgery.deghost(ghosted)
    assert list(clean.state_dict()) == ["0.a", "0.b", "0.c"]
    assert torch.equal(clean.get_parameter("0.c"), model[0].c.detach() * masks["0.c"])


def test_root_level_parameters_are_refused_with_a_clear_error():
    # parametrizing the GraphModule root itself would break its recompiled forward
    masks = {"a": torch.rand(3, 3) > 0.5}
    with pytest.raises(surgery.MaskError, match=r"mask 'a' names a parameter of the model's top-level module"):
        surgery.compile(ThreeParams(), torch.randn(2, 3), {"masks": {"source": masks, "prunable": ["all"]}})
    assert "a" not in prunable_weights(surgery.trace(ThreeParams()), ["all"])

def test_a_baked_copy_zeroes_the_pruned_weights_and_leaves_the_model_masked():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)).to(memory_format=torch.channels_last)
    masks = random_masks(model, 0.5, seed=0)
    for name, mask in masks.items():
        attach_mask(model, name, mask)
    second = torch.rand(8, 8, 3, 3) > 0.5  # a weight under two masks: both apply
    attach_mask(model, "1.weight", second)
    stored = {name: model.get_submodule(name.rpartition(".")[0]).parametrizations.weight.original.clone()
              for name in masks}

    copied = baked_copy(model)

    assert not masked_parameters(copied) and set(masked_parameters(model)) == set(masks)
    expected = {"0.weight": stored["0.weight"] * masks["0.weight"],
                "1.weight": stored["1.weight"] * masks["1.weight"] * second}
    for name, weight in expected.items():
        baked = copied.get_parameter(name)
        assert torch.equal(baked, weight)
        assert baked.stride() == model.get_submodule(name.rpartition(".")[0]).parametrizations.weight.original.stride()
        assert torch.equal(model.get_submodule(name.rpartition(".")[0]).parametrizations.weight.original, stored[name])
