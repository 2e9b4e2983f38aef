"""``surgery inspect``: trace a model and show what the recipe reaches."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from typing import Any

import torch
from rich.console import Console
from torch import nn

from surgery.apps.cli.arguments import RECIPE_HELP, add_model_arguments, command_parser
from surgery.apps.cli.models import compile_model, model_and_inputs, recipe_with_masks
from surgery.apps.cli.render import print_inspection
from surgery.compiler.inspection import inspection_report
from surgery.errors import ConfigError, SurgeryError, TraceError
from surgery.zoo.tasks import describe_inputs, task_of


def add_parser(commands) -> None:
    p = command_parser(
        commands, "inspect",
        "Trace a model and show what the recipe reaches: convs, activations, maskable weights, leaves.",
        "surgery inspect timm:resnet50 --recipe recipe.yaml --json",
    )
    add_model_arguments(p)
    p.add_argument("--recipe", metavar="NAME|YAML", help=RECIPE_HELP)
    p.add_argument("--sparsity", type=float, metavar="S",
                   help="compare the ghosts' parameters with what an S-sparse mask keeps, e.g. 0.98")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    if args.sparsity is not None and not 0.0 <= args.sparsity < 1.0:
        raise ConfigError(f"--sparsity {args.sparsity} is outside [0, 1): give the fraction a mask prunes, e.g. 0.98.")
    model, inputs, ghosted = compile_for_inspection(args)
    report = report_of(args.model, model, ghosted, inputs, args.sparsity)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_inspection(console, report)
    return 0


def report_of(spec: str, model: nn.Module, ghosted: nn.Module, inputs: tuple, sparsity: float | None) -> dict[str, Any]:
    """The compile's inspection report, with the model as given and its task's words for the inputs."""
    found = inspection_report(model, ghosted, inputs, sparsity=sparsity)
    return {"model": spec, "class": found.pop("class"), "task": task_of(spec).name,
            "input_shape": found.pop("input_shape"), "inputs": describe_inputs(inputs), **found}


def compile_for_inspection(args: argparse.Namespace) -> tuple[nn.Module, tuple, torch.fx.GraphModule]:
    """Compile on the meta device (no weights, fast); fall back to the CPU where meta fails.

    What the meta attempt writes to stderr (warnings; fx's shape propagation prints a
    traceback before it re-raises) is shown only if that attempt is the one that counts.
    """
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            result = _build_and_compile(args, "meta")
    except TraceError:  # a leaf that branches on values cannot run on meta (ShapePropagationError), and a
        return _build_and_compile(args, "cpu")  # failed trace's advice lists the parts that trace on CPU only
    except SurgeryError:
        sys.stderr.write(held.getvalue())
        raise
    except Exception:  # an op, an initializer or a data-dependent branch without a meta kernel
        return _build_and_compile(args, "cpu")
    sys.stderr.write(held.getvalue())
    return result


def _build_and_compile(args: argparse.Namespace, device: str):
    model, inputs = model_and_inputs(args, device)
    ghosted = compile_model(args, model, inputs, recipe_with_masks(args.recipe))
    return model, inputs, ghosted
