"""The mask finders by name, and ``find_masks``: one call for every method.

A finder is a function ``find(model, names, budget, *, batches, seed, **options) -> masks``:
``names`` are the weights to mask (``budget.prunable_for`` chose them), ``budget`` says how
many each keeps, ``batches`` is a list of ``(inputs, targets)`` for data-dependent methods
(``None`` otherwise). It never modifies ``model`` (it scores a copy) and returns
``{name: bool tensor}`` on the CPU. ``register`` adds one to ``METHODS``; each lives in
its own file under ``surgery/pruning/``. A method marked ``trained`` (magnitude) scores
trained weights: ``surgery prune`` refuses it without ``--weights`` (or ``--allow-untrained``).

Methods that train have a ``stage``: ``during`` (GMP, RigL, ASNI, OptG: the mask changes
while the model trains; ``find`` builds a ``surgery.hooks.TrainingHook``) or
``before`` (IMP, learned masks: training runs that end in a mask; ``find`` runs them).
They need a run config, so they go through ``surgery.train`` (``surgery prune`` and
``surgery run`` route them), not ``find_masks``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from surgery.errors import MaskError, did_you_mean
from surgery.pruning.budget import Budget, prunable_for

Finder = Callable[..., dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Method:
    name: str
    find: Finder
    data: bool  # needs batches of (inputs, targets)
    stage: str  # "oneshot" (scores once), "during" (a training hook), "before" (training runs, then a mask)
    scope: str  # the default budget scope: what the method's paper does
    about: str
    distribution: str = "uniform"  # the default layer budgets (RigL: erk)
    trained: bool = False  # scores trained weights: on a random initialization its mask means nothing
    input_shape: bool = False  # scores with a forward on a made-up input: takes the real one's shape (option input_shape)

    @property
    def training(self) -> bool:
        return self.stage != "oneshot"


@dataclass
class StageResult:
    """What a ``before`` method hands the main run: the mask, the weights to start from, its rounds."""

    masks: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor] | None  # a state_dict of the plain model; None: the model's own init
    rounds: list[dict] = field(default_factory=list)  # per round: round, trained_sparsity, accuracy, sparsity


METHODS: dict[str, Method] = {}


STAGES = ("oneshot", "during", "before")


def register(name: str, *, data: bool = False, stage: str = "oneshot", scope: str = "layer", about: str = "",
             distribution: str = "uniform", trained: bool = False, input_shape: bool = False):
    """Decorator: ``@register("snip", data=True, scope="global", about="...")``."""
    assert stage in STAGES, stage

    def add(find: Finder) -> Finder:
        METHODS[name] = Method(name, find, data, stage, scope, about, distribution, trained, input_shape)
        return find

    return add


def method(name: str) -> Method:
    _load_all()
    if name not in METHODS:
        raise MaskError(
            f"unknown mask method '{name}'." + did_you_mean(name, METHODS) + f" Known: {', '.join(sorted(METHODS))}."
        )
    return METHODS[name]


def find_masks(
    model: nn.Module,
    name: str,
    sparsity: float,
    *,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    scope: str | None = None,
    distribution: str | None = None,
    prunable: Iterable[str] = ("conv", "linear"),
    dense_first: bool = False,
    dense_last: bool = False,
    exclude: Iterable[str] = (),
    seed: int = 0,
    **options,
) -> dict[str, torch.Tensor]:
    """Masks from method ``name`` at ``sparsity`` (fraction pruned) for ``model``'s prunable weights."""
    found = method(name)
    budget = Budget(sparsity, scope or found.scope, distribution or found.distribution)
    if found.training:
        raise MaskError(
            f"mask method '{name}' trains the model; run it with `surgery prune MODEL --method {name} --data ...` "
            f"or a config with mask: {{method: {name}}} (surgery run), not find_masks()."
        )
    if found.data and not batches:
        raise MaskError(
            f"mask method '{name}' scores weights with gradients on real data: pass batches=[(inputs, targets), ...] "
            "(CLI: --data DATASET)."
        )
    names = list(prunable_for(model, prunable, dense_first=dense_first, dense_last=dense_last, exclude=exclude))
    return found.find(model, names, budget, batches=batches, seed=seed, **options)


def _load_all() -> None:
    """Import every finder module so its ``register`` has run."""
    import importlib
    import pkgutil

    import surgery.pruning as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("budget", "registry", "dynamic"):
            importlib.import_module(f"surgery.pruning.{info.name}")
