"""ONNX export of a clean model: sparse initializers, onnxruntime parity, a sidecar JSON.

``export_onnx`` exports with ``torch.onnx.export(dynamo=True)`` in eval mode, optionally
moves mostly-zero weights to ``graph.sparse_initializer`` (COO, linearized int64
indices), writes the file (with external data past protobuf's 2 GB limit), checks it
with ``onnx.checker``, runs the written file in onnxruntime against PyTorch, and
records all of it next to the file as ``<path>.json``.

Notes on what the tools do:

* The exporter's optimizer folds eval-mode BatchNorm into the preceding conv, so
  ``conv1.weight`` in the file is the fused weight: its zeros are the mask's zeros
  (BN scales whole output channels), its values are not PyTorch's.
* A dynamic batch dim is requested with ``torch.export.Dim("batch")``. From a batch-1
  example torch.export may specialize it (timm's ConvNeXt fails with "Invalid ranges
  [2:1]"), so a batch-1 example is repeated to batch 2 for tracing. Where the model
  fixes its batch (``x.reshape(2, -1)`` feeding a Linear) the exporter silently makes
  it a fixed dim instead of failing, so ``ExportInfo.dynamic_batch`` reports what the
  file declares, and parity runs at the example batch and, when dynamic, at twice it.
* The exporter builds opset 18 and converts to the requested opset; where conversion
  fails it silently keeps 18 (onnx 1.23 cannot take ReduceMean, i.e. global average
  pooling, down to 17), so a file whose opset differs from the request is refused.
* onnx's checker and onnxruntime (1.32) accept sparse initializers (ORT densifies them
  at load, so run time equals the dense file's). ``check_model(full_check=True)``
  does not: ONNX shape inference sees sparse initializers as rank 0. And the checker
  cannot read sparse tensors from external data, so sparse tensors stay inline and
  only dense initializers go to the ``.data`` file.
* ``preprocessing`` (how to feed the model: input size, mean/std, class names) goes into
  the file's ``metadata_props``, one JSON value per key, so a deployment needs the
  ``.onnx`` file alone (``examples/onnx_inference.py``); the sidecar repeats it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from google.protobuf.message import EncodeError, Message
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data
from torch import fx, nn
from torch.utils import _pytree as pytree

from surgery.errors import ExportError, GhostsRemainError
from surgery.compiler.ghosts import ghosts
from surgery.fx.graph import as_tuple, device_of, eval_mode, inputs_on
from surgery.compiler.masks import SPARSE_THRESHOLD, baked_copy, masked_parameters
from surgery.compiler.passes.deghost import deghost as deghost_pass
from surgery.compiler.preprocessing import Preprocessing

MIN_OPSET = 17  # LayerNormalization's first opset; below it the exporter's down-conversion fails
EXTERNAL_DATA_BYTES = onnx.checker.MAXIMUM_PROTOBUF  # 2 GiB: protobuf cannot serialize more
EXTERNAL_TENSOR_MIN_BYTES = 1024  # smaller tensors stay inline even in an external-data file
TINY = 1e-12  # floor of the reference magnitude in the relative error
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}


@dataclass
class ExportInfo:
    """What ``export_onnx`` wrote and measured; ``to_dict()`` is the sidecar's content.

    ``max_rel_error`` is ``max|onnx - torch| / max(max|torch|, TINY)`` over all outputs
    and both parity batches: the worst error relative to the outputs' scale (an
    element-wise ratio would blow up on outputs near zero).
    """

    path: Path
    sidecar: Path | None
    opset: int
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    dynamic_batch: bool
    max_abs_error: float
    max_rel_error: float
    rtol: float
    dense_bytes: int  # the file without sparse initializers (serialized size, not written)
    sparse_bytes: int  # the bytes written (with any .data file); dense_bytes when sparse=False
    external_data: bool
    layers: list[dict[str, Any]] = field(default_factory=list)  # one row per float initializer
    kept_ghosts: int = 0  # ghost modules exported as trained (keep_ghosts): the file is not the original architecture
    preprocessing: Preprocessing | None = None  # how to feed the model; also in the file's metadata_props

    @property
    def architecture(self) -> str:
        """Whether the file holds the original architecture, in words (the sidecar's ``architecture``)."""
        if self.kept_ghosts:
            return f"kept {self.kept_ghosts} ghost modules: not the original"
        return "the original"

    @property
    def size_ratio(self) -> float:
        return self.sparse_bytes / self.dense_bytes if self.dense_bytes else 1.0

    @property
    def totals(self) -> dict[str, Any]:
        numel = sum(row["numel"] for row in self.layers)
        nonzeros = sum(row["nonzeros"] for row in self.layers)
        return {
            "initializers": len(self.layers),
            "stored_sparse": sum(row["stored"] == "sparse" for row in self.layers),
            "numel": numel,
            "nonzeros": nonzeros,
            "sparsity": 1.0 - nonzeros / numel if numel else 0.0,
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["sidecar"] = str(self.sidecar) if self.sidecar else None
        data["size_ratio"] = self.size_ratio
        data["totals"] = self.totals
        data["architecture"] = self.architecture
        data["preprocessing"] = self.preprocessing.to_dict() if self.preprocessing else None
        return data

    def __str__(self) -> str:
        totals = self.totals
        batch = "dynamic" if self.dynamic_batch else "fixed"
        lines = [
            f"{self.path} (opset {self.opset}, batch {batch}{', external data' if self.external_data else ''})",
            *([f"architecture: {self.architecture}"] if self.kept_ghosts else []),
            f"size: {_megabytes(self.sparse_bytes)}"
            + (
                f" ({self.size_ratio:.2f}x of {_megabytes(self.dense_bytes)} dense; {totals['stored_sparse']} "
                f"of {totals['initializers']} initializers stored sparse)"
                if totals["stored_sparse"]
                else ""
            ),
            f"weights: {totals['numel']:,} values, {totals['sparsity']:.1%} zeros",
            f"onnxruntime parity: max |diff| {self.max_abs_error:.3g}, relative {self.max_rel_error:.3g} "
            f"(rtol {self.rtol:g})",
        ]
        if self.preprocessing:
            lines.append(f"preprocessing (in the file's metadata): {self.preprocessing.summary()}")
        if self.sidecar:
            lines.append(f"sidecar: {self.sidecar}")
        return "\n".join(lines)


def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    sparse: bool = False,
    sparse_threshold: float = SPARSE_THRESHOLD,
    opset: int = 18,
    deghost: bool = False,
    keep_ghosts: bool = False,
    dynamic_batch: bool = True,
    rtol: float = 1e-4,
    sidecar: bool = True,
    preprocessing: Preprocessing | None = None,
) -> ExportInfo:
    """Export ``model`` to ONNX at ``path``, verified against PyTorch in onnxruntime.

    ``sparse``: store float weights (2+ dims) with at least ``sparse_threshold`` exact
    zeros as COO sparse initializers. ``deghost``: export ``surgery.deghost(model)``
    (a copy) when the model still holds ghosts or masks; otherwise such a model is
    refused. ``keep_ghosts``: export the ghosts as trained (ToST's released code keeps its
    jumps and PSwish for good; masks are baked into a copy); the sidecar's ``architecture`` then
    says the file is not the original. ``preprocessing``: how to feed the model (input size,
    mean/std, resize rule, class names), written into the file's ``metadata_props`` and the
    sidecar; ``surgery.train`` passes its dataset's. Raises ``ExportError`` when the exporter, the checker or the parity
    check (relative error above ``rtol``) fails.
    """
    _check_options(opset, sparse_threshold)
    kept = len(ghosts(model)) if keep_ghosts else 0
    model = _with_ghosts(model) if keep_ghosts else _clean(model, deghost)
    inputs = inputs_on(device_of(model), as_tuple(example_inputs))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    proto = _to_onnx(model, inputs, opset, dynamic_batch)
    _check_opset_kept(proto, opset)
    inputs_spec, outputs_spec = _value_specs(proto.graph.input), _value_specs(proto.graph.output)
    if preprocessing is not None:
        _check_preprocessing(preprocessing, inputs_spec, outputs_spec)
        _set_metadata(proto, preprocessing.metadata())
    dense_bytes = message_bytes(proto)
    layers = _layer_rows(proto.graph, sparse_threshold if sparse else None)
    _sparsify(proto.graph, {row["name"] for row in layers if row["stored"] == "sparse"})
    batch_is_dynamic = dynamic_batch and _has_dynamic_batch(inputs_spec)

    external = _save(proto, path)
    _check_file(path)
    written = _written_bytes(path, external) if sparse else dense_bytes
    max_abs, max_rel = _parity(model, inputs, path, rtol, batch_is_dynamic)

    info = ExportInfo(
        path=path,
        sidecar=Path(f"{path}.json") if sidecar else None,
        opset=opset,
        inputs=inputs_spec,
        outputs=outputs_spec,
        dynamic_batch=batch_is_dynamic,
        max_abs_error=max_abs,
        max_rel_error=max_rel,
        rtol=rtol,
        dense_bytes=dense_bytes,
        sparse_bytes=written,
        external_data=external,
        layers=layers,
        kept_ghosts=kept,
        preprocessing=preprocessing,
    )
    if info.sidecar:
        info.sidecar.write_text(json.dumps(info.to_dict(), indent=2) + "\n")
    return info


# ---------------------------------------------------------------- what to export


def _check_options(opset: int, sparse_threshold: float) -> None:
    if opset < MIN_OPSET:
        raise ExportError(
            f"opset {opset} is too old: torch.onnx's dynamo exporter needs opset >= {MIN_OPSET}; "
            f"pass opset={MIN_OPSET} or higher (default 18)."
        )
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise ExportError(
            f"opset {opset} is newer than the installed onnx {onnx.__version__} knows (up to {newest}); "
            f"pass an opset from {MIN_OPSET} to {newest}."
        )
    if not 0.0 < sparse_threshold <= 1.0:
        raise ExportError(
            f"sparse_threshold {sparse_threshold} is outside (0, 1]: it is the fraction of zeros "
            "above which a weight is stored sparse, e.g. 0.7."
        )


def _clean(model: nn.Module, deghost: bool) -> nn.Module:
    """``model`` itself when it holds no ghosts or masks, else (with ``deghost``) a clean copy."""
    held, masked = ghosts(model), masked_parameters(model)
    if not held and not masked:
        return model
    if not deghost:
        examples = [name for name, _ in held[:2]] + list(masked)[:2]
        raise GhostsRemainError(
            f"cannot export a model that still holds {len(held)} ghosts and {len(masked)} masks "
            f"(e.g. {examples}): the file would carry training-only structure. "
            "Pass deghost=True or call surgery.deghost(model) first."
        )
    if isinstance(model, fx.GraphModule):
        return deghost_pass(model)
    if held:
        raise GhostsRemainError(
            f"{type(model).__name__} holds {len(held)} ghosts but is not an fx.GraphModule, so they "
            "cannot be stripped; export the GraphModule surgery.compile returned."
        )
    return baked_copy(model)


def _with_ghosts(model: nn.Module) -> nn.Module:
    """``model`` as trained, ghosts included: itself, or a copy with its masks baked."""
    if not masked_parameters(model):
        return model
    return baked_copy(model)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide the exporter's warnings, prints and logs: users read our summary instead.

    torch logs the fallbacks it tries (whole tracebacks) through ``logging``, whose
    handlers hold the real stderr, so logging is switched off for the duration.
    """
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _to_onnx(model: nn.Module, inputs: tuple, opset: int, dynamic_batch: bool) -> onnx.ModelProto:
    """Export with ``torch.onnx.export(dynamo=True)``; a dynamic batch is traced at batch >= 2.

    torch.export specializes dims of size 1, so a batch-1 example is repeated to batch 2
    before tracing (parity later checks the file at the example's own batch too).
    """
    shapes = _batch_dims(inputs) if dynamic_batch else None
    if dynamic_batch and _batch_size(inputs) == 1:
        inputs = _doubled(inputs)
    try:
        with eval_mode(model), torch.no_grad(), _quiet():
            program = torch.onnx.export(
                model, inputs, dynamo=True, opset_version=opset, dynamic_shapes=shapes, verbose=False
            )
            return program.model_proto
    except Exception as error:
        hint = " If the model fixes its batch size, pass dynamic_batch=False." if dynamic_batch else ""
        raise ExportError(
            f"torch.onnx.export could not export {type(model).__name__}: {_exporter_summary(error)}{hint}"
        ) from error


def _check_opset_kept(proto: onnx.ModelProto, opset: int) -> None:
    """The exporter falls back to its own opset when converting to the requested one fails."""
    produced = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if produced != opset:
        raise ExportError(
            f"torch.onnx produced opset {produced} instead of the requested {opset}: it builds opset 18 "
            f"and its conversion to {opset} failed for an op of this model; pass opset={produced}."
        )


def _batch_dims(inputs: Sequence[Any]) -> tuple:
    """``dynamic_shapes``: dim 0 of every tensor input is one shared symbolic ``batch``."""
    batch = torch.export.Dim("batch")
    return tuple({0: batch} if torch.is_tensor(x) and x.dim() > 0 else None for x in inputs)


def _exporter_summary(error: Exception) -> str:
    """The exporter's own summary of a failure, without its boilerplate and terminal colours."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    _, found, summary = text.partition("## Exception summary")
    if found:
        text = summary.strip().split("\n\n")[0]
    return f"{type(error).__name__}: {_first_lines(text)}"


def _first_lines(text: str, n: int = 6) -> str:
    lines = text.strip().splitlines()
    return "\n".join(lines[:n]) + ("\n..." if len(lines) > n else "")


def _check_preprocessing(p: Preprocessing, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
    """Where the file fixes them, its input's channels and size and its output's classes must match ``p``."""
    image = next((spec["shape"] for spec in inputs if len(spec["shape"]) == 4), None)
    if image is not None:
        channels, size = image[1], tuple(image[2:])
        if isinstance(channels, int) and channels != len(p.channel_order):
            raise ExportError(
                f"preprocessing channel_order '{p.channel_order}' has {len(p.channel_order)} channels but the "
                f"model's input takes {channels}; give a channel_order (and mean/std) of {channels}."
            )
        if all(isinstance(v, int) for v in size) and size != p.input_size:
            raise ExportError(
                f"preprocessing input_size {p.input_size} differs from the exported input's (H, W) {size}; "
                f"pass input_size={size} or export at {p.input_size}."
            )
    logits = outputs[0]["shape"] if len(outputs) == 1 else None
    if p.class_names and logits and isinstance(logits[-1], int) and logits[-1] != len(p.class_names):
        raise ExportError(
            f"preprocessing names {len(p.class_names)} classes but the model's output has {logits[-1]}; "
            "give one name per output index, or class_names=() when there are none."
        )


def _set_metadata(proto: onnx.ModelProto, props: dict[str, str]) -> None:
    """Add ``props`` to ``metadata_props``, replacing same-named keys and keeping the exporter's others."""
    kept = [(entry.key, entry.value) for entry in proto.metadata_props if entry.key not in props]
    del proto.metadata_props[:]
    for key, value in [*kept, *props.items()]:
        proto.metadata_props.add(key=key, value=value)


# ----------------------------------------------------------- sparse initializers


def _layer_rows(graph: onnx.GraphProto, threshold: float | None) -> list[dict[str, Any]]:
    """One row per float initializer; ``stored`` is ``sparse`` where it will be (``threshold`` set)."""
    rows = []
    for tensor in graph.initializer:
        if tensor.data_type not in FLOAT_TYPES:
            continue
        values = numpy_helper.to_array(tensor)
        nonzeros = int(np.count_nonzero(values))
        sparsity = 1.0 - nonzeros / values.size if values.size else 0.0
        sparse = threshold is not None and values.ndim >= 2 and sparsity >= threshold
        rows.append(
            {
                "name": tensor.name,
                "shape": list(values.shape),
                "dtype": TensorProto.DataType.Name(tensor.data_type).lower(),
                "numel": int(values.size),
                "nonzeros": nonzeros,
                "sparsity": sparsity,
                "stored": "sparse" if sparse else "dense",
            }
        )
    return rows


def _sparsify(graph: onnx.GraphProto, names: set[str]) -> None:
    """Move the named initializers to ``graph.sparse_initializer`` in COO form."""
    if not names:
        return
    dense = [t for t in graph.initializer if t.name not in names]
    graph.sparse_initializer.extend(to_sparse(t) for t in graph.initializer if t.name in names)
    del graph.initializer[:]
    graph.initializer.extend(dense)


def to_sparse(tensor: TensorProto) -> onnx.SparseTensorProto:
    """COO form of ``tensor``: its nonzeros (same dtype) and their linearized int64 positions."""
    flat = numpy_helper.to_array(tensor).reshape(-1)
    positions = np.flatnonzero(flat).astype(np.int64)
    values = numpy_helper.from_array(flat[positions], tensor.name)
    return helper.make_sparse_tensor(values, numpy_helper.from_array(positions), list(tensor.dims))


# ------------------------------------------------------------------------ files


def message_bytes(message: Message) -> int:
    """``message.ByteSize()``, also past protobuf's 2 GB limit (where ByteSize raises)."""
    try:
        return message.ByteSize()
    except EncodeError:
        return _summed_bytes(message)


def _summed_bytes(message: Message) -> int:
    """The serialized size added up field by field (exact: tag + length prefix + payload)."""
    total = 0
    for descriptor, value in message.ListFields():
        repeated = _is_repeated(descriptor)
        items = value if repeated else [value]
        if descriptor.message_type is not None:
            sizes = [message_bytes(item) for item in items]
        elif descriptor.type in (descriptor.TYPE_BYTES, descriptor.TYPE_STRING):  # a tensor's raw_data
            sizes = [len(item.encode() if isinstance(item, str) else item) for item in items]
        else:  # numbers: small, so protobuf can size the field alone
            alone = type(message)()
            if repeated:
                getattr(alone, descriptor.name).extend(value)
            else:
                setattr(alone, descriptor.name, value)
            total += alone.ByteSize()
            continue
        tag = _varint_bytes(descriptor.number << 3)
        total += sum(tag + _varint_bytes(size) + size for size in sizes)
    return total


def _is_repeated(descriptor: Any) -> bool:
    if hasattr(descriptor, "is_repeated"):  # protobuf 7 dropped ``label``
        return descriptor.is_repeated
    return descriptor.label == descriptor.LABEL_REPEATED


def _varint_bytes(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def _data_file(path: Path) -> Path:
    return path.with_name(path.name + ".data")


def _save(proto: onnx.ModelProto, path: Path) -> bool:
    """Write ``proto``; past ``EXTERNAL_DATA_BYTES`` dense initializers go to ``<name>.data``.

    Returns whether external data was used. The tensors are marked with onnx's
    ``set_external_data`` rather than ``save_model(save_as_external_data=True)``, whose
    check for an existing data file looks in the working directory, not next to the model.
    """
    data = _data_file(path)
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    external = False
    if message_bytes(proto) >= EXTERNAL_DATA_BYTES:
        for tensor in proto.graph.initializer:
            if tensor.HasField("raw_data") and len(tensor.raw_data) >= EXTERNAL_TENSOR_MIN_BYTES:
                set_external_data(tensor, data.name)
                external = True
    try:
        onnx.save_model(proto, str(path))
    except (EncodeError, ValueError) as error:
        raise ExportError(
            f"could not write '{path}': {error}. Sparse initializers stay inline (onnx's checker cannot "
            "read them from external data); if they pass protobuf's 2 GB limit, raise sparse_threshold "
            "or export with sparse=False."
        ) from error
    return external


def _written_bytes(path: Path, external: bool) -> int:
    return path.stat().st_size + (_data_file(path).stat().st_size if external else 0)


def _check_file(path: Path) -> None:
    try:
        onnx.checker.check_model(str(path))
    except Exception as error:
        raise ExportError(f"onnx.checker rejects '{path}': {_first_lines(str(error))}") from error


def _value_specs(values: Sequence[onnx.ValueInfoProto]) -> list[dict[str, Any]]:
    """Name, element type and shape (ints, or names of symbolic dims) of graph inputs/outputs."""
    specs = []
    for value in values:
        tensor_type = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in tensor_type.shape.dim]
        dtype = TensorProto.DataType.Name(tensor_type.elem_type).lower()
        specs.append({"name": value.name, "dtype": dtype, "shape": shape})
    return specs


def _has_dynamic_batch(inputs: list[dict[str, Any]]) -> bool:
    shaped = [spec["shape"] for spec in inputs if spec["shape"]]
    return bool(shaped) and all(isinstance(shape[0], str) for shape in shaped)


# ------------------------------------------------------------------------ parity


def _parity(model: nn.Module, inputs: tuple, path: Path, rtol: float, dynamic_batch: bool) -> tuple[float, float]:
    """Worst (absolute, relative) error of the written file in onnxruntime vs PyTorch eval.

    With a dynamic batch the check also runs at twice the example batch.
    """
    import onnxruntime as ort  # here, not at the top: `import surgery` need not load it

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise ExportError(
            f"onnxruntime cannot load '{path}': {_first_lines(str(error))}. The file is kept; if an op "
            "lacks a CPU kernel for its dtype (bfloat16), export a float32 copy (model.float())."
        ) from error
    batches = [inputs, _doubled(inputs)] if dynamic_batch else [inputs]
    worst_abs = worst_rel = 0.0
    for batch in batches:
        expected = _torch_outputs(model, batch)
        actual = _onnx_outputs(session, batch, path)
        _check_output_shapes(expected, actual, path, _batch_size(batch))
        max_abs, max_rel = parity_errors(expected, actual)
        if not max_rel <= rtol:  # NaN fails too
            raise ExportError(
                f"'{path}' disagrees with PyTorch in onnxruntime at batch {_batch_size(batch)}: "
                f"max |diff| = {max_abs:.3g}, relative error {max_rel:.3g} > rtol {rtol:g}. "
                "The file is kept for inspection; pass a larger rtol if the gap is expected "
                "(e.g. float16), or dynamic_batch=False if the model fixes its batch size."
            )
        worst_abs, worst_rel = max(worst_abs, max_abs), max(worst_rel, max_rel)
    return worst_abs, worst_rel


def _check_output_shapes(expected: list[np.ndarray], actual: list[np.ndarray], path: Path, batch: int | None) -> None:
    if len(actual) != len(expected):
        raise ExportError(
            f"'{path}' has {len(actual)} outputs but the model returns {len(expected)} tensors; "
            "export a model whose forward returns tensors (or a tuple/list/dict of them)."
        )
    for i, (e, a) in enumerate(zip(expected, actual)):
        if e.shape != a.shape:
            raise ExportError(
                f"output {i} of '{path}' has shape {list(a.shape)} in onnxruntime but {list(e.shape)} "
                f"in PyTorch at batch {batch}; pass dynamic_batch=False if the model fixes its batch size."
            )


def _doubled(inputs: tuple) -> tuple:
    return tuple(torch.cat([x, x]) if torch.is_tensor(x) and x.dim() > 0 else x for x in inputs)


def _batch_size(inputs: tuple) -> int | None:
    return next((x.shape[0] for x in inputs if torch.is_tensor(x) and x.dim() > 0), None)


@torch.no_grad()
def _torch_outputs(model: nn.Module, inputs: tuple) -> list[np.ndarray]:
    """The model's eval outputs flattened the way the exporter flattens them (pytree order)."""
    with eval_mode(model):
        output = model(*inputs)
    return [t.detach().cpu().numpy() for t in pytree.tree_leaves(output) if torch.is_tensor(t)]


def _onnx_outputs(session: Any, inputs: tuple, path: Path) -> list[np.ndarray]:
    tensors = [x for x in inputs if torch.is_tensor(x)]
    feed = {arg.name: x.detach().cpu().numpy() for arg, x in zip(session.get_inputs(), tensors)}
    try:
        return session.run(None, feed)
    except Exception as error:
        raise ExportError(
            f"onnxruntime failed to run '{path}' at batch {_batch_size(inputs)}: {_first_lines(str(error))}. "
            "If the model fixes its batch size, pass dynamic_batch=False."
        ) from error


def parity_errors(expected: Sequence[np.ndarray], actual: Sequence[np.ndarray]) -> tuple[float, float]:
    """``(max|a - e|, max|a - e| / max(max|e|, TINY))`` over all outputs; equal NaN/inf count as equal."""
    diffs, scales = [0.0], [0.0]
    for e, a in zip(expected, actual):
        e, a = e.astype(np.float64), a.astype(np.float64)
        same = (e == a) | (np.isnan(e) & np.isnan(a))
        diffs.append(np.where(same, 0.0, np.abs(a - e)).max(initial=0.0))
        scales.append(np.abs(e[np.isfinite(e)]).max(initial=0.0))
    max_abs = float(np.max(diffs))  # np.max keeps a NaN, Python's max would drop it
    return max_abs, max_abs / max(float(np.max(scales)), TINY)


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
