"""``surgery verify``: compile one model, one forward + backward, de-ghost, verify against the original."""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.markup import escape
from torch import nn

from surgery.apps.cli.arguments import RECIPE_HELP, add_mask_arguments, add_model_arguments, command_parser
from surgery.apps.cli.models import compile_model, masks_from_args, model_and_inputs, recipe_with_masks
from surgery.compiler.manifest import manifest_of
from surgery.compiler.masks import weight_sparsity
from surgery.compiler.passes.deghost import deghost
from surgery.compiler.verify import verify
from surgery.fx.graph import scalar_loss
from surgery.zoo.tasks import describe_inputs, train_inputs


def add_parser(commands) -> None:
    p = command_parser(
        commands, "verify",
        "Round trip one model: compile, one forward+backward, de-ghost, verify against the original.",
        "surgery verify torchvision:resnet18 --sparsity 0.9 --input-size 64",
    )
    add_model_arguments(p)
    p.add_argument("--recipe", metavar="NAME|YAML", help=RECIPE_HELP)
    add_mask_arguments(p)
    p.add_argument("--device", choices=("cpu", "meta"), default="cpu", help="meta: structure only, no numeric checks")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    model, inputs = model_and_inputs(args, args.device)
    recipe = recipe_with_masks(args.recipe, masks_from_args(args, model))
    ghosted = compile_model(args, model, inputs, recipe)
    console.print(f"[bold]{escape(args.model)}[/] on {args.device}, input {describe_inputs(inputs)}: "
                  f"{_coverage(ghosted)}")
    loss = forward_backward(ghosted, train_inputs(ghosted, inputs, num_classes=args.num_classes, seed=args.seed))
    console.print(f"forward + backward through the ghosted model: loss {_number(loss)}")
    clean = deghost(ghosted)
    report = verify(model, clean, inputs, ghosted=ghosted)
    console.print(str(report), markup=False)
    if args.device == "meta":
        console.print("(numeric checks skipped on the meta device: structure only)")
    sparsity = "" if args.device == "meta" else f", {weight_sparsity(clean):.1%} of its conv/linear weights zero"
    console.print(f"[green]verified[/]: the de-ghosted model is a {type(model).__name__} again{sparsity}")
    return 0


def forward_backward(model: nn.Module, inputs: tuple) -> torch.Tensor:
    """One train-mode step's loss (a detection model's loss dict, summed), backpropagated."""
    model.train()
    loss = scalar_loss(model(*inputs))
    loss.backward()
    return loss.detach()


def _coverage(ghosted: nn.Module) -> str:
    manifest = manifest_of(ghosted)
    s = manifest.summary()
    return (
        (f"compiled {', '.join(s['submodules'])}: " if s["submodules"] else "")
        + f"{s['convs_covered']}/{s['convs_found']} convs covered, {s['activations_swapped']} activations swapped, "
        f"{s['weights_masked']} weights masked; ghosts: {manifest.ghost_cost()}"
    )


def _number(t: torch.Tensor) -> str:
    return "(meta: no value)" if t.is_meta else f"{t.item():.4f}"
