"""tost-surgery: train sparse networks better, on any architecture, verified.

    gm      = surgery.trace(model, leaf_modules=())
    ghosted = surgery.compile(model, example_inputs, recipe)     # submodule="backbone": that part only
    surgery.set_ghost_strength(ghosted, alpha=..., beta=...)
    clean   = surgery.deghost(ghosted)
    report  = surgery.verify(model, clean, example_inputs)
    info    = surgery.export_onnx(clean, example_inputs, "m.onnx", sparse=True)
    tost    = surgery.ToST(model, example_inputs, "tost", total_steps=...)   # ToST in your own loop

Training (schedules, de-ghosting before the first LR decay, checkpoints, DDP, reports) is
``surgery.train``: ``surgery.train.run(surgery.train.RunConfig.from_yaml(path))``.
"""

from surgery.compiler.driver import compile
from surgery.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DivergedError,
    ExportError,
    GhostError,
    GhostsRemainError,
    InputSizeError,
    SpecializedInputError,
    MaskError,
    ModeError,
    NoTargetsError,
    RecipeError,
    ReportError,
    ShapePropagationError,
    SubmoduleError,
    SurgeryError,
    SweepError,
    ToSTError,
    TraceError,
    UnknownModelError,
    VerificationError,
)
from surgery.compiler.ghosts import ghost_parameters, set_ghost_strength
from surgery.compiler.manifest import Manifest, compiled_submodules, manifest_of
from surgery.compiler.passes.deghost import deghost
from surgery.compiler.preprocessing import Preprocessing
from surgery.compiler.recipe import Recipe
from surgery.fx.tracing import trace
from surgery.compiler.verify import VerifyReport, verify

from surgery.version import __version__  # noqa: F401 (the public face's version)


def __getattr__(name: str):
    """Loaded on first use, so ``import surgery`` stays quick and the compiler stays usable without the rest:
    ``export_onnx`` / ``ExportInfo`` load onnx; ``ToST`` loads the training runtime (its losses and presets)."""
    if name in ("ExportInfo", "export_onnx"):
        from surgery.compiler import export

        return getattr(export, name)
    if name == "ToST":
        from surgery.apps.tost import ToST

        return ToST
    raise AttributeError(f"module 'surgery' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DivergedError",
    "ExportError",
    "ExportInfo",
    "GhostError",
    "GhostsRemainError",
    "InputSizeError",
    "SpecializedInputError",
    "Manifest",
    "MaskError",
    "NoTargetsError",
    "Preprocessing",
    "Recipe",
    "RecipeError",
    "ReportError",
    "ShapePropagationError",
    "SubmoduleError",
    "SurgeryError",
    "SweepError",
    "ToST",
    "ToSTError",
    "TraceError",
    "UnknownModelError",
    "VerificationError",
    "VerifyReport",
    "compile",
    "compiled_submodules",
    "deghost",
    "export_onnx",
    "ghost_parameters",
    "manifest_of",
    "set_ghost_strength",
    "trace",
    "verify",
]
