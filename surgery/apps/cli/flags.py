"""The options that set run-config fields, each declared once: its option string, its argparse keywords and
the dotted field it sets. ``add_flags`` puts them on a command; ``flag_fields`` and ``configured`` read
them back into a ``RunConfig``. A flag left unset (None, False, []) or absent from the command sets nothing,
so the config's own value stands; `surgery train / run / demo` and `surgery prune` all read flags through
this table. A command may reword a flag's help or default where it means something else there.
"""

from __future__ import annotations

import argparse
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from surgery.compiler.presets import PRESETS
from surgery.errors import ConfigError
from surgery.train.config import parse_overrides

MODEL_HELP = ("torchvision:NAME, timm:NAME, hf:ModelClass[:config.json] (transformers) or path/to/file.py:factory "
              "(random weights, nothing downloads)")
DATASETS = "digits, synthetic, cifar10, cifar100, cifar10-jpeg:PATH, imagefolder:PATH"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--option '{text}' is not of the form KEY=VALUE, e.g. --option rounds=3.")
    return key.strip(), yaml.safe_load(value)


def _options(texts: list[str]) -> dict[str, Any]:
    return dict(_option(text) for text in texts)


def _kinds(text: str) -> list[str]:
    return [k.strip() for k in text.split(",") if k.strip()]


def _as_given(value: Any) -> Any:
    return value


def _unset(_: Any) -> None:
    return None


@dataclass(frozen=True)
class Flag:
    """``--option`` (or a positional's name), the config field it sets, and how argparse reads it."""

    option: str
    field: str
    keywords: dict[str, Any] = field(default_factory=dict)  # argparse's add_argument keywords
    convert: Callable[[Any], Any] = _as_given  # the parsed value -> the field's value

    @property
    def dest(self) -> str:
        return self.keywords.get("dest") or self.option.lstrip("-").replace("-", "_")

    @property
    def help(self) -> str:
        return self.keywords["help"]

    def add_to(self, parser: argparse.ArgumentParser, **changes: Any) -> None:
        parser.add_argument(self.option, **{**self.keywords, **changes})


def _flag(option: str, field: str, convert: Callable[[Any], Any] = _as_given, **keywords: Any) -> Flag:
    return Flag(option, field, keywords, convert)


_TABLE = (
    _flag("model", "model.spec", metavar="MODEL", help=MODEL_HELP),
    _flag("--num-classes", "model.num_classes", type=_positive_int, metavar="N",
          help="classifier outputs (default: the dataset's)"),
    _flag("--weights", "model.weights", metavar="FILE",
          help="trained weights to score (magnitude / OMP prunes trained weights)"),
    _flag("--leaf", "model.leaf_modules", action="append", default=[], metavar="NAME",
          help="module path or class name to keep opaque when tracing (repeatable: --leaf a --leaf b)"),
    _flag("--data", "data.dataset", default="digits", metavar="DATASET",
          help=DATASETS.replace("digits", "digits (default, offline)", 1)),
    _flag("--data-root", "data.root", metavar="DIR", help="where cifar10 / cifar100 live (or go, with --download)"),
    _flag("--download", "data.download", action="store_true", help="download the dataset if it is missing"),
    _flag("--image-size", "data.image_size", type=_positive_int, metavar="S", help="resize images to S x S"),
    _flag("--val-split", "data.val_split", type=float, metavar="F",
          help="hold out F of the training set for validation"),
    _flag("--batch-size", "data.batch_size", type=_positive_int, help="global batch (default 128)"),
    _flag("--masks", "mask.file", metavar="FILE", help="a .safetensors mask file (instead of --method)"),
    _flag("--partial-masks", "mask.partial", action="store_true",
          help="let the mask file leave prunable weights without a mask (they stay dense); "
               "by default it must cover them all"),
    _flag("--method", "mask.method", metavar="NAME",
          help="mask method (default random; `surgery prune --list` lists them)"),
    _flag("--sparsity", "mask.sparsity", type=float, metavar="S", help="fraction of the prunable weights to prune"),
    _flag("--scope", "mask.scope", choices=("global", "layer"),
          help="rank all layers together or each alone (default: the method's)"),
    _flag("--distribution", "mask.distribution", choices=("uniform", "erk"),
          help="layer budgets with --scope layer (default: the method's)"),
    _flag("--dense-first", "mask.dense_first", action="store_true",
          help="keep the first prunable layer dense (the stem)"),
    _flag("--dense-last", "mask.dense_last", action="store_true",
          help="keep the last prunable layer dense (the head, conv or linear)"),
    _flag("--prunable", "mask.prunable", _kinds, metavar="KINDS",
          help="what can be pruned: conv,linear (default) or all"),
    _flag("--exclude", "mask.exclude", action="append", default=[], metavar="PATTERN",
          help="keep the weights this pattern matches dense (fnmatch over parameter names, e.g. "
               "'layer4.*' or 'fc.weight'; repeatable)"),
    _flag("--allow-empty-layers", "mask.allow_empty_layers", action="store_true",
          help="let a global ranking keep no weight of a layer (or cut every path); refused by default"),
    _flag("--batches", "mask.batches", type=_positive_int, default=1,
          help="training batches SNIP / GraSP score on (default 1)"),
    _flag("--option", "mask.options", _options, dest="options", action="append", default=[], metavar="KEY=VALUE",
          help="a method option, e.g. --option rounds=3 for IMP, --option every=100 for RigL (repeatable)"),
    _flag("--recipe", "recipe", metavar="NAME|FILE", help="a preset, or a recipe YAML file (its passes alone): "
          + "; ".join(f"{name}: {entry.summary}" for name, entry in PRESETS.items())),
    _flag("--lrsi", "lrsi.enabled", action="store_true",
          help="run LRsI (layer-wise re-scaled initialization) before training"),
    _flag("--no-lrsi", "lrsi.enabled", operator.not_, action="store_true", help="skip LRsI"),
    _flag("--lrsi-iterations", "lrsi.iterations", type=_positive_int, metavar="N",
          help="LRsI iterations (default: one epoch of the training data)"),
    _flag("--no-ghost-skip", "recipe.ghost_skip", _unset, action="store_true",
          help="no ghost skips (recipe.ghost_skip: null)"),
    _flag("--no-pswish", "recipe.soft_activation", _unset, action="store_true",
          help="keep the model's activations (recipe.soft_activation: null)"),
    _flag("--label-smoothing", "label_smoothing.start", type=float, metavar="A",
          help="constant label smoothing (tost: 0.1; 0 turns it off)"),
    _flag("--optimizer", "optimizer.name", help="sgd (default), adamw or adam"),
    _flag("--lr", "optimizer.lr", type=float, help="base learning rate (default 0.1)"),
    _flag("--lr-schedule", "lr_schedule.kind", help="step (default, x0.1 at 50%% and 75%%) or cosine"),
    _flag("--epochs", "train.epochs", type=_positive_int,
          help="default 180; the LR decays at 50%% and 75%% of it (none for 1 epoch)"),
    _flag("--seed", "train.seed", type=int, help="seed of masks, init and data order (default 0)"),
    _flag("--device", "train.device", help="auto (default: CUDA when present), cpu, cuda, cuda:1"),
    _flag("--amp", "train.amp", help="auto (default: bf16 on GPU), off, bf16, fp16"),
    _flag("--compile", "train.compile", action="store_true", help="torch.compile the model"),
    _flag("--no-progress", "train.progress", operator.not_, action="store_true",
          help="no progress bars (one line per epoch still)"),
    _flag("--name", "name", help="run name (default: the config's)"),
    _flag("--out", "output", metavar="DIR", help="run directory (default runs/NAME)"),
)
FLAGS: dict[str, Flag] = {flag.dest: flag for flag in _TABLE}

# (argparse dest, dotted config field, converter) of every flag, in the order they are applied
FLAG_FIELDS: tuple[tuple[str, str, Callable[[Any], Any]], ...] = tuple(
    (flag.dest, flag.field, flag.convert) for flag in _TABLE)

# The flags commands take together, in the order their help lists them.
DATA_FLAGS = ("data", "image_size", "val_split", "num_classes")
TRAINING_FLAGS = ("epochs", "batch_size", "lr", "optimizer", "lr_schedule")
FINDER_FLAGS = ("method", "sparsity", "scope", "distribution", "dense_first", "dense_last", "prunable", "exclude",
                "allow_empty_layers", "options")
RECIPE_FLAGS = ("recipe", "label_smoothing", "lrsi", "no_lrsi", "lrsi_iterations", "no_ghost_skip", "no_pswish")


def add_flags(parser: argparse.ArgumentParser, dests: Iterable[str], **changes: dict[str, Any]) -> None:
    """Add the flags ``dests`` name; ``changes``: ``{dest: argparse keywords}`` where this command words one its way."""
    for dest in dests:
        FLAGS[dest].add_to(parser, **changes.get(dest, {}))


def flag_fields(args: argparse.Namespace) -> dict[str, Any]:
    """``{dotted field: value}`` for every flag of FLAG_FIELDS the user set."""
    fields = {}
    for dest, field_name, convert in FLAG_FIELDS:
        value = getattr(args, dest, None)
        if value is not None and value is not False and value != []:
            fields[field_name] = convert(value)
    return fields


def configured(base, args: argparse.Namespace):
    """``base`` (a RunConfig) with the command's flags applied, then its ``--set`` overrides."""
    return base.with_fields({**flag_fields(args), **parse_overrides(getattr(args, "overrides", []))})
