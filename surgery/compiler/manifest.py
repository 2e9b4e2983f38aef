"""The record a compiled module carries of what every pass did (reports, coverage, de-ghosting)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from torch import fx, nn

from surgery.errors import SurgeryError

MANIFEST_KEY = "surgery.compiler.manifest"


@dataclass
class SkipRecord:
    site: str  # the conv's call site: module path, or node name for a functional conv
    kind: str  # the site's kind (ghost_skip.SITE_KINDS): conv | stem | pooled | pointwise | linear
    ghost: str  # qualified name of the GhostSkip module
    projection: str  # identity | conv1x1 | parameter_free | linear
    anchor: str  # node whose output the skip is added to (the norm after the conv, or the conv)
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


@dataclass
class ActivationRecord:
    site: str  # module path, or node name for a functional / method activation
    original: str  # e.g. "nn.ReLU(inplace=True)", "F.relu", "Tensor.relu_"
    ghost: str
    kind: str  # pswish | swish | mish, or the dotted name of a module class / factory given in Python


@dataclass
class MaskRecord:
    param: str
    shape: tuple[int, ...]
    sparsity: float


@dataclass
class Unreached:
    module: str  # qualified name of a conv / activation the graph cannot see
    cls: str
    inside: str  # the leaf module that hides it
    what: str  # conv | linear | activation


@dataclass
class Manifest:
    model: str
    passes: list[str] = field(default_factory=list)
    skips: list[SkipRecord] = field(default_factory=list)
    activations: list[ActivationRecord] = field(default_factory=list)
    masks: list[MaskRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (site, why no ghost was added)
    untargeted: list[tuple[str, str]] = field(default_factory=list)  # (conv site, its kind) outside ghost_skip.targets
    unreached: list[Unreached] = field(default_factory=list)
    conv_sites: int = 0  # conv call sites the graph holds
    ghost_parameters: int = 0  # training-only parameters the ghosts add (projection convs and norms)
    deghosted: bool = False
    submodules: list[str] = field(default_factory=list)  # compiled submodules by path; empty: the whole model
    mode_graphs: int = 1  # 2: the forward branches on self.training, one program per mode (surgery.fx.modes)
    mode_branches: list[Any] = field(default_factory=list)  # surgery.fx.branches.Branch: where the modes part ways
    # the input shapes and dtypes a shape-specialized trace holds (surgery.fx.concrete); empty: any shape
    specialized_to: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        unreached_convs = [u for u in self.unreached if u.what == "conv"]
        conv_skips = [s for s in self.skips if s.kind != "linear"]
        return {
            "model": self.model,
            "passes": list(self.passes),
            "convs_found": self.conv_sites + len(unreached_convs),
            "convs_targeted": self.conv_sites - len(self.untargeted) if "ghost_skip" in self.passes else 0,
            "convs_covered": len(conv_skips),
            "convs_not_targeted": dict(Counter(kind for _, kind in self.untargeted)),
            "linears_covered": len(self.skips) - len(conv_skips),
            "projections": {p: sum(1 for s in self.skips if s.projection == p) for p in _distinct(s.projection for s in self.skips)},
            "activations_swapped": len(self.activations),
            "weights_masked": len(self.masks),
            "kept_weights": self.kept_weights(),
            "ghost_parameters": self.ghost_parameters,
            "convs_unreached": len(unreached_convs),
            "deghosted": self.deghosted,
            "submodules": list(self.submodules),
            "mode_graphs": self.mode_graphs,
            "specialized_to": list(self.specialized_to),
        }

    def kept_weights(self) -> int | None:
        """Weights the masks keep (None: no masks)."""
        if not self.masks:
            return None
        return round(sum(math.prod(m.shape) * (1 - m.sparsity) for m in self.masks))

    def ghost_cost(self) -> str:
        """The ghosts' training-only parameters next to what the masks keep, in words."""
        return ghost_cost(self.ghost_parameters, self.kept_weights())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ghost_cost(ghost_parameters: int, kept_weights: int | None, kept: bool = False) -> str:
    """e.g. '174,080 dense training-only parameters = 78% of the 223,000 kept weights'; ``kept``: the ghosts
    stay in the trained model, so their parameters are not training-only."""
    if not ghost_parameters:
        return "0 parameters (identity or parameter-free skips, soft activations)"
    text = f"{ghost_parameters:,} " + ("dense parameters kept in the trained model" if kept else "dense training-only parameters")
    if kept_weights:
        text += f" = {ghost_parameters / kept_weights:.0%} of the {kept_weights:,} kept weights"
    return text


def _distinct(items):
    return list(dict.fromkeys(items))


def manifest_of(model: nn.Module) -> Manifest:
    """The manifest ``surgery.compile`` attached to ``model``.

    For a model compiled with ``submodule=``, one manifest of the whole model: every
    submodule's records with names qualified in the whole model (``backbone.body.0.0``),
    ``submodules`` listing the compiled paths; a view, built on each call.
    """
    parts = compiled_submodules(model)
    if "" in parts:
        manifest = parts[""].meta.get(MANIFEST_KEY)
    else:
        manifest = _whole(model, parts) if parts else None
    if manifest is None:
        raise SurgeryError(
            f"{type(model).__name__} has no surgery manifest: it was not made by surgery.compile(...)."
        )
    return manifest


def compiled_submodules(model: nn.Module) -> dict[str, fx.GraphModule]:
    """The graph modules ``surgery.compile`` made, by path: ``{"": model}`` when ``model`` is one
    itself (a whole-model compile), else every outermost GraphModule inside it carrying a manifest
    (``submodule=`` compiles: ``{"backbone": ...}``)."""
    if isinstance(model, fx.GraphModule):
        return {"": model}
    found: dict[str, fx.GraphModule] = {}
    for path, module in model.named_modules():
        inside = any(path.startswith(outer + ".") for outer in found)
        if isinstance(module, fx.GraphModule) and MANIFEST_KEY in module.meta and not inside:
            found[path] = module
    return found


def _whole(model: nn.Module, parts: dict[str, fx.GraphModule]) -> Manifest:
    cls = type(model)
    whole = Manifest(model=f"{cls.__module__}.{cls.__qualname__}", submodules=list(parts))
    for path, gm in parts.items():
        part = ensure_manifest(gm)

        def at(name: str, path: str = path) -> str:
            return f"{path}.{name}"

        whole.passes += [name for name in part.passes if name not in whole.passes]
        whole.skips += [replace(s, site=at(s.site), ghost=at(s.ghost)) for s in part.skips]
        whole.activations += [replace(a, site=at(a.site), ghost=at(a.ghost)) for a in part.activations]
        whole.masks += [replace(m, param=at(m.param)) for m in part.masks]
        whole.skipped += [(at(site), why) for site, why in part.skipped]
        whole.untargeted += [(at(site), kind) for site, kind in part.untargeted]
        whole.unreached += [replace(u, module=at(u.module), inside=at(u.inside)) for u in part.unreached]
        whole.conv_sites += part.conv_sites
        whole.ghost_parameters += part.ghost_parameters
        whole.mode_graphs = max(whole.mode_graphs, part.mode_graphs)
        whole.specialized_to += [f"{path}: {shape}" for shape in part.specialized_to]
        whole.mode_branches += [replace(b, module=f"{path}.{b.module}".rstrip(".")) for b in part.mode_branches]
    whole.deghosted = all(ensure_manifest(gm).deghosted for gm in parts.values())
    return whole


def ensure_manifest(gm: fx.GraphModule) -> Manifest:
    """The module's manifest, created empty when a pass runs outside ``surgery.compile``."""
    if MANIFEST_KEY not in gm.meta:
        gm.meta[MANIFEST_KEY] = Manifest(model=type(gm).__name__)
    return gm.meta[MANIFEST_KEY]
