"""compile(): trace a copy of the model, propagate shapes, run the recipe's passes in order.

The user's model is never modified: the graph module owns deep copies of its
parameters. After each pass the graph is linted and recompiled, and the pass has
recorded what it did in the manifest (``surgery.manifest_of(gm)``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import fx, nn

from surgery.ghosts import Ghost, ghost_parameters
from surgery.graph import as_tuple, deepcopy_module, module_of, propagate_shapes
from surgery.layers import FORWARD_CONV_TYPES
from surgery.manifest import MANIFEST_KEY, Manifest, Unreached
from surgery.passes import REGISTRY
from surgery.passes.soft_activation import ACTIVATIONS
from surgery.recipe import Recipe
from surgery.tracing import STRUCTURAL_LEAVES, trace

ACTIVATION_TYPES = tuple(t for spelling in ACTIVATIONS.values() for t in spelling.modules)


def compile(
    model: nn.Module,
    example_inputs: Any,
    recipe: Recipe | Mapping[str, Any] | str | os.PathLike | None = None,
    *,
    leaf_modules: Sequence[Any] = (),
    concrete_args: dict[str, Any] | None = None,
) -> fx.GraphModule:
    """Return a ghosted ``fx.GraphModule`` of ``model`` built by ``recipe``'s passes.

    ``example_inputs`` (a tensor or a tuple) size the skips' projections by shape
    propagation; they are moved to the model's device (meta models get meta inputs).
    """
    recipe = Recipe.coerce(recipe)
    leaves = tuple(recipe.leaf_modules) + tuple(leaf_modules)
    inputs = as_tuple(example_inputs)
    gm = deepcopy_module(trace(model, leaves, concrete_args, num_inputs=len(inputs)))
    cls = type(model)
    manifest = Manifest(model=f"{cls.__module__}.{cls.__qualname__}")
    manifest.unreached = out_of_reach(gm)
    gm.meta[MANIFEST_KEY] = manifest
    propagate_shapes(gm, inputs)
    for name, options in recipe.passes:
        run_pass, _ = REGISTRY[name]
        gm = run_pass(gm, options)
        gm.graph.lint()
        gm.recompile()
    manifest.ghost_parameters = sum(p.numel() for p in ghost_parameters(gm))
    return gm


def out_of_reach(gm: fx.GraphModule) -> list[Unreached]:
    """Convs and activations hidden inside leaf modules, where no pass can see them."""
    found: list[Unreached] = []
    seen: set[str] = set()
    for node in gm.graph.nodes:
        leaf = module_of(gm, node)
        if leaf is None or node.target in seen or isinstance(leaf, (Ghost, *STRUCTURAL_LEAVES)):
            continue
        seen.add(node.target)
        for name, sub in leaf.named_modules():
            what = "conv" if isinstance(sub, FORWARD_CONV_TYPES) else "activation" if isinstance(sub, ACTIVATION_TYPES) else None
            if what and name:
                found.append(Unreached(f"{node.target}.{name}", type(sub).__name__, node.target, what))
    return found


def leaf_modules_in(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """``(path, class)`` of every module the graph calls opaquely that is not one of torch.nn's own."""
    leaves: dict[str, str] = {}
    for node in gm.graph.nodes:
        module = module_of(gm, node)
        if module is None or isinstance(module, Ghost):
            continue
        cls = type(module)
        if not cls.__module__.startswith("torch.nn"):
            leaves.setdefault(node.target, f"{cls.__module__}.{cls.__qualname__}")
    return sorted(leaves.items())
