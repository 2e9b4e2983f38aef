"""Every error a user can cause. Each message names the offending thing and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SurgeryError(Exception):
    """Base class of every error tost-surgery raises for a user's input."""


class TraceError(SurgeryError):
    """torch.fx could not trace the model (or a module inside it)."""


class ModeError(SurgeryError):
    """A compiled model with one program per mode run with its modules in different modes."""


class SubmoduleError(SurgeryError):
    """A ``submodule`` path that names no module of the model, or one the forward never calls."""


class ShapePropagationError(TraceError):
    """The traced graph could not run on the example inputs (wrong inputs, or meta without kernels)."""


class RecipeError(SurgeryError):
    """A recipe names an unknown pass or option, or gives an option a bad value."""


class MaskError(SurgeryError):
    """A mask does not fit the model: unknown name, wrong shape, or values other than 0/1."""


class NoTargetsError(SurgeryError):
    """A pass found nothing to act on (e.g. the skip pass in a model without convs)."""


class GhostError(SurgeryError):
    """A ghost strength that is not a finite number >= 0, or set on a model that holds no ghosts."""


class GhostsRemainError(SurgeryError):
    """An operation that needs a clean model got one that still holds ghosts or masks."""


class UnknownModelError(SurgeryError):
    """A `torchvision:NAME`, `timm:NAME`, `hf:ModelClass` or `file.py:factory` model spec that resolves to nothing."""


class InputSizeError(SurgeryError):
    """An input size that does not fit the model's task: a video model needs T,H,W, RAFT multiples of 8."""


class SpecializedInputError(SurgeryError):
    """A model traced specialized to its example inputs' shapes and dtypes (``surgery.fx.concrete``),
    called with an input of another shape or dtype."""


class VerificationError(SurgeryError):
    """The de-ghosted model differs from the original: graph, state_dict or outputs."""


class ExportError(SurgeryError):
    """ONNX export failed its checker or its onnxruntime parity check."""


class ConfigError(SurgeryError):
    """A training config names an unknown optimizer, schedule or field, or gives one a bad value."""


class DataError(SurgeryError):
    """A dataset name that resolves to nothing, or data that is missing or malformed on disk."""


class CheckpointError(SurgeryError):
    """A weights or checkpoint file that is missing, unreadable or holds no state_dict (``surgery.compiler.
    weight_files``), a checkpoint that is truncated or corrupt, or one that does not match the config it is
    resumed with."""


class DivergedError(SurgeryError):
    """Training produced a NaN or infinite loss."""


class ToSTError(SurgeryError):
    """``surgery.ToST`` used out of order (a step after finish), with an optimizer that does not train
    the ghosted model, or with a removal step outside the run."""


class MissingExtraError(SurgeryError, ImportError):
    """An optional integration was imported without its extra installed (e.g. ``tost-surgery[lightning]``)."""


class SweepError(SurgeryError):
    """A sweep's grid, seeds, launcher or output directory cannot be used as given."""


class ReportError(SurgeryError):
    """A run directory lacks what a report is made from (metrics, config)."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """A ' Did you mean ...?' suffix listing close matches, or '' when none are close."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.6)
    if not close:
        return ""
    return " Did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
