"""No mask finder empties a network silently (issue 20).

Norm layers that start at gamma = 0 (timm's ``zero_init_last``, torchvision's
``zero_init_residual``) are scored as if at 1, as the papers' networks start: the masks equal
those of the same network built with gamma = 1, and the weights come back bit for bit. A mask
that keeps no weight of a layer, or cuts every path from input to output, is refused unless
``allow_empty_layers``; that flag is refused where the method cannot empty a layer.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import timm
import torch
import torchvision
from torch import nn

from surgery.apps.cli import build_parser, flag_fields, main
from surgery.errors import ConfigError, MaskError
from surgery.compiler.masks import attach_mask, prunable_weights
from surgery.pruning import Budget, find_masks, masks_from_scores
from surgery.pruning.collapse import EmptyLayerCheck, MaskWarning, check_masks, cuts_every_path

CLASSES = 10


def batch(n: int = 8, size: int = 32):
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 3, size, size, generator=generator), torch.randint(CLASSES, (n,), generator=generator))]


def built(factory, *args, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return factory(*args, **kwargs)


def timm_net(arch: str) -> nn.Module:
    return built(timm.create_model, arch, pretrained=False, num_classes=CLASSES)


def torchvision_net(arch: str, **kwargs) -> nn.Module:
    return built(getattr(torchvision.models, arch), num_classes=CLASSES, **kwargs)


def bits(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state as raw bytes: equal means bit for bit (-0.0 and 0.0 differ)."""
    return {k: v.detach().clone().contiguous().view(-1).view(torch.uint8) for k, v in model.state_dict().items()}


def same_bits(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def chain() -> nn.Module:
    """conv - relu - conv - relu - pool - linear: every path crosses every layer."""
    return built(nn.Sequential, nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def dense(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: torch.ones(p.shape, dtype=torch.bool) for n, p in prunable_weights(model).items()}


def found(model, method, sparsity, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masks = find_masks(model, method, sparsity, **kwargs)
    return masks, [str(w.message) for w in caught if issubclass(w.category, MaskWarning)]


# ------------------------------------------------------------------ norms at gamma = 0


def zero_init_models():
    return [pytest.param(lambda: timm_net("resnet18"), id="timm-resnet18"),
            pytest.param(lambda: torchvision_net("resnet18", zero_init_residual=True), id="torchvision-zero-init")]


@pytest.mark.parametrize("make", zero_init_models())
@pytest.mark.parametrize("method", ["snip", pytest.param("grasp", marks=pytest.mark.slow)])
def test_norms_at_gamma_zero_are_scored_at_one_and_the_weights_stay_bit_for_bit(method, make):
    model = make()
    before = bits(model)
    masks, notes = found(model, method, 0.95, batches=batch())
    assert same_bits(bits(model), before)  # only the mask changes
    assert all(m.any() for m in masks.values())  # gamma = 0 used to empty 15 of 21
    assert any("scored 8 norm layers that start at gamma = 0" in n and "layer1.0.bn2.weight" in n for n in notes)
    reference, _ = found(torchvision_net("resnet18"), method, 0.95, batches=batch())  # gamma = 1, same seed
    assert all(torch.equal(masks[n], reference[n]) for n in reference)  # scored exactly as the papers' start


def test_synflow_scores_norms_at_gamma_zero_at_one_too():
    model = timm_net("resnet18")
    before = bits(model)
    masks, notes = found(model, "synflow", 0.95, rounds=3, allow_empty_layers=True)  # 3 rounds: a shortcut may go
    assert same_bits(bits(model), before)
    assert any("'synflow' scored 8 norm layers" in n for n in notes)
    reference, _ = found(torchvision_net("resnet18"), "synflow", 0.95, rounds=3, allow_empty_layers=True)
    assert all(torch.equal(masks[n], reference[n]) for n in reference)


@pytest.mark.slow
def test_synflow_with_the_paper_s_100_rounds_keeps_every_layer_of_timm_resnet18():
    masks, _ = found(timm_net("resnet18"), "synflow", 0.95)  # at gamma = 0 it emptied 9 of 21
    assert all(m.any() for m in masks.values())


def test_methods_that_do_not_score_through_the_network_leave_norms_alone():
    masks, notes = found(timm_net("resnet18"), "magnitude", 0.5)
    assert not any("gamma" in n for n in notes) and all(m.any() for m in masks.values())


@pytest.mark.slow
def test_resnet50_snip_collapses_at_95_percent_from_gamma_one_too_and_grasp_does_not():
    grasp, _ = found(timm_net("resnet50"), "grasp", 0.95, batches=batch())
    assert all(m.any() for m in grasp.values())
    with pytest.raises(MaskError) as error:  # SNIP's own layer collapse: torchvision's gamma = 1 init does the same
        found(timm_net("resnet50"), "snip", 0.95, batches=batch())
    message = str(error.value)
    assert "layer4.2.conv3.weight" in message and "ranks all layers together" in message
    assert "allow_empty_layers" in message and "lower the sparsity" in message
    masks, notes = found(timm_net("resnet50"), "snip", 0.95, batches=batch(), allow_empty_layers=True)
    reference, _ = found(torchvision_net("resnet50"), "snip", 0.95, batches=batch(), allow_empty_layers=True)
    assert all(torch.equal(masks[n], reference[n]) for n in reference)
    assert not masks["layer4.2.conv3.weight"].any()
    assert any("layer4.2.conv3.weight" in n and "let through" in n and "other paths still connect" in n for n in notes)
    assert all(m.any() for m in found(timm_net("resnet50"), "snip", 0.9, batches=batch())[0].values())


# ------------------------------------------------------------------ empty layers and cut paths


def test_an_emptied_layer_is_refused_by_name_unless_allowed():
    model = chain()
    with torch.no_grad():
        model[2].weight.mul_(1e-4)  # the smallest magnitudes: a global ranking at 60% drops all of them
    with pytest.raises(MaskError) as error:
        find_masks(model, "magnitude", 0.6)
    message = str(error.value)
    assert "keeps no weight in 1 of 3 prunable layers: 2.weight" in message
    assert "cuts every path" in message and "left without signal is '6.weight'" in message  # the next kept layer
    assert "mask.scope: layer" in message and "mask.allow_empty_layers: true" in message
    masks, notes = found(model, "magnitude", 0.6, allow_empty_layers=True)
    assert not masks["2.weight"].any() and masks["0.weight"].any()
    assert any("2.weight" in n and "let through (allow_empty_layers)" in n for n in notes)


def test_a_mask_that_empties_no_layer_but_disconnects_input_from_output_is_refused():
    model = chain()
    masks = dense(model)
    masks["0.weight"] = torch.zeros(4, 3, 3, 3, dtype=torch.bool)
    masks["0.weight"][0] = True  # layer 1 keeps only output channel 0 ...
    masks["2.weight"] = torch.zeros(4, 4, 3, 3, dtype=torch.bool)
    masks["2.weight"][:, 1] = True  # ... layer 2 reads only input channel 1
    ones = torch.ones(1, 3, 8, 8)
    assert cuts_every_path(model, masks, ones).cut is True
    kwargs = {"what": "mask file 'm.safetensors'", "cause": "the file was made that way", "can_allow": True,
              "example": ones}
    with pytest.raises(MaskError, match=r"keeps weights in every layer but cuts every path .* signal is '2\.weight'"):
        check_masks(model, masks, allow=False, **kwargs)
    with pytest.warns(MaskWarning, match="let through"):
        assert check_masks(model, masks, allow=True, **kwargs) == []
    masks["2.weight"][:, 0] = True  # one connection back: a path again
    assert cuts_every_path(model, masks, ones).cut is False


def test_an_empty_shortcut_leaves_a_residual_network_connected():
    model = timm_net("resnet18")
    masks = dense(model)
    masks["layer2.0.downsample.0.weight"] = torch.zeros_like(masks["layer2.0.downsample.0.weight"])
    masks["layer3.0.conv1.weight"] = torch.zeros_like(masks["layer3.0.conv1.weight"])
    assert cuts_every_path(model, masks, torch.ones(1, 3, 32, 32)).cut is False
    masks["layer4.0.conv1.weight"] = torch.zeros_like(masks["layer4.0.conv1.weight"])  # and the shortcut beside it
    masks["layer4.0.downsample.0.weight"] = torch.zeros_like(masks["layer4.0.downsample.0.weight"])
    assert cuts_every_path(model, masks, torch.ones(1, 3, 32, 32)).cut is True


class Centered(nn.Module):
    """Subtracts the channel mean by hand: a constant input vanishes whatever the mask."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

    def forward(self, x):
        h = self.conv(x)
        return self.fc((h - h.mean(1, keepdim=True)).mean((2, 3)))


def test_the_path_check_is_skipped_with_a_reason_where_it_cannot_tell():
    model = Centered()
    result = cuts_every_path(model, dense(model), torch.ones(1, 3, 8, 8))
    assert result.cut is None and "even the dense network gives an all-zero output" in result.detail
    result = cuts_every_path(model, dense(model), torch.ones(1, 5, 8, 8))  # the wrong channels
    assert result.cut is None and "does not run on an all-ones input of shape (1, 5, 8, 8)" in result.detail
    _, notes = found(chain(), "random", 0.5, example_input=torch.randn(2, 5, 8, 8))
    assert any("was skipped: the model does not run" in n for n in notes)


def test_a_during_method_s_final_mask_is_checked_when_training_ends():
    model = chain()
    masks = dense(model)
    masks["2.weight"] = torch.zeros_like(masks["2.weight"])
    trained = chain()
    for name, mask in masks.items():
        attach_mask(trained, name, mask)
    check = EmptyLayerCheck(model, list(masks), what="mask method 'gmp' at sparsity 0.9", allow=False, can_allow=True,
                            cause="'gmp' ranks all layers together", example=torch.ones(1, 3, 8, 8))
    with pytest.raises(MaskError, match=r"'gmp' at sparsity 0.9 keeps no weight in 1 of 3 prunable layers: 2\.weight"):
        check.on_train_end(SimpleNamespace(module=trained))


# ------------------------------------------------------------------ which methods can empty a layer


def test_a_layer_wise_budget_keeps_at_least_one_weight_in_every_layer():
    scores = {"tiny": torch.rand(10), "big": torch.rand(1000)}
    masks = masks_from_scores(scores, Budget(0.99, "layer"))
    assert int(masks["tiny"].sum()) == 1 and int(masks["big"].sum()) == 10  # round(0.1) would be 0
    model = nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 200), nn.ReLU(), nn.Linear(200, 200))
    masks, _ = found(model, "synflow", 0.99, scope="layer", rounds=3)
    assert all(m.any() for m in masks.values())


def test_allow_empty_layers_is_refused_where_the_method_cannot_empty_a_layer():
    with pytest.raises(ConfigError, match=r"'random' with scope 'layer' cannot empty a layer.*at least 1 weight"):
        find_masks(chain(), "random", 0.5, allow_empty_layers=True)
    find_masks(chain(), "random", 0.5, scope="global", allow_empty_layers=True)  # a global ranking can

    from surgery.train.config import RunConfig

    with pytest.raises(ConfigError, match="mask method 'gmp' with scope 'layer' cannot empty a layer"):
        RunConfig.from_dict({"mask": {"method": "gmp", "allow_empty_layers": True}})
    for mask in ({"method": "gmp", "scope": "global"}, {"method": "asni", "scope": "layer"},  # ASNI ranks globally
                 {"method": "snip"}, {"file": "m.safetensors"}):
        assert RunConfig.from_dict({"mask": {**mask, "allow_empty_layers": True}}).mask.allow_empty_layers


# ------------------------------------------------------------------ the command line


def test_the_flag_sets_the_config_field():
    args = build_parser().parse_args(["train", "cifar:resnet20", "--scope", "global", "--allow-empty-layers"])
    assert flag_fields(args)["mask.allow_empty_layers"] is True


def test_surgery_prune_refuses_a_mask_that_empties_a_layer(capsys, tmp_path):
    from safetensors.torch import save_file

    from surgery.zoo.models import build_model

    model = build_model("cifar:resnet20")
    with torch.no_grad():
        model.fc.weight.mul_(1e-6)  # the smallest magnitudes of all: a global ranking empties the head
    weights = tmp_path / "trained.safetensors"
    save_file(model.state_dict(), str(weights))
    out = tmp_path / "m.safetensors"
    code = main(["prune", "cifar:resnet20", "--method", "magnitude", "--sparsity", "0.5", "--weights", str(weights),
                 "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists(), err
    assert "keeps no weight in 1 of 22 prunable layers: fc.weight" in err and "cuts every path" in err
    assert "--allow-empty-layers" in err and "Traceback" not in err
    code = main(["train", "cifar:resnet20", "--method", "random", "--allow-empty-layers", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "'random' with scope 'layer' cannot empty a layer" in err, err


def test_a_run_refuses_a_mask_file_that_empties_a_layer_unless_allowed(tmp_path):
    from rich.console import Console

    from surgery.compiler.masks import save_masks
    from surgery.zoo.models import build_model
    from surgery.pruning import random_masks
    from surgery.train import RunConfig
    from surgery.train.data import load_dataset, make_loader
    from surgery.train.distributed import Distributed
    from surgery.train.masking import plan_masks

    model = build_model("cifar:resnet20", CLASSES)
    masks = random_masks(model, 0.5)
    masks["layer2.0.conv1.weight"] = torch.zeros_like(masks["layer2.0.conv1.weight"])
    path = save_masks(masks, tmp_path / "m.safetensors", model="cifar:resnet20")
    loader = make_loader(load_dataset("synthetic", image_size=8), "train", 10, train=True, seed=0)

    def plan(**mask):
        config = RunConfig.from_dict({"model": {"spec": "cifar:resnet20"}, "mask": {"file": str(path), **mask}})
        return plan_masks(config, model, train_loader=loader, eval_loaders={}, dist=Distributed.from_env("cpu"),
                          console=Console(quiet=True))

    with pytest.raises(MaskError, match=r"mask file '.*m\.safetensors' keeps no weight in 1 of 22 prunable layers: "
                                        r"layer2\.0\.conv1\.weight; other paths still connect"):
        plan()
    with pytest.warns(MaskWarning, match="layer2.0.conv1.weight.*let through"):
        assert not plan(allow_empty_layers=True).masks["layer2.0.conv1.weight"].any()
