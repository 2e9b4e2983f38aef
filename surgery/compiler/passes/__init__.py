"""Graph passes, one per file; each a documented ``GraphModule -> GraphModule`` function.

``REGISTRY`` maps a recipe section name to its pass function and options class.
"""

from surgery.compiler.passes.attach_masks import MaskOptions, attach_masks
from surgery.compiler.passes.deghost import deghost, strip_ghosts
from surgery.compiler.passes.ghost_skip import GhostSkipOptions, ghost_skip
from surgery.compiler.passes.soft_activation import SoftActivationOptions, soft_activation

REGISTRY = {
    "ghost_skip": (ghost_skip, GhostSkipOptions),
    "soft_activation": (soft_activation, SoftActivationOptions),
    "masks": (attach_masks, MaskOptions),
}

__all__ = [
    "REGISTRY",
    "GhostSkipOptions",
    "MaskOptions",
    "SoftActivationOptions",
    "attach_masks",
    "deghost",
    "ghost_skip",
    "soft_activation",
    "strip_ghosts",
]
