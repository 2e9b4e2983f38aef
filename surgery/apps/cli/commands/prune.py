"""``surgery prune``: a mask file from any method (``surgery.apps.prune`` finds it), and its per-layer table."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from surgery.apps.cli.arguments import add_input_size, add_run_options, add_submodule, command_parser
from surgery.apps.cli.flags import DATA_FLAGS, DATASETS, FINDER_FLAGS, MODEL_HELP, TRAINING_FLAGS, add_flags, configured
from surgery.apps.cli.models import model_slug, submodule_of
from surgery.apps.cli.render import print_mask_table, print_methods
from surgery.apps.prune import prune
from surgery.errors import ConfigError
from surgery.pruning import METHODS, method
from surgery.train.config import RunConfig


def add_parser(commands) -> None:
    p = command_parser(
        commands, "prune",
        "Find a mask with any method (random/ERK, magnitude, SNIP, GraSP, SynFlow, IMP, GMP, RigL, ASNI, OptG, "
        "learned) and write it as a .safetensors mask file with its metadata and a per-layer table.",
        "surgery prune torchvision:resnet50 --method snip --sparsity 0.9 --data imagefolder:/data/imagenet -o r50-snip.safetensors",
    )
    add_flags(p, ("model",), model={"nargs": "?", "help": "cifar:NAME, " + MODEL_HELP})
    p.add_argument("-o", "--output", metavar="FILE", help="the mask file to write (default: MODEL-METHOD-SPARSITY.safetensors)")
    p.add_argument("--list", action="store_true", help="list the methods and exit")
    add_flags(p, FINDER_FLAGS)
    p.set_defaults(method="random")
    add_flags(p, ("weights",))
    p.add_argument("--allow-untrained", action="store_true",
                   help="let a method that scores trained weights (magnitude) score the random initialization")
    add_flags(p, ("batches",))
    add_input_size(p, "data-free SynFlow's inputs are")
    add_submodule(p)
    add_flags(p, DATA_FLAGS, data={"default": None, "help": DATASETS})  # no default: data-free methods need none
    add_flags(p, TRAINING_FLAGS)
    add_run_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    if args.list:
        method("random")  # loads every finder
        print_methods(console, METHODS)
        return 0
    if not args.model or args.sparsity is None:
        raise ConfigError("surgery prune needs MODEL and --sparsity S (e.g. --method snip --sparsity 0.9); "
                          "`surgery prune --list` lists the methods.")
    method(args.method)  # an unknown method is refused before anything loads
    base = RunConfig.from_dict({"name": f"prune-{model_slug(args.model)}-{args.method}", "recipe": "none",
                                "export": {"verify": False, "onnx": False}})
    config = configured(base, args)
    out = Path(args.output or f"{model_slug(args.model)}-{args.method}-{args.sparsity:g}.safetensors")
    result = prune(config, out, with_data=args.data is not None, parts=submodule_of(args), size=args.input_size,
                   allow_untrained=args.allow_untrained, console=console)
    print_mask_table(console, result, out)
    return 0
