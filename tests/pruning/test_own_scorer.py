"""A user's own scorer: registered or passed as it is, its scores become masks under the budget."""

from __future__ import annotations

import re
from pathlib import Path
from unittest.mock import patch

import pytest
import torch
from torch import nn

from surgery.errors import MaskError
from surgery.pruning import METHODS, find_masks, method

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_scorer_example() -> str:
    """The README's Python block that defines ``filter_l1`` (in its section on mask finders)."""
    masks_section = README.read_text().split("## Masks and initializers", 1)[1].split("\n## ", 1)[0]
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", masks_section, re.S) if "def filter_l1" in b]
    return block


def test_the_readmes_scorer_example_works_registered_and_as_it_is():
    with patch.dict(METHODS):  # the example registers a method: leave the registry as it was
        scope: dict = {}
        exec(readme_scorer_example(), scope)
        assert method("filter_l1").score is scope["filter_l1"]
        assert METHODS["filter_l1"].stage == "oneshot"
    masks, same = scope["masks"], scope["same"]
    conv, linear = masks["0.weight"], masks["3.weight"]
    kept_filters = conv.flatten(1).all(1)
    assert int(kept_filters.sum()) == 4 and torch.equal(conv.flatten(1).any(1), kept_filters)  # 4 of 8, whole
    norms = scope["model"][0].weight.detach().abs().flatten(1).sum(1)
    assert set(kept_filters.nonzero().flatten().tolist()) == set(norms.topk(4).indices.tolist())
    assert int(linear.flatten(1).all(1).sum()) == 5  # 5 of 10 rows at a uniform 50%
    assert set(same) == set(masks) and not torch.equal(same["0.weight"], conv)  # ERK sets other per-layer budgets


def test_a_scorer_passed_as_it_is_gets_the_budget_scope_and_seed():
    seen = {}

    def noisy(model, names, *, batches=None, seed=0, **options):
        seen.update(seed=seed, options=options)
        generator = torch.Generator().manual_seed(seed)
        return {n: torch.rand(model.get_parameter(n).shape, generator=generator) for n in names}

    model = nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 5))
    masks = find_masks(model, noisy, 0.6, scope="global", seed=7, temperature=2)
    assert seen == {"seed": 7, "options": {"temperature": 2}}
    assert sum(int(m.sum()) for m in masks.values()) == round(0.4 * (200 + 50))  # one global ranking


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        (lambda names, w: [1.0], r"returned list; a scorer returns \{weight name: tensor"),
        (lambda names, w: {names[0]: w[names[0]].abs()}, r"no score for: 2.weight"),
        (lambda names, w: {**{n: w[n].abs() for n in names}, "x": torch.ones(1)}, r"scores no weight to mask: x"),
        (lambda names, w: {n: torch.ones(3) for n in names}, r"wrong shape: 0.weight \(3,\) \(weight \(10, 20\)\)"),
    ],
    ids=["not-a-mapping", "missing", "extra", "shape"],
)
def test_a_scorer_that_misses_or_misshapes_weights_is_a_mask_error(scores, message):
    model = nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 5))

    def broken(model, names, **_):
        return scores(names, dict(model.named_parameters()))

    with pytest.raises(MaskError, match=rf"mask method 'broken' .*{message}"):
        find_masks(model, broken, 0.5)
