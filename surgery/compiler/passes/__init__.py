"""Graph passes, one per file; each a documented ``GraphModule -> GraphModule`` function.

``REGISTRY`` maps a recipe section name to its pass function and options class; a pass
file registers itself (``@register``, ``registry.py``), and importing this package imports
every file in it, so a new pass is one new file.
"""

import importlib
import pkgutil

from surgery.compiler.passes.attach_masks import MaskOptions, attach_masks
from surgery.compiler.passes.deghost import deghost, strip_ghosts
from surgery.compiler.passes.ghost_skip import GhostSkipOptions, ghost_skip
from surgery.compiler.passes.registry import REGISTRY, Pass, register
from surgery.compiler.passes.soft_activation import SoftActivationOptions, soft_activation

for _found in pkgutil.iter_modules(__path__):  # the passes not named above register on import too
    importlib.import_module(f"{__name__}.{_found.name}")

__all__ = [
    "REGISTRY",
    "GhostSkipOptions",
    "MaskOptions",
    "Pass",
    "SoftActivationOptions",
    "attach_masks",
    "deghost",
    "ghost_skip",
    "register",
    "soft_activation",
    "strip_ghosts",
]
