"""One table of layer kinds: a transposed conv is a prunable conv everywhere, and never a ghost-skip site."""

from __future__ import annotations

import torch
from torch import nn

import surgery
from surgery.init.zero import zero_init
from surgery.compiler.masks import prunable_weights, validate_masks
from surgery.pruning import find_masks, prunable_for

SPARSITY = 0.5


class Decoder(nn.Module):
    """A transposed conv first (SynFlow's default input shape comes from it), then a conv and a head."""

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1)
        self.conv = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.conv(torch.relu(self.up(x))).mean(dim=(2, 3)))


def test_a_transposed_conv_is_pruned_by_masks_budgets_and_synflow_alike():
    torch.manual_seed(0)
    model = Decoder()
    expected = ["up.weight", "conv.weight", "head.weight"]
    assert list(prunable_weights(model)) == expected
    assert list(prunable_weights(model, ["conv"])) == expected[:2]
    assert list(prunable_for(model, dense_first=True)) == expected[1:]  # the stem is the transposed conv
    masks = find_masks(model, "synflow", SPARSITY, scope="layer", rounds=2)  # input shape from the stem
    assert list(masks) == expected
    up = masks["up.weight"]
    assert up.shape == model.up.weight.shape and up.float().mean().item() == SPARSITY
    validate_masks(masks, model)


def test_ghost_skips_wrap_forward_convs_only():
    model, x = Decoder().eval(), torch.randn(2, 4, 5, 5)
    ghosted = surgery.compile(model, x, {"ghost_skip": {"targets": ["stem", "conv", "pointwise", "pooled"]}})
    assert [record.site for record in surgery.manifest_of(ghosted).skips] == ["conv"]


def test_zero_gives_a_transposed_conv_the_channel_map_of_the_same_sized_conv():
    for c_in, c_out in ((3, 6), (6, 3)):  # a Hadamard (widening) and a partial identity (narrowing) map
        conv = nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1))
        transposed = nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 3, padding=1))
        zero_init(conv, zero_residual_branches=False)
        zero_init(transposed, zero_residual_branches=False)
        x = torch.randn(2, c_in, 5, 5)
        torch.testing.assert_close(transposed(x), conv(x))
