"""Weight rewinding into a compiled, masked, ghosted model from every form a checkpoint comes in."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import surgery
from surgery.errors import CheckpointError
from surgery.init.rewind import plain_key, rewind
from surgery.compiler.masks import masked_parameters, prunable_weights
from surgery.zoo.models import build_model
from surgery.train.checkpoint import CheckpointStore

RECIPE = {"ghost_skip": {"projection": "conv1x1"}, "soft_activation": {"kind": "pswish"}}
EXAMPLE = torch.randn(2, 3, 32, 32)


def random_masks(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=generator) > 0.6 for n, p in prunable_weights(model).items()}


def early_dense(seed: int = 7, num_classes: int = 10) -> nn.Module:
    """The dense run at its rewind epoch: other weights, BatchNorm statistics that moved."""
    torch.manual_seed(seed)
    model = build_model("cifar:resnet20", num_classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(33)
                m.weight.uniform_(0.5, 1.5)
    return model


@pytest.fixture
def target() -> torch.fx.GraphModule:
    torch.manual_seed(0)
    model = build_model("cifar:resnet20", 10)
    return surgery.compile(model, EXAMPLE, {**RECIPE, "masks": random_masks(model, 1)})


def assert_rewound(target: torch.fx.GraphModule, source: dict[str, torch.Tensor]) -> None:
    """Kept weights equal the source's, pruned ones are zero, everything else (BN buffers too) is the source's."""
    masks = masked_parameters(target)
    for key, tensor in target.state_dict().items():
        name = plain_key(key)
        if name is None or name.startswith("_ghosts."):
            continue
        if name in masks:
            assert torch.equal(tensor, source[name] * masks[name]), name
        else:
            assert torch.equal(tensor, source[name]), name


def test_from_a_plain_state_dict(target):
    source = early_dense().state_dict()
    masks_before = {n: m.clone() for n, m in masked_parameters(target).items()}
    parameters_before = list(target.parameters())

    report = rewind(target, source)

    assert_rewound(target, source)
    assert report.loaded == len(source) and report.masks_applied == len(masks_before)
    assert not report.ghosts_loaded
    assert all(torch.equal(masked_parameters(target)[n], m) for n, m in masks_before.items())  # the target's masks win
    assert all(a is b for a, b in zip(parameters_before, target.parameters()))  # an optimizer's references stay valid
    assert target.layer1[0].bn1.num_batches_tracked.item() == 33  # BatchNorm buffers come too


def test_from_a_safetensors_file(tmp_path, target):
    source = early_dense().state_dict()
    save_file({k: v.contiguous() for k, v in source.items()}, str(tmp_path / "early.safetensors"))
    rewind(target, tmp_path / "early.safetensors")
    assert_rewound(target, source)


def test_from_a_pt_file(tmp_path, target):
    source = early_dense().state_dict()
    torch.save(source, tmp_path / "early.pt")
    rewind(target, str(tmp_path / "early.pt"))
    assert_rewound(target, source)


def test_from_a_trainer_checkpoint_with_ghosts(tmp_path, target):
    dense = early_dense()
    ghosted_source = surgery.compile(dense, EXAMPLE, {**RECIPE, "masks": random_masks(dense, 5)})  # other masks
    with torch.no_grad():
        ghosted_source.get_submodule("_ghosts.skip.layer2_0_conv1.projection.conv").weight.fill_(0.25)
    state = {"model": ghosted_source.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 33}
    path = CheckpointStore(tmp_path / "checkpoints").save(state, epoch=33, step=330)

    report = rewind(target, path)

    assert report.ghosts_loaded
    source = {plain_key(k): v for k, v in ghosted_source.state_dict().items() if plain_key(k)}
    assert_rewound(target, source)  # kept weights: the source's stored ones (zero where its own mask pruned)
    assert (target.get_submodule("_ghosts.skip.layer2_0_conv1.projection.conv").weight == 0.25).all()

    plain = build_model("cifar:resnet20", 10)  # a model without ghosts ignores the checkpoint's ghosts
    report = rewind(plain, state)
    assert not report.ghosts_loaded and report.masks_applied == 0
    assert torch.equal(plain.layer1[0].conv1.weight, source["layer1.0.conv1.weight"])


def test_a_source_of_another_model_lists_every_differing_key(target):
    other = build_model("cifar:resnet32", 100).state_dict()
    with pytest.raises(CheckpointError) as error:
        rewind(target, other)
    message = str(error.value)
    assert "shape differs: fc.weight: source (100, 64), model (10, 64)" in message
    assert "shape differs: fc.bias: source (100,), model (10,)" in message
    extra = [k for k in other if k.startswith(("layer1.3.", "layer1.4.", "layer2.3.", "layer3.4."))]
    assert extra and all(f"not in the model: {k} " in message for k in extra)
    assert "same architecture" in message  # names the fix


def test_a_source_missing_keys_is_refused_before_anything_changes(target):
    source = early_dense().state_dict()
    del source["layer2.1.bn2.running_var"]
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"missing from the source: layer2\.1\.bn2\.running_var \(32,\)"):
        rewind(target, source)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_unreadable_sources_are_explained(tmp_path, target):
    with pytest.raises(CheckpointError, match="does not exist"):
        rewind(target, tmp_path / "nope.pt")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(CheckpointError, match="safetensors"):
        rewind(target, tmp_path / "w.txt")
    with pytest.raises(CheckpointError, match="not tensors"):
        rewind(target, {"epoch": 3, "step": 10})
