"""De-ghost: the one generic pass that strips every training-only tweak.

Each ghost node is replaced by what its module's ``strip(node)`` returns (GhostSkip:
its main input; a soft activation: the exact original activation node); ghost
modules, parameters and buffers disappear; masks are baked into the weights. The
result's state_dict keys equal the original model's. ``inplace=True`` edits a
model being trained (its non-ghost parameters keep their identity, so an
optimizer's state for them survives). A model compiled with ``submodule=`` is
de-ghosted part by part: each compiled submodule stays a GraphModule, now clean,
whose state_dict keys equal the original submodule's.
"""

from __future__ import annotations

from torch import fx, nn

from surgery.fx.collector import collector_paused
from surgery.errors import GhostError
from surgery.compiler.ghosts import GHOSTS_ROOT, Ghost
from surgery.fx.graph import deepcopy_module, module_of
from surgery.compiler.manifest import compiled_submodules, ensure_manifest
from surgery.compiler.masks import bake_masks, baked_copy
from surgery.fx.modes import editing


@collector_paused
def deghost(model: nn.Module, *, inplace: bool = False, keep_masks: bool = False) -> nn.Module:
    """Return ``model`` without ghosts and (unless ``keep_masks``) with masks baked into weights.

    ``model`` is what ``surgery.compile`` returned: a GraphModule, or the user's model with
    compiled submodules (``submodule=``), which comes back of the same class, each compiled
    part de-ghosted where it sits: a strict ``load_state_dict`` into a fresh instance works.
    """
    if not inplace:
        model = deepcopy_module(model) if keep_masks else baked_copy(model)
    parts = compiled_submodules(model)
    if not parts:
        raise GhostError(f"deghost: {type(model).__name__} holds no module made by surgery.compile; "
                         "de-ghost what surgery.compile(model, example_inputs, recipe[, submodule=...]) returned.")
    for gm in parts.values():
        strip_ghosts(gm)
        if not keep_masks:
            bake_masks(gm)
        ensure_manifest(gm).deghosted = True
    return model


def strip_ghosts(gm: fx.GraphModule, kind: type[Ghost] = Ghost) -> int:
    """Replace every ghost node of type ``kind`` by its ``strip`` result; returns how many. A module
    with one program per mode (``surgery.fx.modes``) is stripped in both."""
    with editing(gm):
        return _strip(gm, kind)


def _strip(gm: fx.GraphModule, kind: type[Ghost]) -> int:
    graph = gm.graph
    stripped: set[str] = set()  # a ghost both modes' programs call is one module (surgery.fx.modes)
    for node in list(graph.nodes):
        ghost = module_of(gm, node)
        if not isinstance(ghost, kind):
            continue
        replacement = ghost.strip(node)
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
        stripped.add(node.target)
    for target in stripped:
        gm.delete_submodule(target)
    _drop_empty_ghost_root(gm)
    graph.lint()
    gm.recompile()
    return len(stripped)


def _drop_empty_ghost_root(gm: fx.GraphModule) -> None:
    root = getattr(gm, GHOSTS_ROOT, None)
    if isinstance(root, nn.Module) and not any(isinstance(m, Ghost) for m in root.modules()):
        delattr(gm, GHOSTS_ROOT)
