"""``surgery export``: a model, with its trained weights and masks, to ONNX checked against onnxruntime."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from torch import nn

from surgery.apps.cli.arguments import add_mask_arguments, add_model_arguments, command_parser
from surgery.apps.cli.flags import add_flags
from surgery.apps.cli.models import compile_model, masks_from_args, model_and_inputs, submodule_of
from surgery.compiler.masks import SPARSE_THRESHOLD
from surgery.compiler.passes.deghost import deghost
from surgery.compiler.preprocessing import Preprocessing
from surgery.compiler.submodules import within
from surgery.errors import ExportError
from surgery.train.run_files import RunFiles
from surgery.zoo.tasks import task_of


def add_parser(commands) -> None:
    p = command_parser(
        commands, "export",
        "Export a model (with its trained weights and masks) to ONNX, checked against onnxruntime.",
        "surgery export torchvision:resnet18 --num-classes 10 --weights clean.safetensors -o resnet18.onnx",
    )
    add_model_arguments(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="where to write the ONNX model")
    add_flags(p, ("weights",), weights={
        "help": "state_dict (.safetensors, .pt) of the plain model, or a training checkpoint, loaded strictly"})
    add_mask_arguments(p)
    sparse = p.add_mutually_exclusive_group()
    sparse.add_argument(
        "--sparse", dest="sparse", action="store_true", default=None,
        help=f"store every weight that is at least {SPARSE_THRESHOLD:.0%}% zeros as a sparse initializer (the default)",
    )
    sparse.add_argument("--dense", dest="sparse", action="store_false", help="store every weight dense")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--preprocessing", metavar="FILE",
                   help="how to feed the model (input size, mean/std, class names), written into the file's metadata: "
                        "a run's result.json, an export's model.onnx.json or a JSON of the fields (default: the "
                        "result.json beside --weights, when there is one)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    model, inputs = model_and_inputs(args, "cpu")
    masks = masks_from_args(args, model)
    target: nn.Module = model
    if masks is not None:  # masks are baked in by de-ghosting a masks-only compile
        target = deghost(compile_model(args, model, inputs, {"masks": masks}))
    sparse = args.sparse is not False  # sparse unless --dense: export_onnx stores only mostly-zero weights sparse
    from surgery.compiler.export import export_onnx  # onnx loads only when a command exports

    try:
        info = export_onnx(target, inputs, args.output, sparse=sparse, opset=args.opset,
                           dynamic_batch=task_of(args.model).dynamic_batch,
                           preprocessing=export_preprocessing(args, console))
    except ExportError as error:
        raise ExportError(f"{error}{_unexportable_part(args, model)}") from error
    console.print(str(info), markup=False)
    return 0


def export_preprocessing(args: argparse.Namespace, console: Console) -> Preprocessing | None:
    """``--preprocessing FILE``, else the run record beside ``--weights`` (a run's model.safetensors) when it has
    one: the exported file then says how to feed it, as the run's own export does."""
    if args.preprocessing:
        return Preprocessing.from_file(args.preprocessing)
    beside = RunFiles(Path(args.weights).parent).result if args.weights else None
    if beside is None or not beside.is_file():
        return None
    try:
        found = Preprocessing.from_file(beside)
    except ExportError:  # a record without preprocessing (an older run): export as before
        return None
    console.print(f"preprocessing from {escape(str(beside))}: {escape(found.summary())}")
    return found


def _unexportable_part(args: argparse.Namespace, model: nn.Module) -> str:
    """Where torch.onnx failed, for a model compiled in parts: outside them, since each compiled part
    traces with torch.fx into the static graph the exporter needs."""
    parts = submodule_of(args)
    if not parts:
        return ""
    outside = [name for name, _ in model.named_children() if not within(name + ".", parts)]
    return (f"\nThe part torch.onnx cannot export lies outside {', '.join(parts)}: {', '.join(outside)} and "
            f"{type(model).__name__}'s own forward (what torch.fx cannot trace either). The model itself is "
            "fine: it runs in PyTorch as it is.")
