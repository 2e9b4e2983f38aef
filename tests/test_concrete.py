"""Shape-specialized tracing (surgery.fx.concrete): forwards that compute with their input's shape or dtype."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgery
from surgery.fx.specialization import Specialization
from surgery.fx.tracer import ConcreteValueNeeded
from surgery.fx.tracing import needs_concrete_values, trace_options_of


class ShapeReading(nn.Module):
    """TF-style padding and a dtype check, as Hugging Face's MobileNetV2 and ViT do them in Python."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3)
        self.norm = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        if x.dtype != self.stem.weight.dtype:
            x = x.to(self.stem.weight.dtype)
        if x.shape[-1] % 4:
            x = F.pad(x, (0, 4 - x.shape[-1] % 4))
        y = torch.relu(self.stem(x))
        height = int(y.shape[-2])
        extra = max(0, (height + 1) // 2 - height // 2)
        y = F.pad(y, (1, extra, 1, extra))
        y = torch.relu(self.norm(self.body(y)))
        return self.head(y.mean((2, 3)))


class BatchReading(nn.Module):
    """Python loops over the batch: the graph holds one step per sample, so the batch size is fixed too."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.stack([self.conv(x[i : i + 1])[0] for i in range(x.shape[0])])


class DataReading(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        if int(x.shape[-1]) > 4 and x.sum() > 0:  # the second test reads the data: no shape decides it
            x = x * 2
        return self.conv(x)


def _inputs(batch: int = 2, side: int = 30) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(0))


def test_plain_trace_cannot_trace_a_forward_that_reads_its_input_shape():
    with pytest.raises(surgery.TraceError) as caught:
        surgery.trace(ShapeReading())
    assert needs_concrete_values(caught.value)  # decided on the error's type, not its words
    assert "test_concrete.py" in str(caught.value)  # the model's line, not the tracer's


def test_compile_traces_it_specialized_to_the_example_shape_then_it_deghosts_and_verifies():
    model, x = ShapeReading(), _inputs()
    ghosted = surgery.compile(model, x, "tost")
    manifest = surgery.manifest_of(ghosted)
    assert manifest.specialized_to == ["input 0: [*, 3, 30, 30] float32"]  # the batch stays free
    assert manifest.summary()["convs_covered"] == 1  # the body conv (the stem is the stem)
    assert trace_options_of(ghosted).specialized_to == Specialization.of((x,)).batch_free()
    ghosted.train()
    ghosted(_inputs(batch=5)).sum().backward()  # another batch size trains
    clean = surgery.deghost(ghosted)
    report = surgery.verify(model, clean, x, ghosted=ghosted)
    assert report.outputs_max_abs_diff <= report.atol


def test_an_input_of_another_shape_or_dtype_is_refused_naming_the_traced_shape_and_the_fix():
    model, x = ShapeReading().eval(), _inputs()
    clean = surgery.deghost(surgery.compile(model, x, "tost"))
    for other in (_inputs(side=32), x.double()):
        with pytest.raises(surgery.SpecializedInputError) as caught:
            clean(other)
        assert "[*, 3, 30, 30] float32" in str(caught.value)
        assert "compile (or trace) with an example input of the shape" in str(caught.value)
    assert torch.allclose(clean(_inputs(batch=3)), model(_inputs(batch=3)), atol=1e-5)


def test_a_batch_the_forward_reads_in_python_stays_fixed():
    model, x = BatchReading().eval(), _inputs(side=8)
    gm = surgery.deghost(surgery.compile(model, x))
    assert surgery.manifest_of(gm).specialized_to == ["input 0: [2, 3, 8, 8] float32"]
    assert torch.allclose(gm(x), model(x), atol=1e-6)
    with pytest.raises(surgery.SpecializedInputError, match=r"input 0 is \[3, 3, 8, 8\] float32"):
        gm(_inputs(batch=3, side=8))


def test_a_branch_on_tensor_data_is_refused_even_when_specialized():
    with pytest.raises(surgery.TraceError) as caught:
        surgery.compile(DataReading(), _inputs(side=8))
    message = str(caught.value)
    assert "x.sum() > 0" in message and "depends on the tensor's data" in message


def test_specialized_trace_leaves_the_models_tensors_alone():
    model = ShapeReading().train()  # BatchNorm updates its statistics in train mode: not while traced
    before = {k: v.clone() for k, v in model.state_dict().items()}
    surgery.trace(model, specialized_to=Specialization.of((_inputs(),)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_concrete_value_needed_is_what_plain_fx_raises_there():
    assert issubclass(ConcreteValueNeeded, (torch.fx.proxy.TraceError, TypeError, RuntimeError))


def test_a_saved_and_loaded_model_keeps_its_input_check():
    model, x = ShapeReading().eval(), _inputs()
    clean = surgery.deghost(surgery.compile(model, x))
    buffer = io.BytesIO()
    torch.save(clean, buffer)  # fx pickles a GraphModule by tracing its code again
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(loaded(x), clean(x))
    with pytest.raises(surgery.SpecializedInputError):
        loaded(_inputs(side=32))
