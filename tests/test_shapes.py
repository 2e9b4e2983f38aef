"""Shape propagation (``graph.propagate_shapes``): shapes without arithmetic where that works, right shapes always."""

from __future__ import annotations

import torch
from torch import nn
from torch._subclasses.fake_tensor import is_fake

import surgery
from surgery.fx.graph import propagate_shapes


class Seen(nn.Module):
    """A leaf that records whether it ran on real data."""

    def __init__(self):
        super().__init__()
        self.real_runs = 0

    def forward(self, x):
        self.real_runs += not (x.is_meta or is_fake(x))
        return x


class MakesItsOwnTensor(nn.Module):
    """Its forward builds a tensor on the default device (timm's rotary embeddings do so)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.seen = Seen()

    def forward(self, x):
        scale = torch.arange(4, dtype=x.dtype).view(1, 4, 1, 1)
        return self.seen(self.conv(x) * scale)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)
        self.b.weight = self.a.weight
        self.seen = Seen()

    def forward(self, x):
        return self.seen(self.b(self.a(x)))


def _shapes(gm):
    return {n.name: tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes if "tensor_meta" in n.meta
            and hasattr(n.meta["tensor_meta"], "shape")}


def test_a_forward_that_makes_its_own_tensor_gets_its_shapes_without_a_real_run():
    model, x = MakesItsOwnTensor(), torch.randn(2, 3, 8, 8)
    gm = surgery.trace(model, leaf_modules=[Seen])
    propagate_shapes(gm, (x,))
    assert gm.get_submodule("seen").real_runs == 0
    assert _shapes(gm)["seen"] == (2, 4, 8, 8)


def test_tied_weights_get_their_shapes_on_meta():
    model, x = Tied(), torch.randn(3, 8)
    gm = surgery.trace(model, leaf_modules=[Seen])
    propagate_shapes(gm, (x,))
    assert gm.get_submodule("seen").real_runs == 0
    assert _shapes(gm)["seen"] == (3, 8)


class TwinsOneHooked(nn.Module):
    """Two identical layers; a hook crops the second one's output."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(8, 8), nn.Linear(8, 8)
        self.second.register_forward_hook(lambda module, inputs, output: output[..., :3])

    def forward(self, x):
        return self.first(x), self.second(x)


def test_a_layer_with_a_hook_gets_its_own_shape_not_its_twins():
    model, x = TwinsOneHooked(), torch.randn(2, 8)
    gm = surgery.trace(model)
    propagate_shapes(gm, (x,))
    shapes = _shapes(gm)
    assert (shapes["first"], shapes["second"]) == ((2, 8), (2, 3))
