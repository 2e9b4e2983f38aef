"""The record a compiled module carries of what every pass did (reports, coverage, de-ghosting)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import fx

from surgery.errors import SurgeryError

MANIFEST_KEY = "surgery.manifest"


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
    kind: str  # pswish | swish | mish


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
    what: str  # conv | activation


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


def ghost_cost(ghost_parameters: int, kept_weights: int | None) -> str:
    """e.g. '174,080 dense training-only parameters = 78% of the 223,000 kept weights'."""
    if not ghost_parameters:
        return "0 parameters (identity or parameter-free skips, soft activations)"
    text = f"{ghost_parameters:,} dense training-only parameters"
    if kept_weights:
        text += f" = {ghost_parameters / kept_weights:.0%} of the {kept_weights:,} kept weights"
    return text


def _distinct(items):
    return list(dict.fromkeys(items))


def manifest_of(gm: fx.GraphModule) -> Manifest:
    """The manifest ``surgery.compile`` attached to ``gm``."""
    manifest = getattr(gm, "meta", {}).get(MANIFEST_KEY)
    if manifest is None:
        raise SurgeryError(
            f"{type(gm).__name__} has no surgery manifest: it was not made by surgery.compile(...)."
        )
    return manifest


def ensure_manifest(gm: fx.GraphModule) -> Manifest:
    """The module's manifest, created empty when a pass runs outside ``surgery.compile``."""
    if MANIFEST_KEY not in gm.meta:
        gm.meta[MANIFEST_KEY] = Manifest(model=type(gm).__name__)
    return gm.meta[MANIFEST_KEY]
