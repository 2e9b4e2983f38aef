"""Model specs: "torchvision:resnet18", "timm:convnext_tiny", "cifar:resnet20", "hf:ViTForImageClassification",
"path/to/file.py:factory".

Every model is built with random weights: nothing downloads. ``cifar:NAME`` builds
one of the papers' CIFAR networks (``surgery.zoo.cifar``: ResNet-18/34/50 with a 3x3 stem,
He et al.'s ResNet-20..110, VGG-11..19 with BatchNorm), 10 classes and 32x32 inputs
by default. ``hf:ModelClass`` builds a Hugging Face transformers model from a small config
(``surgery.zoo.hf``). A spec that resolves to nothing is an ``UnknownModelError`` naming it,
suggesting close matches and listing the accepted forms. A new family of models is
one builder function plus one entry in ``SOURCES``. Also here: the input size a
model expects, and strict loading of a state_dict file into a built model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surgery.compiler.ghosts import GHOSTS_ROOT
from surgery.compiler.masks import is_mask_file
from surgery.compiler.weight_files import SAFETENSORS_SUFFIX, read_state_dict
from surgery.errors import SurgeryError, UnknownModelError, did_you_mean
from surgery.fx.layers import FORWARD_CONV_TYPES
from surgery.init.rewind import plain_key
from surgery.zoo.cifar import CIFAR_INPUT_SIZE, CIFAR_MODELS
from surgery.zoo.tasks import TASKS, builder_kwargs, builders, task_of

FORMS = "torchvision:NAME, timm:NAME, cifar:NAME, hf:ModelClass[:config.json] or path/to/file.py:factory"
GIVEN_IN_PYTHON = "python"  # ``python:module.Class``: what a run records of a model given in Python; it builds nothing
DEFAULT_INPUT_SIZE = 224
TORCHVISION_INPUT_SIZES = {"inception_v3": 299}


def build_model(spec: str, num_classes: int | None = None, *, input_size: int | tuple[int, ...] | None = None,
                **kwargs: Any) -> nn.Module:
    """Build the model ``spec`` names, with random weights; ``kwargs`` go to its constructor.

    ``num_classes=None`` keeps the model's own default head. ``input_size``: the side of
    the images it will see (or a video's T,H,W), for models whose constructor fixes it
    (``SIZE_ARGUMENTS``). Build inside ``with torch.device("meta"):`` to get a weightless
    model for fast inspection.
    """
    source, _, name = spec.partition(":")
    if source == GIVEN_IN_PYTHON:
        raise UnknownModelError(
            f"model '{spec}' was given in Python (surgery.train.run(config, model=...)), so no spec builds it: "
            f"give the network again, e.g. surgery.train.run(RunConfig.from_yaml('RUN_DIR/config.yaml'), "
            f"model={name.rsplit('.', 1)[-1]}(...), resume=True), or set model.spec to a spec that builds it.")
    if source in SOURCES and name:
        if input_size is not None and source in SIZE_ARGUMENTS:
            side = input_size if isinstance(input_size, int) else input_size[-1]
            kwargs = {**SIZE_ARGUMENTS[source](name, side), **kwargs}
        return SOURCES[source](name, num_classes, **kwargs)
    file_spec = _split_file_spec(spec)
    if file_spec:
        path, factory = file_spec
        return build_from_file(Path(path), factory, num_classes, **kwargs)
    raise UnknownModelError(_bad_form_message(spec))


def python_spec(model: nn.Module) -> str:
    """The spec a run records of a model given in Python: its class, which no spec can rebuild."""
    return f"{GIVEN_IN_PYTHON}:{qualified_name(model)}"


def qualified_name(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def build_torchvision(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """A torchvision model of any task family (``surgery.zoo.tasks``): classification, segmentation, detection,
    video, optical flow. ``weights=None`` and ``weights_backbone=None``: random init, nothing downloads."""
    import torchvision

    known = torchvision_models()
    if name not in known:
        raise UnknownModelError(_unknown_torchvision_message(name, known, torchvision.models.list_models()))
    task = task_of(f"torchvision:{name}")
    return torchvision.models.get_model(name, weights=None, **{**builder_kwargs(name, task, num_classes), **kwargs})


def torchvision_models() -> list[str]:
    """Every torchvision builder of the task families surgery knows (``surgery.zoo.tasks.TASKS``)."""
    return [name for task in TASKS.values() for name in builders(task)]


def build_timm(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """A timm model (``pretrained=False``: random init, no download). A pretrained tag is allowed."""
    import timm

    if not timm.is_model(name):
        raise UnknownModelError(
            f"timm has no model '{name}'." + did_you_mean(name, timm.list_models())
            + " List them with timm.list_models('*pattern*')."
        )
    architecture, _, tag = name.partition(".")
    tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{architecture}.*")]
    if tag and tag not in tags:  # timm itself raises a bare RuntimeError for it
        raise UnknownModelError(
            f"timm's {architecture} has no pretrained tag '{tag}'." + did_you_mean(tag, tags)
            + f" Its tags: {', '.join(tags) or 'none'} (or leave the tag out)."
        )
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return timm.create_model(name, pretrained=False, **kwargs)


def build_cifar(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """One of surgery's CIFAR networks (``surgery.zoo.cifar``); ``num_classes=None`` means 10."""
    if name not in CIFAR_MODELS:
        raise UnknownModelError(
            f"surgery has no CIFAR model '{name}'." + did_you_mean(name, CIFAR_MODELS)
            + f" CIFAR models: {', '.join(CIFAR_MODELS)}."
        )
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return CIFAR_MODELS[name](**kwargs)


def build_from_file(path: Path, factory: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Import ``path`` and call ``factory``; ``num_classes`` is passed only if given and accepted."""
    module = import_file(path)
    fn = getattr(module, factory, None) if factory else None
    if not callable(fn):
        choices = factories_in(module)
        what = f"has no factory '{factory}'" if factory else "was given without a factory"
        raise UnknownModelError(
            f"'{path}' {what}." + did_you_mean(factory, choices)
            + f" Callables it defines: {choices or 'none'}. Spec form: {path}:factory."
        )
    if num_classes is not None and _accepts(fn, "num_classes"):
        kwargs["num_classes"] = num_classes
    elif num_classes is not None:
        warnings.warn(f"'{path}:{factory}' takes no num_classes argument; ignoring num_classes={num_classes}.")
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise UnknownModelError(
            f"'{path}:{factory}' returned {type(model).__name__}, not a torch.nn.Module; "
            "name a model class or a function that returns a model."
        )
    return model


def build_hf(name: str, num_classes: int | None = None, **fields: Any) -> nn.Module:
    """A Hugging Face transformers model (``surgery.zoo.hf``); ``fields`` are its config's."""
    from surgery.zoo import hf  # lazily: the optional transformers side (the [hf] extra)

    return hf.build_hf(name, num_classes, **fields)


def hf_size_arguments(name: str, input_size: int) -> dict[str, Any]:
    from surgery.zoo import hf  # lazily: the optional transformers side (the [hf] extra)

    return hf.hf_size_arguments(name, input_size)


SOURCES: dict[str, Callable[..., nn.Module]] = {
    "torchvision": build_torchvision,
    "timm": build_timm,
    "cifar": build_cifar,
    "hf": build_hf,
}


def timm_size_arguments(name: str, input_size: int) -> dict[str, Any]:
    """``img_size`` for a timm model whose pretrained config says its input size is fixed:
    timm's own rule for which constructors take one (``fixed_input_size``, e.g. ViT, Swin)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name) if timm.is_model(name) else None  # unknown: build_timm says so
    return {"img_size": input_size} if cfg is not None and cfg.fixed_input_size else {}


def torchvision_size_arguments(name: str, input_size: int) -> dict[str, Any]:
    """``min_size`` / ``max_size`` for a detection model whose class resizes its images to them (R-CNNs,
    RetinaNet, FCOS; SSD has a fixed size): its backbone then sees the S x S images as they are given."""
    import inspect

    import torchvision

    if name not in torchvision_models():
        return {}  # build_torchvision says so
    model_class = inspect.signature(torchvision.models.get_model_builder(name)).return_annotation
    takes_sizes = inspect.isclass(model_class) and "min_size" in inspect.signature(model_class).parameters
    return {"min_size": input_size, "max_size": input_size} if takes_sizes else {}


# Constructor arguments that build a source's model for S x S inputs; sources not listed take any size
# (torchvision's classifiers and surgery's CIFAR networks pool globally before their classifier).
SIZE_ARGUMENTS: dict[str, Callable[[str, int], dict[str, Any]]] = {
    "timm": timm_size_arguments,
    "torchvision": torchvision_size_arguments,
    "hf": hf_size_arguments,
}


# ---------------------------------------------------------------- model files


def import_file(path: Path):
    """Import a Python file by path as a module (registered in sys.modules, so its classes pickle)."""
    path = Path(path)
    if not path.is_file():
        raise UnknownModelError(f"model file '{path}' does not exist. Spec forms: {FORMS}.")
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:8]
    # the file's own stem reads best in messages; a name already taken gets the path's digest
    taken = sys.modules.get(resolved.stem)
    free = taken is None or getattr(taken, "__file__", None) == str(resolved)
    name = resolved.stem if resolved.stem.isidentifier() and free else f"{resolved.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def factories_in(module) -> list[str]:
    """Public functions and classes the module itself defines (not the ones it imports)."""
    return sorted(
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and getattr(obj, "__module__", None) == module.__name__
    )


def _accepts(fn: Callable, argument: str) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True  # builtins and C callables: let the call decide
    return any(p.name == argument or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _split_file_spec(spec: str) -> tuple[str, str] | None:
    """``(path, factory)`` of a ``file.py:factory`` spec (factory '' when left out), else None."""
    if spec.endswith(".py"):
        return spec, ""
    path, sep, factory = spec.rpartition(":")
    return (path, factory) if sep and path.endswith(".py") else None


# ------------------------------------------------------------------ messages


def _bad_form_message(spec: str) -> str:
    source, sep, name = spec.partition(":")
    if sep and not name and source in SOURCES:
        return f"model spec '{spec}' names no model after '{source}:'. Spec forms: {FORMS}."
    if sep and name:
        return (
            f"model spec '{spec}': unknown source '{source}'." + did_you_mean(source, SOURCES)
            + f" Spec forms: {FORMS}."
        )
    return f"model spec '{spec}' is not one of the accepted forms: {FORMS}." + _bare_name_hint(spec)


def _bare_name_hint(name: str) -> str:
    """Suggest the prefixed spec when a bare name is a torchvision, timm, CIFAR or supported hf: model."""
    import timm

    from surgery.zoo.hf import SMALL_CONFIGS  # lazily: the optional transformers side (the [hf] extra)

    hits = [f"torchvision:{name}"] if name in torchvision_models() else []
    if timm.is_model(name):
        hits.append(f"timm:{name}")
    if name in CIFAR_MODELS:
        hits.append(f"cifar:{name}")
    if name in SMALL_CONFIGS:
        hits.append(f"hf:{name}")
    return (" Did you mean " + " or ".join(f"'{h}'" for h in hits) + "?") if hits else ""


def _unknown_torchvision_message(name: str, known: list[str], everything: list[str]) -> str:
    families = ", ".join(f"torchvision.models.{t.module}" if t.module else "torchvision.models" for t in TASKS.values())
    if name in everything:
        return (f"torchvision model '{name}' is in none of the families surgery builds ({families}); "
                "for a quantized model, build its float version (e.g. resnet18 for quantized_resnet18).")
    return (
        f"torchvision has no model '{name}'." + did_you_mean(name, known)
        + " List them with torchvision.models.list_models(module=torchvision.models.detection) (or .segmentation, "
        ".video, .optical_flow; torchvision.models for classifiers)."
    )


# ---------------------------------------------------------------- input size


def default_input_size(model: nn.Module, spec: str = "") -> int:
    """The side of the square image the model expects: timm's pretrained_cfg, else 32 for
    ``cifar:`` specs, else torchvision's, else an ``hf:`` model's config's, else 224."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size"):
        return int(cfg["input_size"][-1])
    source, _, name = spec.partition(":")
    if source == "cifar":
        return CIFAR_INPUT_SIZE
    if source == "torchvision":
        return TORCHVISION_INPUT_SIZES.get(name, DEFAULT_INPUT_SIZE)
    if source == "hf":
        from surgery.zoo.hf import hf_input_size  # lazily: the optional transformers side (the [hf] extra)

        return hf_input_size(model)
    return DEFAULT_INPUT_SIZE


def input_channels(model: nn.Module, default: int = 3) -> int:
    """In-channels of the model's first conv (1 for a grayscale model), else ``default``."""
    for module in model.modules():
        if isinstance(module, FORWARD_CONV_TYPES):  # the stem: a transposed conv does not read the input
            return module.in_channels
    return default


# ------------------------------------------------------------------- weights


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a weights file into ``model`` strictly: a state_dict (.safetensors, or .pt / .pth / .bin read
    with ``torch.load(weights_only=True)``) or a trainer checkpoint (its model's weights, masks baked in).
    A mask file, or weights that do not fit, is a ``SurgeryError`` saying what the file is and what to do."""
    path = Path(path)
    if path.suffix == SAFETENSORS_SUFFIX and is_mask_file(path):
        raise SurgeryError(f"'{path}' is a mask file, not weights: pass it as --masks {path} "
                           "(Python: load_masks, or a recipe's masks section).")
    state = plain_weights(read_state_dict(path), path)
    _check_weights_fit(model, state, path)
    model.load_state_dict(state, strict=True)
    return model


def plain_weights(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """``state`` keyed as the plain model's: masks baked into their weights (``x.parametrizations.weight.
    original * ...0.mask`` -> ``x.weight``, as a trainer checkpoint stores them), ghosts left out."""
    if any(key.split(".")[0] == GHOSTS_ROOT for key in state):
        warnings.warn(f"checkpoint '{path}' was saved while the ghosts were still in; the model loaded from it "
                      "leaves them out (load a checkpoint from after they left, or the run's model.safetensors).")
    masks = {key.replace(".0.mask", ".original"): t for key, t in state.items() if key.endswith(".0.mask")}
    plain = {}
    for key, tensor in state.items():
        name = plain_key(key)
        if name is not None and key.split(".")[0] != GHOSTS_ROOT:
            plain[name] = tensor * masks[key] if key in masks else tensor
    return plain


def _check_weights_fit(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """One line with counts and a few names when ``state`` does not fit ``model`` strictly."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    different = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                 if k in state and tuple(state[k].shape) != tuple(v.shape)]
    parts = [f"{len(names)} {what} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
             for names, what in ((missing, "of the model's entries missing from the file"),
                                 (unexpected, "entries the model does not have"),
                                 (different, "shapes differ, file vs model")) if names]
    if parts:
        raise SurgeryError(f"weights '{path}' do not fit {type(model).__qualname__}: " + "; ".join(parts)
                           + ". Check the model spec and --num-classes.")
