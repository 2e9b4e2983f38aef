"""The mask finders by name, and ``find_masks``: one call for every method.

A finder is a function ``find(model, names, budget, *, batches, seed, **options) -> masks``:
``names`` are the weights to mask (``budget.prunable_for`` chose them), ``budget`` says how
many each keeps, ``batches`` is a list of ``(inputs, targets)`` for data-dependent methods
(``None`` otherwise). It never modifies ``model`` (it scores a copy) and returns
``{name: bool tensor}`` on the CPU. ``register`` adds one to ``METHODS``; each lives in
its own file under ``surgery/pruning/``. A method marked ``trained`` (magnitude) scores
trained weights: ``surgery prune`` refuses it without ``--weights`` (or ``--allow-untrained``).
A method marked ``flow`` (SNIP, GraSP, SynFlow) scores through the network, so ``find_masks``
scores it with norm layers at gamma = 0 at 1 (``collapse.norms_at_one``). Every mask
``find_masks`` returns has passed ``collapse.check_masks``: no empty layer, no cut path,
unless ``allow_empty_layers`` (only where the method can empty a layer: ``can_empty_layers``).

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

from surgery.errors import ConfigError, MaskError, did_you_mean
from surgery.pruning.budget import Budget, prunable_for
from surgery.pruning.collapse import check_masks, norms_at_one, path_input

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
    flow: bool = False  # scores by gradients or synaptic flow through the network: a norm at gamma = 0 blocks them
    global_only: bool = False  # ranks all layers together whatever the budget's scope (ASNI, OptG)

    @property
    def training(self) -> bool:
        return self.stage != "oneshot"

    def can_empty_layers(self, scope: str | None = None) -> bool:
        """Whether a mask of this method can keep no weight of a layer: a global ranking can (a layer whose
        scores all rank low keeps none); a layer-wise budget keeps at least one per layer (``layer_counts``)."""
        return self.global_only or (scope or self.scope) == "global"

    def collapse_cause(self, sparsity: float, scope: str | None = None) -> str:
        """How a mask of this method can come to empty a layer or cut every path, for ``check_masks``."""
        if self.can_empty_layers(scope):
            return (f"'{self.name}' ranks all layers together (scope global), keeping the top {1 - sparsity:.3g} of "
                    "all weights, so a layer whose scores all rank low keeps none")
        return (f"'{self.name}' keeps weights in every layer (scope layer), but the kept weights of successive layers "
                "do not connect (a layer keeps only channels the next one drops)")


@dataclass
class StageResult:
    """What a ``before`` method hands the main run: the mask, the weights to start from, its rounds."""

    masks: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor] | None  # a state_dict of the plain model; None: the model's own init
    rounds: list[dict] = field(default_factory=list)  # per round: round, trained_sparsity, accuracy, sparsity


METHODS: dict[str, Method] = {}


STAGES = ("oneshot", "during", "before")


def register(name: str, *, data: bool = False, stage: str = "oneshot", scope: str = "layer", about: str = "",
             distribution: str = "uniform", trained: bool = False, input_shape: bool = False, flow: bool = False,
             global_only: bool = False):
    """Decorator: ``@register("snip", data=True, scope="global", flow=True, about="...")``."""
    assert stage in STAGES, stage

    def add(find: Finder) -> Finder:
        METHODS[name] = Method(name, find, data, stage, scope, about, distribution, trained, input_shape, flow,
                               global_only)
        return find

    return add


def method(name: str) -> Method:
    _load_all()
    if name not in METHODS:
        raise MaskError(
            f"unknown mask method '{name}'." + did_you_mean(name, METHODS) + f" Known: {', '.join(sorted(METHODS))}."
        )
    return METHODS[name]


def refuse_allow_empty_layers(name: str, scope: str | None = None) -> None:
    """A ``ConfigError`` when ``allow_empty_layers`` is set for a method and scope that cannot empty a layer
    (an unknown method is left to the check that names it)."""
    _load_all()
    found = METHODS.get(name)
    if found is not None and not found.can_empty_layers(scope):
        raise ConfigError(
            f"mask.allow_empty_layers is set, but mask method '{name}' with scope '{scope or found.scope}' cannot "
            "empty a layer: a layer-wise budget keeps at least 1 weight per layer. Drop allow_empty_layers, or "
            "rank all layers together (mask.scope: global) if that is what you meant."
        )


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
    allow_empty_layers: bool = False,
    example_input: torch.Tensor | None = None,
    **options,
) -> dict[str, torch.Tensor]:
    """Masks from method ``name`` at ``sparsity`` (fraction pruned) for ``model``'s prunable weights.

    A mask that keeps no weight of a layer, or cuts every path from input to output, is a ``MaskError``
    unless ``allow_empty_layers`` (then a warning lists the layers). ``example_input``: an input of the
    model (its first example is used) for that path check; default: the batches', else SynFlow's shape.
    """
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
    if allow_empty_layers:
        refuse_allow_empty_layers(name, budget.scope)
    names = list(prunable_for(model, prunable, dense_first=dense_first, dense_last=dense_last, exclude=exclude))
    with norms_at_one(model, name, enabled=found.flow):
        masks = found.find(model, names, budget, batches=batches, seed=seed, **options)
    check_masks(model, masks, what=f"mask method '{name}' at sparsity {sparsity:g}", allow=allow_empty_layers,
                cause=found.collapse_cause(sparsity, budget.scope), can_allow=found.can_empty_layers(budget.scope),
                example=path_input(model, example_input, batches, options.get("input_shape")))
    return masks


def _load_all() -> None:
    """Import every finder module so its ``register`` has run."""
    import importlib
    import pkgutil

    import surgery.pruning as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("budget", "collapse", "registry", "dynamic"):
            importlib.import_module(f"surgery.pruning.{info.name}")
