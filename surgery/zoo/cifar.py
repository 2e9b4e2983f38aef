"""CIFAR-style networks the papers train: ResNets with a 3x3 stride-1 stem, and VGG with BatchNorm.

- ``resnet18`` / ``resnet34`` / ``resnet50``: the CIFAR layout used by ToST and the
  lottery-ticket papers' code: a 3x3 stride-1 stem conv with no max-pool, four stages
  of 64/128/256/512 channels (x4 for the Bottleneck of ResNet-50), and a 1x1-conv + BN
  projection shortcut wherever a block changes shape.
- ``resnet20`` ... ``resnet110``: He et al.'s CIFAR ResNets (depth 6n+2, three stages of
  16/32/64 channels). The paper's zero-padding shortcut ("option A") is replaced by the
  1x1-conv + BN projection ("option B") so the graph is plain torch ops; that adds
  about 3k parameters to ResNet-20 (0.272M rather than 0.270M).
- ``grasp_resnet20`` ... ``grasp_resnet110``: the CIFAR ResNets of GraSP's code
  (``models/base/resnet.py``), whose ResNet-32 is the one in ToST's Table 2 (dense CIFAR-10
  94.80, CIFAR-100 74.64: GraSP's own baselines): He et al.'s 6n + 2 layout with every width
  doubled (32/64/128; 1.86M parameters at depth 32), 1x1-conv + BN projection shortcuts, and
  a Linear head drawn from N(0, 0.01) with a zero bias.
- ``vgg11`` / ``vgg13`` / ``vgg16`` / ``vgg19``: VGG with BatchNorm after every (biased)
  conv and a CIFAR head, one Linear on the 512-d globally pooled features; VGG-16 has
  the 14,728,266 parameters the papers report for 10 classes.

Every model takes ``num_classes=10`` and ``in_channels=3``, has no data-dependent
control flow (``surgery.trace`` sees every layer), and starts from Kaiming-normal convs.
``CIFAR_MODELS`` maps each name to its builder; ``surgery.zoo.models`` exposes them as
``cifar:NAME``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from surgery.errors import SurgeryError, UnknownModelError

CIFAR_INPUT_SIZE = 32


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def projection_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """The 1x1-conv + BN shortcut where a block changes shape; None (identity) where it does not."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN pairs; the shortcut is added before the last ReLU."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = projection_shortcut(in_channels, channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4; the stride sits on the 3x3 as in torchvision."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = conv1x1(in_channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = conv1x1(channels, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = projection_shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """3x3 stride-1 stem (no max-pool), one stage per width (each after the first halves the
    resolution), global average pooling and a Linear head."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        blocks_per_stage: Sequence[int],
        widths: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
    ):
        super().__init__()
        if len(blocks_per_stage) != len(widths):
            raise SurgeryError(
                f"CifarResNet got {len(blocks_per_stage)} stage depths for {len(widths)} stage widths; "
                "give one number of blocks per width."
            )
        self.conv1 = conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        channels = widths[0]
        stages = []
        for index, (depth, width) in enumerate(zip(blocks_per_stage, widths)):
            stage, channels = _stage(block, channels, width, depth, stride=1 if index == 0 else 2)
            stages.append(stage)
        # layer1, layer2, ...: the names torchvision and the papers' code give the stages
        for index, stage in enumerate(stages, start=1):
            self.add_module(f"layer{index}", stage)
        self.num_stages = len(stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{index}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _stage(block, in_channels: int, width: int, depth: int, stride: int) -> tuple[nn.Sequential, int]:
    """``depth`` blocks, the first strided; returns the stage and its output channels."""
    layers = []
    for index in range(depth):
        layers.append(block(in_channels, width, stride if index == 0 else 1))
        in_channels = width * block.expansion
    return nn.Sequential(*layers), in_channels


VGG_LAYOUTS: dict[str, tuple[int | str, ...]] = {  # "M": 2x2 max-pool
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


class CifarVGG(nn.Module):
    """conv3x3-BN-ReLU stacks with max-pools, then global average pooling and one Linear.

    At 32x32 the five pools leave a 1x1 map, so the pooling changes nothing there; it
    lets other input sizes work with the same head.
    """

    def __init__(self, layout: Sequence[int | str], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                # biased convs before BN, as in the lottery-ticket and CIFAR VGG code the papers cite
                conv = nn.Conv2d(channels, int(item), 3, padding=1)
                layers += [conv, nn.BatchNorm2d(int(item)), nn.ReLU(inplace=True)]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def kaiming_init(model: nn.Module) -> None:
    """Kaiming-normal convs (fan_out, for the ReLU that follows), BN at weight 1 and bias 0.

    Linear layers keep PyTorch's default uniform init.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


# ------------------------------------------------------------------- builders

IMAGENET_STYLE_WIDTHS = (64, 128, 256, 512)
HE_CIFAR_WIDTHS = (16, 32, 64)
GRASP_CIFAR_WIDTHS = (32, 64, 128)  # GraSP (and so ToST's Table 2) doubles He et al.'s widths
HE_DEPTHS = (20, 32, 44, 56, 110)


def resnet18(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(BasicBlock, (2, 2, 2, 2), IMAGENET_STYLE_WIDTHS, num_classes, in_channels)


def resnet34(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(BasicBlock, (3, 4, 6, 3), IMAGENET_STYLE_WIDTHS, num_classes, in_channels)


def resnet50(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(Bottleneck, (3, 4, 6, 3), IMAGENET_STYLE_WIDTHS, num_classes, in_channels)


def he_cifar_resnet(depth: int, num_classes: int = 10, in_channels: int = 3,
                    widths: Sequence[int] = HE_CIFAR_WIDTHS) -> CifarResNet:
    """He et al.'s CIFAR ResNet of ``depth`` = 6n + 2 layers: n BasicBlocks in each of 3 stages."""
    if depth < 8 or (depth - 2) % 6:
        raise UnknownModelError(
            f"there is no CIFAR ResNet of depth {depth}: He et al.'s depths are 6n + 2 with n >= 1 "
            "(8, 14, 20, 32, 44, 56, 110, ...); pick one of those."
        )
    n = (depth - 2) // 6
    return CifarResNet(BasicBlock, (n, n, n), widths, num_classes, in_channels)


def grasp_cifar_resnet(depth: int, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """GraSP's CIFAR ResNet: He et al.'s layout at twice the width, a Linear head from N(0, 0.01)."""
    model = he_cifar_resnet(depth, num_classes, in_channels, GRASP_CIFAR_WIDTHS)
    nn.init.normal_(model.fc.weight, 0.0, 0.01)
    nn.init.zeros_(model.fc.bias)
    return model


def _resnet_builder(name: str, depth: int, make: Callable[..., CifarResNet], about: str) -> Callable[..., CifarResNet]:
    def build(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
        return make(depth, num_classes, in_channels)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = about
    return build


def _vgg_builder(name: str) -> Callable[..., CifarVGG]:
    def build(num_classes: int = 10, in_channels: int = 3) -> CifarVGG:
        return CifarVGG(VGG_LAYOUTS[name], num_classes, in_channels)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{name.upper()} with BatchNorm and a one-Linear CIFAR head."
    return build


CIFAR_MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    **{f"resnet{d}": _resnet_builder(f"resnet{d}", d, he_cifar_resnet, f"He et al.'s CIFAR ResNet-{d} (projection "
                                       "shortcuts).") for d in HE_DEPTHS},
    **{f"grasp_resnet{d}": _resnet_builder(f"grasp_resnet{d}", d, grasp_cifar_resnet, f"GraSP's CIFAR ResNet-{d} "
                                             "(32/64/128 widths), ToST's Table 2 network at depth 32.") for d in HE_DEPTHS},
    **{name: _vgg_builder(name) for name in VGG_LAYOUTS},
}
