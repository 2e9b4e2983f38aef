"""What several commands' parsers share besides the config flags (``flags``): a command's own parser, the model
options of inspect / verify / export, their mask options, and the options of a run (where it goes, resuming,
``--set``)."""

from __future__ import annotations

import argparse

from surgery.apps.cli.flags import add_flags
from surgery.zoo.tasks import parse_input_size

RECIPE_HELP = ("a preset's graph part (default tost: ghost skips around the body's spatial convs + PSwish; "
               "tost-official: 1x1 conv + BN jumps on every one) or a recipe file")


def command_parser(commands, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    """The parser of command ``name``: its summary in the command list and its own help, its example below."""
    return commands.add_parser(
        name,
        help=summary.replace("%", "%%"),  # argparse %-formats help strings, not descriptions
        description=summary,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """MODEL, the part compiled and its input, for the commands that compile one model (inspect, verify, export)."""
    add_flags(p, ("model", "num_classes"), num_classes={"help": "classifier outputs (default: the model's)"})
    add_input_size(p)
    add_submodule(p)
    add_flags(p, ("leaf",))


def add_input_size(p: argparse.ArgumentParser, what: str = "inputs are") -> None:
    p.add_argument("--input-size", type=parse_input_size, metavar="S|T,H,W",
                   help=f"{what} S x S images, or T,H,W clips for a video model (default: the model's, else 224; "
                   "detection 320, its transform resizing to S; video 16,112,112; optical flow pairs of 128)")


def add_submodule(p: argparse.ArgumentParser) -> None:
    p.add_argument("--submodule", action="append", metavar="PATH",
                   help="compile only this submodule, e.g. backbone (a path of model.named_modules(); repeatable); "
                   "the rest of the model runs unchanged. Default: the whole model, or where torch.fx cannot trace "
                   "it the task's part (detection: backbone; optical flow: feature_encoder and context_encoder)")


def add_mask_arguments(p: argparse.ArgumentParser) -> None:
    """A mask file or random masks, for verify and export."""
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--masks", metavar="FILE", help="mask file (.safetensors), or a .pt state_dict whose zeros mark pruned weights"
    )
    group.add_argument(
        "--sparsity", type=float, metavar="S", help="random masks pruning the fraction S of every conv/linear weight"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random masks and inputs (default 0)")
    add_flags(p, ("partial_masks",))


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Where a run's data and results go, how it runs, resuming, and ``--set``."""
    add_flags(p, ("data_root", "download", "device", "amp", "compile", "seed", "out", "name"))
    add_resume_arguments(p)
    add_overrides(p, "override a config field, e.g. --set train.epochs=3 (repeatable)")
    add_flags(p, ("no_progress",))


def add_resume_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue from the run directory's latest good checkpoint, or from CHECKPOINT; "
                   "a completed run says so and exits")
    p.add_argument("--force", action="store_true",
                   help="with --resume of a completed run: verify and export its final weights again")


def add_overrides(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE", help=help)
