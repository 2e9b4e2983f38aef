"""Small shared models and helpers for the core tests.

Each model isolates one behaviour; the heavier end-to-end fixture (torchvision
ResNet-18 at 32x32) is built once per session.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn

# On small CPU machines intra-op threads fight each other: a ResNet-18 forward at 32x32
# takes ~0.5 s with 2 threads and ~7 ms with one. Tests assert behaviour, not speed.
torch.set_num_threads(1)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def pytest_collection_modifyitems(items):
    """Slow and zoo tests first (otherwise in collection order): xdist's work stealing then ends the run on
    many short tests, which it shares between the workers, not on one long test beside an idle worker."""
    items.sort(key=lambda item: not any(item.get_closest_marker(m) for m in ("slow", "zoo")))


class SmallCNN(nn.Module):
    """conv-bn-relu (identity skip), a strided channel-changing conv (projected skip), a linear head."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(3)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class AllReLUs(nn.Module):
    """Every way of spelling ReLU, plus one GELU that must be left alone by default."""

    RELU_SITES = 9

    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()  # one instance, two call sites
        self.relu_ip = nn.ReLU(inplace=True)
        self.gelu = nn.GELU()

    def forward(self, x):
        a = self.relu(x)
        b = self.relu(x - 1)
        c = F.relu(x + 1)
        d = torch.relu(x * 2)
        e = (x * 3).relu()
        f = x * 4
        f.relu_()  # result discarded: later code reads f, which the in-place op changed
        g = F.relu(x * 5, inplace=True)
        h = self.relu_ip(x * 6)
        k = torch.relu_(x * 7)
        return a + b + c + d + e + f + g + h + k + self.gelu(x)


class MLP(nn.Module):
    """No conv at all."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def seeded(factory, *args, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return factory(*args, **kwargs)


def randomize_norms(model: nn.Module, seed: int = 1) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
    return model


def node_signature(node: fx.Node) -> tuple:
    """What a node computes and reads, with input nodes replaced by their names."""
    args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: f"%{n.name}")
    return (node.op, node.target, args, kwargs)


def graph_signature(gm: fx.GraphModule) -> list[tuple]:
    return [node_signature(n) for n in gm.graph.nodes]


@pytest.fixture
def small_cnn() -> SmallCNN:
    return randomize_norms(seeded(SmallCNN)).eval()


@pytest.fixture(scope="session")
def resnet18() -> nn.Module:
    return randomize_norms(seeded(torchvision.models.resnet18, num_classes=10)).eval()


@pytest.fixture(scope="session")
def image32() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def tiny_run_config(tmp_path, name: str = "tiny", **sections):
    """A RunConfig of cifar:resnet20 on 8x8 synthetic images, 10 steps per epoch, the LR decay (and the
    ghosts' removal) at epoch 2 of 3: seconds per run. ``sections`` update the config's sections."""
    from surgery.train import RunConfig

    data = {
        "name": name,
        "output": str(tmp_path / name),
        "model": {"spec": "cifar:resnet20"},
        "data": {"dataset": "synthetic", "image_size": 8, "batch_size": 100},
        "mask": {"sparsity": 0.8},
        "lr_schedule": {"milestones": [2]},
        "train": {"epochs": 3, "progress": False, "tensorboard": False, "log_every": 2},
        "export": {"onnx": False},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return RunConfig.from_dict(data)
