"""Every training mask method on real architectures: torchvision ResNet-18, MobileNetV2, VGG-16-BN and
timm's ConvNeXt (atto): a couple of tiny steps each, masks at the target, pruned weights zero,
and the result drops into surgery.compile."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

import surgery
from surgery.compiler.masks import masked_parameters
from surgery.pruning import METHODS, Budget, method, prunable_for
from surgery.train import RunConfig, Trainer
from surgery.train.settings import TrainerSettings
from surgery.train.masking import starting_masks

pytestmark = pytest.mark.slow  # trains every method on real architectures

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


class TinyLoader:
    """Two fixed batches of four 32x32 images: what Trainer needs of a loader."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.data = [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(2)]

    def __len__(self) -> int:
        return len(self.data)

    def set_epoch(self, epoch: int) -> None:
        pass

    def batches(self, start: int = 0):
        return iter(self.data[start:])


def vgg16_bn() -> nn.Module:
    """torchvision's VGG-16-BN with a CIFAR head (its 120M-weight classifier is not what is tested)."""
    model = torchvision.models.vgg16_bn(num_classes=10)
    model.avgpool, model.classifier = nn.AdaptiveAvgPool2d(1), nn.Sequential(nn.Flatten(), nn.Linear(512, 10))
    return model


MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10),
    "vgg16_bn": vgg16_bn,
    "convnext_atto": lambda: timm.create_model("convnext_atto", pretrained=False, num_classes=10),
}
method("random")  # imports every finder module, so METHODS is complete
TRAINING = sorted(name for name, m in METHODS.items() if m.training)


def config(tmp_path, name: str) -> RunConfig:
    return RunConfig.from_dict({
        "name": name, "output": str(tmp_path / name), "recipe": {}, "lr_schedule": {"kind": "constant"},
        "optimizer": {"lr": 0.01}, "train": {"epochs": 1, "progress": False, "tensorboard": False, "checkpoint_every": 0},
    })


def train_round(tmp_path, model, masks, *, tag, hooks=()):
    compiled = surgery.compile(model, X, surgery.Recipe.from_dict({}).replace(masks=masks or None))
    settings = TrainerSettings.from_config(config(tmp_path, tag))
    return Trainer(compiled, settings, TinyLoader(), {}, run_dir=tmp_path / tag, hooks=list(hooks)).fit()


@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("name", TRAINING)
def test_training_method_on_a_real_architecture(arch, name, tmp_path):
    torch.manual_seed(0)
    model = MODELS[arch]().train()
    names = list(prunable_for(model))
    found = method(name)
    budget = Budget(0.8, found.scope, found.distribution)
    if found.stage == "during":
        masks = starting_masks(name, model, names, budget, seed=0)
        hook = found.find(model, names, budget, **({"every": 1} if name in ("gmp", "rigl") else {}))
        final = masked_parameters(train_round(tmp_path, model, masks, tag=name, hooks=[hook]).model)
    else:
        options = {"rounds": 2} if name == "imp" else {}
        result = found.find(model, names, budget, train=lambda m, k, **kw: train_round(tmp_path, m, k, **kw), **options)
        final = result.masks
    kept = sum(int(m.count_nonzero()) for m in final.values())
    total = sum(m.numel() for m in final.values())
    assert set(final) == set(names) and abs(kept - round(0.2 * total)) <= len(final)
    clean = surgery.deghost(surgery.compile(model, X, {"masks": {k: v.cpu() for k, v in final.items()}}))
    assert all(torch.count_nonzero(clean.get_parameter(n)[~final[n].cpu()]) == 0 for n in names)
