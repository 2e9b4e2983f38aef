"""The mask finders by name, and ``find_masks``: one call for every method.

A one-shot method is a scorer, ``score(model, names, *, batches, seed, **options) -> scores``:
``names`` are the weights to mask (``budget.prunable_for`` chose them), ``batches`` is a list
of ``(inputs, targets)`` for data-dependent methods (``None`` otherwise), and it returns
``{name: tensor shaped like the weight}``, higher = keep. It never modifies ``model`` (it
scores a copy). The registry turns scores into masks in one place (``scored_masks``, with
``budget.masks_from_scores``): the sparsity, the scope (global / layer-wise) and the layer
distribution (uniform / ERK) apply the same way to every method, as Torch-Pruning's pruner
applies the ratio to what its importance objects score. ``Method.find(model, names, budget,
...)`` gives the ``{name: bool tensor}`` masks on the CPU. A scorer that prunes in rounds
towards the budget (SynFlow: ``iterative``) is given ``budget=`` too; its scores are its
verdict. ``register`` adds a method to ``METHODS``; each lives in its own file under
``surgery/pruning/``, and a user's own scorer is one ``@register`` away, or is passed to
``find_masks`` as it is. A method marked ``trained`` (magnitude) scores
trained weights: ``surgery prune`` refuses it without ``--weights`` (or ``--allow-untrained``).
A method marked ``flow`` (SNIP, GraSP, SynFlow) scores through the network, so ``find_masks``
scores it with norm layers at gamma = 0 at 1 (``collapse.norms_at_one``). Every mask
``find_masks`` returns has passed ``collapse.check_masks``: no empty layer, no cut path,
unless ``allow_empty_layers`` (only where the method can empty a layer: ``can_empty_layers``).

Methods that train have a ``stage`` and a ``find`` of their own (the budget applies while
they train): ``during`` (GMP, RigL, ASNI, OptG: the mask changes
while the model trains; ``find`` builds a ``surgery.hooks.TrainingHook``) or
``before`` (IMP, learned masks: training runs that end in a mask; ``find`` runs them).
They need a run config, so they go through ``surgery.train`` (``surgery prune`` and
``surgery run`` route them), not ``find_masks``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from surgery.errors import ConfigError, MaskError, did_you_mean
from surgery.pruning.budget import Budget, masks_from_scores, prunable_for, weights_of
from surgery.pruning.collapse import check_masks, norms_at_one, path_input

Scorer = Callable[..., dict[str, torch.Tensor]]  # score(model, names, *, batches, seed, **options) -> scores
Finder = Callable[..., Any]  # find(model, names, budget, **options) -> masks | TrainingHook | StageResult


@dataclass(frozen=True)
class Method:
    name: str
    find: Finder  # masks under a budget (a one-shot method: its scores ranked by ``scored_masks``), or what trains
    data: bool  # needs batches of (inputs, targets)
    stage: str  # "oneshot" (scores once), "during" (a training hook), "before" (training runs, then a mask)
    scope: str  # the default budget scope: what the method's paper does
    about: str
    distribution: str = "uniform"  # the default layer budgets (RigL: erk)
    trained: bool = False  # scores trained weights: on a random initialization its mask means nothing
    input_shape: bool = False  # scores with a forward on a made-up input: takes the real one's shape (option input_shape)
    flow: bool = False  # scores by gradients or synaptic flow through the network: a norm at gamma = 0 blocks them
    global_only: bool = False  # ranks all layers together whatever the budget's scope (ASNI, OptG)
    score: Scorer | None = None  # a one-shot method's scores (higher = keep); None for methods that train

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
             global_only: bool = False, iterative: bool = False):
    """Decorator: ``@register("snip", data=True, scope="global", flow=True, about="...")`` on a scorer (a
    ``stage="oneshot"`` method, the default) or on the ``find`` of a method that trains."""
    assert stage in STAGES, stage

    def add(fn: Callable) -> Callable:
        oneshot = stage == "oneshot"
        METHODS[name] = Method(name, scored_masks(name, fn, iterative) if oneshot else fn, data, stage, scope, about,
                               distribution, trained, input_shape, flow, global_only, fn if oneshot else None)
        return fn

    return add


def scored_masks(name: str, score: Scorer, iterative: bool = False) -> Finder:
    """A one-shot method's ``find``: its scores made masks under the budget, the one place where a
    scoring method's sparsity, scope and distribution apply. ``iterative``: ``score`` takes ``budget=``."""

    def find(model: nn.Module, names: list[str], budget: Budget, **options) -> dict[str, torch.Tensor]:
        scores = score(model, names, **options, **({"budget": budget} if iterative else {}))
        return masks_from_scores(checked_scores(name, scores, weights_of(model, names)), budget)

    return find


def checked_scores(name: str, scores: Any, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``scores`` in the weights' order (a global ranking breaks ties by position), once they are one tensor
    per weight to mask, shaped like it (a user's scorer may err)."""
    if not isinstance(scores, Mapping):
        raise MaskError(f"mask method '{name}' returned {type(scores).__name__}; a scorer returns "
                        "{weight name: tensor of scores shaped like the weight} for the names it is given.")
    missing, extra = [n for n in weights if n not in scores], [n for n in scores if n not in weights]
    wrong = [f"{n} {tuple(s.shape) if torch.is_tensor(s) else type(s).__name__} (weight {tuple(weights[n].shape)})"
             for n, s in scores.items() if n in weights and not (torch.is_tensor(s) and s.shape == weights[n].shape)]
    if missing or extra or wrong:
        found = [f"{what}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                 for what, items in (("no score for", missing), ("scores no weight to mask", extra),
                                     ("wrong shape", wrong)) if items]
        raise MaskError(f"mask method '{name}' must score exactly the weights it is given, each with a tensor "
                        f"shaped like the weight; {'; '.join(found)}.")
    return {n: scores[n] for n in weights}


def own_scorer(score: Scorer) -> Method:
    """A user's scorer passed to ``find_masks`` as it is: a one-shot method named after the function,
    with the defaults of ``register`` (a layer-wise uniform budget; batches passed when given)."""
    name = getattr(score, "__name__", type(score).__name__)
    return Method(name, scored_masks(name, score), data=False, stage="oneshot", scope="layer",
                  about=(score.__doc__ or "").strip().split("\n")[0], score=score)


def method(name: str | Scorer) -> Method:
    """The method registered as ``name``, or ``own_scorer(name)`` for a scorer function."""
    if callable(name):
        return own_scorer(name)
    if name not in METHODS:
        raise MaskError(
            f"unknown mask method '{name}'." + did_you_mean(name, METHODS) + f" Known: {', '.join(sorted(METHODS))}."
        )
    return METHODS[name]


def refuse_allow_empty_layers(name: str | Method, scope: str | None = None) -> None:
    """A ``ConfigError`` when ``allow_empty_layers`` is set for a method and scope that cannot empty a layer
    (an unknown method is left to the check that names it)."""
    found = name if isinstance(name, Method) else METHODS.get(name)
    if found is not None and not found.can_empty_layers(scope):
        raise ConfigError(
            f"mask.allow_empty_layers is set, but mask method '{found.name}' with scope '{scope or found.scope}' cannot "
            "empty a layer: a layer-wise budget keeps at least 1 weight per layer. Drop allow_empty_layers, or "
            "rank all layers together (mask.scope: global) if that is what you meant."
        )


def find_masks(
    model: nn.Module,
    name: str | Scorer,
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
    """Masks from method ``name`` (a registered name, or a scorer function) at ``sparsity`` (fraction pruned)
    for ``model``'s prunable weights.

    A mask that keeps no weight of a layer, or cuts every path from input to output, is a ``MaskError``
    unless ``allow_empty_layers`` (then a warning lists the layers). ``example_input``: an input of the
    model (its first example is used) for that path check; default: the batches', else SynFlow's shape.
    """
    found = method(name)
    name = found.name
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
        refuse_allow_empty_layers(found, budget.scope)
    names = list(prunable_for(model, prunable, dense_first=dense_first, dense_last=dense_last, exclude=exclude))
    with norms_at_one(model, name, enabled=found.flow):
        masks = found.find(model, names, budget, batches=batches, seed=seed, **options)
    check_masks(model, masks, what=f"mask method '{name}' at sparsity {sparsity:g}", allow=allow_empty_layers,
                cause=found.collapse_cause(sparsity, budget.scope), can_allow=found.can_empty_layers(budget.scope),
                example=path_input(model, example_input, batches, options.get("input_shape")))
    return masks
