"""The model, inputs, recipe and masks a command builds from its options (``MODEL``, ``--input-size``,
``--submodule``, ``--leaf``, ``--recipe``, ``--masks`` / ``--sparsity``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surgery.compiler.driver import compile
from surgery.compiler.masks import load_masks
from surgery.compiler.recipe import TOST_RECIPE, Recipe
from surgery.compiler.submodules import within
from surgery.pruning import random_masks
from surgery.zoo.models import build_model, default_input_size, input_channels, load_weights
from surgery.zoo.tasks import default_submodule, example_inputs, input_size, train_inputs


def model_and_inputs(args: argparse.Namespace, device: str, batch: int = 2) -> tuple[nn.Module, tuple]:
    """The model ``args.model`` built on ``device`` (seeded init), and seeded random inputs that fit its task
    (``surgery.zoo.tasks``): an image batch, a list of images, a batch of clips or a pair of image batches."""
    seed = getattr(args, "seed", 0)
    torch.manual_seed(seed)
    size = input_size(args.model, args.input_size)
    with torch.device(device):
        model = build_model(args.model, args.num_classes, input_size=size)
    if getattr(args, "weights", None):
        load_weights(model, args.weights)
    size = size or (default_input_size(model, args.model),)
    return model, example_inputs(args.model, size, batch=batch, channels=input_channels(model), seed=seed, device=device)


def submodule_of(args: argparse.Namespace) -> list[str] | None:
    """``--submodule`` paths, else the task's default part (None: the whole model)."""
    default = default_submodule(args.model)
    return args.submodule or (list(default) if default else None)


def compile_model(args: argparse.Namespace, model: nn.Module, inputs: tuple, recipe: Any) -> nn.Module:
    """``surgery.compile`` of ``--submodule`` (or the task's part) on the inputs a training forward gets: a
    detection model's include synthetic targets, so submodules called only in train mode are reached too."""
    training = train_inputs(model, inputs, num_classes=args.num_classes, seed=getattr(args, "seed", 0))
    return compile(model, training, recipe, submodule=submodule_of(args), leaf_modules=args.leaf)


def recipe_with_masks(recipe: str | None, masks: Any = None) -> Recipe:
    """The recipe file (default: ``TOST_RECIPE``), its masks section replaced by ``masks`` if given."""
    base = Recipe.coerce(recipe or TOST_RECIPE)
    return base if masks is None else base.replace(masks=masks)


def masks_from_args(args: argparse.Namespace, model: nn.Module) -> Any:
    """``--masks FILE`` (a mask file, checked against the model; a .pt state_dict as its path), ``--sparsity S``
    as random masks of the weights in the compiled part (``--submodule``, or the task's), else None."""
    if args.masks and Path(args.masks).suffix == ".safetensors":
        return load_masks(args.masks, model=model, partial=args.partial_masks, spec=args.model)[0]
    if args.masks:
        return args.masks
    if args.sparsity is not None:
        parts = submodule_of(args) or []
        return {name: mask for name, mask in random_masks(model, args.sparsity, seed=args.seed).items()
                if within(name, parts)}
    return None


def model_slug(spec: str) -> str:
    """``spec``'s model name as a file or run name: ``torchvision:resnet50`` -> ``resnet50``."""
    return spec.rsplit(":", 1)[-1].replace("/", "_").removesuffix(".py")
