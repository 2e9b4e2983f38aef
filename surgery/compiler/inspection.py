"""What a compile reached, as one plain mapping (``surgery inspect`` prints it, ``--json`` as is): the manifest's
summary with the model's parameters, the part compiled, the maskable weights, the leaves and what they hid."""

from __future__ import annotations

from collections import Counter
from typing import Any

from torch import nn
from torch.utils._pytree import tree_map

from surgery.compiler.driver import leaf_modules_in
from surgery.compiler.manifest import compiled_submodules, ghost_cost, manifest_of
from surgery.compiler.masks import prunable_weights
from surgery.compiler.submodules import within
from surgery.fx.graph import device_of


def inspection_report(model: nn.Module, ghosted: nn.Module, inputs: tuple, sparsity: float | None = None) -> dict[str, Any]:
    """``model`` compiled into ``ghosted`` on ``inputs``. ``sparsity``: size the ghosts' cost against what a mask
    of that sparsity keeps, where the recipe attached no masks."""
    manifest = manifest_of(ghosted)
    summary = manifest.summary()
    parts = [path for path in compiled_submodules(ghosted) if path]  # empty: the whole model was compiled
    maskable = {name: w for name, w in prunable_weights(model).items() if within(name, parts)}
    maskable_parameters = sum(w.numel() for w in maskable.values())
    kept = summary["kept_weights"]
    if kept is None and sparsity is not None:
        kept = round(maskable_parameters * (1 - sparsity))
    total = parameter_count(model)
    compiled = sum(parameter_count(model.get_submodule(p)) for p in parts) if parts else total
    return {
        "class": summary.pop("model"),
        "input_shape": tree_map(lambda t: list(t.shape), inputs[0] if len(inputs) == 1 else list(inputs)),
        "device": str(device_of(model)),
        "parameters": total,
        "submodules": parts,
        "parameters_compiled": compiled,
        "parameters_outside": total - compiled,
        "left_outside": [name for name, _ in model.named_children() if parts and not within(name + ".", parts)],
        **{k: v for k, v in summary.items() if k not in ("deghosted", "kept_weights", "submodules")},
        "kept_weights": kept,
        "sparsity": sparsity,  # what a mask would keep, for the ghost-cost comparison only
        "ghost_cost": ghost_cost(summary["ghost_parameters"], kept),
        "activations_by_original": dict(Counter(a.original for a in manifest.activations)),
        "activations_unreached": sum(1 for u in manifest.unreached if u.what == "activation"),
        "maskable_weights": len(maskable),
        "maskable_parameters": maskable_parameters,
        "leaf_modules": [{"module": f"{part}.{path}" if part else path, "class": cls}
                         for part, gm in compiled_submodules(ghosted).items() for path, cls in leaf_modules_in(gm)],
        "unreached": [
            {"module": u.module, "class": u.cls, "inside": u.inside, "what": u.what} for u in manifest.unreached
        ],
        "not_targeted": [{"site": site, "kind": kind} for site, kind in manifest.untargeted],
        "skipped": [{"site": site, "why": why} for site, why in manifest.skipped],
        "mode_branches": [
            {"module": b.module or "(the model)", "class": b.cls, "where": b.where, "code": b.code,
             "modes": " and ".join(b.modes)} for b in manifest.mode_branches
        ],
    }


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
