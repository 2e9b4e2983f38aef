"""The model zoo conformance runs over: every torchvision classifier, one model per timm family, every
builder of torchvision's segmentation, detection, video and optical-flow families, and the Hugging Face
transformers classes ``surgery.zoo.hf`` has small configs for.

Structural checks build weightless models on the meta device (detectors, which cannot run
there, on the CPU at a small size: ``STRUCTURAL_ON_CPU``); numeric and ONNX parity run on
``NUMERIC``, real models at small resolution. A family's models are compiled whole, or in
the part ``surgery.zoo.tasks`` names where torch.fx cannot trace them whole.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

import torch
from torch import nn

from surgery.zoo.models import build_model, default_input_size
from surgery.zoo.tasks import TASKS, Size, builders, example_inputs, input_size, task_of
from surgery.fx.python_state import python_state_kept

NUM_CLASSES = 10
TASK_FAMILIES = ("segmentation", "detection", "video", "optical_flow")

# Families whose structural check runs on the CPU at this input size: a detector's forward, which captures
# its backbone's inputs, runs NMS and nonzero, which have no meta kernels. SSD keeps its own fixed size.
STRUCTURAL_ON_CPU: dict[str, Size] = {"detection": (64,)}
# Layers meta runs through Python decompositions one time step at a time: timm's Sequencer (LSTMs) takes
# 20 s for a structural check on meta, 5 s on the CPU, so a model that holds one is checked on the CPU.
SLOW_ON_META = (nn.RNNBase,)

# Real models, small inputs: numeric parity (c), (d) and ONNX parity in CI. One per implementation
# family: timm's resnet18 / mobilenetv3 / regnetx and torchvision's regnet_y repeat blocks listed here
# (the structural test and `make zoo` still cover them).
NUMERIC: list[tuple[str, int]] = [
    ("torchvision:resnet18", 32),
    ("torchvision:resnet50", 32),
    ("torchvision:resnext50_32x4d", 32),
    ("torchvision:vgg11_bn", 32),
    ("torchvision:mobilenet_v2", 32),
    ("torchvision:mobilenet_v3_small", 32),
    ("torchvision:densenet121", 32),
    ("torchvision:shufflenet_v2_x0_5", 32),
    ("torchvision:squeezenet1_1", 64),
    ("torchvision:mnasnet0_5", 32),
    ("torchvision:efficientnet_b0", 32),
    ("torchvision:regnet_x_400mf", 32),
    ("torchvision:convnext_tiny", 32),
    ("torchvision:alexnet", 64),
    ("torchvision:googlenet", 64),  # its forward branches on self.training: one graph per mode
    ("timm:efficientnet_b0", 32),
    ("timm:convnext_atto", 32),
    ("timm:rexnet_100", 32),
    ("timm:ghostnet_100", 32),
    ("timm:dla34", 32),
    ("timm:resnetv2_18", 32),
]

# ONNX parity in CI: one model per mix of ops the exporter meets. A dynamo export costs 5-20 s a model on
# 2 cores, most of those tests' time; `make zoo` exports every model.
ONNX_IN_CI = frozenset({
    "torchvision:resnet18",  # conv, BatchNorm, ReLU, residual add, pooling, Gemm
    "torchvision:mobilenet_v3_small",  # depthwise convs, hardswish, squeeze-excitation
    "torchvision:shufflenet_v2_x0_5",  # channel shuffle: reshape, transpose, chunk
    "torchvision:squeezenet1_1",  # concatenation, no BatchNorm
    "timm:convnext_atto",  # LayerNorm over channels, GELU, permutes
    "timm:efficientnet_b0",  # SiLU, squeeze-excitation, timm's same-padding
    "hf:ViTForImageClassification",  # attention, class token
    "hf:SwinForImageClassification",  # window attention, roll
    "hf:SegformerForSemanticSegmentation",  # a dense output
    "hf:MobileNetV2ForImageClassification",  # traced for the input's shape, exported with a free batch
})

# Smallest-looking first: timm's own test_* models, then the usual size words.
_SMALL_HINTS = ("test_", "tiny", "nano", "pico", "atto", "femto", "xxs", "xs", "small", "_s", "b0", "18", "mini", "lite")


def torchvision_models() -> list[str]:
    import torchvision

    return [f"torchvision:{n}" for n in torchvision.models.list_models(module=torchvision.models)]


def hf_models() -> list[str]:
    """``hf:<ModelClass>`` for every class ``surgery.zoo.hf`` has a small config for (none without transformers)."""
    from surgery.zoo.hf import SMALL_CONFIGS  # lazily: the optional transformers side (the [hf] extra)

    return [f"hf:{name}" for name in SMALL_CONFIGS] if importlib.util.find_spec("transformers") else []


def task_models(families: tuple[str, ...] = TASK_FAMILIES) -> dict[str, list[str]]:
    """``{family: ["torchvision:NAME", ...]}``: every torchvision builder of each task family."""
    return {family: [f"torchvision:{n}" for n in builders(TASKS[family])] for family in families}


def timm_families() -> dict[str, str]:
    """``{family: "timm:model"}``: one representative per module of timm's registry."""
    import timm

    return {family: f"timm:{_representative(timm.list_models(module=family))}" for family in timm.list_modules()}


def _representative(names: list[str]) -> str:
    for hint in _SMALL_HINTS:
        matches = [n for n in names if hint in n]
        if matches:
            return min(matches, key=lambda n: (len(n), n))
    return names[0]


def build(spec: str, device: str = "meta", size: int | Size | None = None) -> tuple[nn.Module, torch.Tensor | tuple]:
    """The model (10 classes) on ``device`` and a batch of 2 inputs at its size (or ``size``): an image
    batch for a classifier, its task's example inputs (a tuple) for the other families."""
    if task_of(spec).default_size is not None:
        return _build_task_model(spec, device, size)
    if device == "meta":
        model = _build_weightless(spec)
    else:
        torch.manual_seed(0)
        model = build_model(spec, NUM_CLASSES)
    side = size or default_input_size(model, spec)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    channels, height, width = cfg.get("input_size", (3, side, side))
    if size:
        height = width = size
    x = torch.randn(2, channels, height, width, generator=torch.Generator().manual_seed(0))
    return model, x.to(device)


def build_structural(spec: str) -> tuple[nn.Module, torch.Tensor | tuple]:
    """The model and inputs a structural check runs on: weightless on meta, or on the CPU at a small size
    for the families meta cannot run (``STRUCTURAL_ON_CPU``), or at its own size where it holds a layer
    meta runs slowly (``SLOW_ON_META``)."""
    small = STRUCTURAL_ON_CPU.get(task_of(spec).name)
    if small:
        return build(spec, "cpu", small)
    model, inputs = build(spec, "meta")
    if any(isinstance(m, SLOW_ON_META) for m in model.modules()):
        return build(spec, "cpu")
    return model, inputs


def _build_task_model(spec: str, device: str, size: int | Size | None) -> tuple[nn.Module, tuple]:
    size = input_size(spec, size)
    if device == "meta":
        model = _build_weightless(spec, input_size=size)
    else:
        torch.manual_seed(0)
        model = build_model(spec, _num_classes(spec), input_size=size)
    return model, example_inputs(spec, size, device=device)


def _num_classes(spec: str) -> int | None:
    return NUM_CLASSES if task_of(spec).classes else None  # RAFT has no classes


def _build_weightless(spec: str, **kwargs) -> nn.Module:
    try:
        with torch.device("meta"):
            return build_model(spec, _num_classes(spec), **kwargs)
    except (NotImplementedError, RuntimeError):  # the builder computes with tensors (torchvision regnet)
        with _parameters_on_meta():
            return build_model(spec, _num_classes(spec), **kwargs)


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Build modules on CPU but register every parameter and buffer on the meta device."""
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter_on_meta(self, name, param):
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(self, name, param)

    def buffer_on_meta(self, name, tensor, persistent=True):
        register_buffer(self, name, None if tensor is None else tensor.to("meta"), persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = parameter_on_meta, buffer_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer


def timm_cannot_trace(model: nn.Module) -> str | None:
    """Why timm's own FX tooling (its leaf registry, torchvision's tracer) fails on ``model``, else None.
    That tracer leaves what the forward did to Python state behind: it is undone here."""
    from timm.models import get_graph_node_names

    try:
        with python_state_kept(model):
            get_graph_node_names(model)
    except Exception as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return None
