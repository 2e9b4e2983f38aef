"""ONNX export: refusal of ghosts, sparse initializers, onnxruntime parity, sidecar, external data."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from onnx import TensorProto, numpy_helper
from torch import nn

import surgery
import surgery.compiler.export as export_module
from surgery.compiler.ghosts import ghosts
from surgery.compiler.masks import attach_mask, masked_parameters
from surgery.pruning import random_masks


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


def run_file(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.fixture(scope="module")
def resnet_exports(tmp_path_factory):
    """A 90%-sparse de-ghosted ResNet-18 at 32x32, exported dense and sparse."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    masks = random_masks(model, 0.9)
    clean = surgery.deghost(surgery.compile(model, x, {"masks": masks}))
    folder = tmp_path_factory.mktemp("resnet")
    dense = surgery.export_onnx(clean, x, folder / "dense.onnx")
    sparse = surgery.export_onnx(clean, x, folder / "r18.onnx", sparse=True)
    return clean, masks, dense, sparse


# ----------------------------------------------------------- ghosts and masks


def test_ghosted_model_is_refused_with_the_fix(tmp_path):
    x = torch.randn(2, 3, 8, 8)
    ghosted = surgery.compile(small_cnn(), x, {"ghost_skip": {}, "soft_activation": {}})
    count = len(ghosts(ghosted))
    with pytest.raises(surgery.GhostsRemainError, match="deghost=True") as caught:
        surgery.export_onnx(ghosted, x, tmp_path / "m.onnx")
    assert f"{count} ghosts" in str(caught.value)
    assert not (tmp_path / "m.onnx").exists()


def test_deghost_true_exports_a_clean_copy(tmp_path):
    x = torch.randn(2, 3, 8, 8)
    model = small_cnn()
    ghosted = surgery.compile(model, x, {"ghost_skip": {}, "soft_activation": {}})
    held = len(ghosts(ghosted))
    info = surgery.export_onnx(ghosted, x, tmp_path / "m.onnx", deghost=True)
    assert len(ghosts(ghosted)) == held  # the caller's model keeps its ghosts
    ops = {node.op_type for node in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert "Sigmoid" not in ops  # no PSwish left
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    assert np.abs(run_file(tmp_path / "m.onnx", x) - expected).max() < 1e-5
    assert info.max_rel_error < 1e-5


def test_masked_model_is_refused_until_deghosted(tmp_path):
    x = torch.randn(2, 3, 8, 8)
    model = small_cnn()
    masked = surgery.compile(model, x, {"masks": random_masks(model, 0.9)})
    with pytest.raises(surgery.GhostsRemainError, match="3 masks"):
        surgery.export_onnx(masked, x, tmp_path / "m.onnx")
    info = surgery.export_onnx(surgery.deghost(masked), x, tmp_path / "m.onnx", sparse=True)
    assert info.max_rel_error < 1e-5


def test_masks_on_a_plain_module_are_baked_into_a_copy(tmp_path):
    model, x = small_cnn(), torch.randn(2, 3, 8, 8)
    attach_mask(model, "3.weight", random_masks(model, 0.9)["3.weight"])
    with pytest.raises(surgery.GhostsRemainError, match="0 ghosts and 1 masks"):
        surgery.export_onnx(model, x, tmp_path / "m.onnx")
    info = surgery.export_onnx(model, x, tmp_path / "m.onnx", deghost=True, sparse=True)
    assert list(masked_parameters(model)) == ["3.weight"]  # the caller's model keeps its mask
    assert [row["name"] for row in info.layers if row["stored"] == "sparse"] == ["3.weight"]


# ------------------------------------------------------------- sparse storage


@pytest.mark.slow
def test_sparse_resnet_is_under_a_third_of_the_dense_file(resnet_exports):
    _, _, dense, sparse = resnet_exports
    assert sparse.path.stat().st_size == sparse.sparse_bytes
    assert dense.path.stat().st_size == dense.dense_bytes == sparse.dense_bytes
    assert sparse.size_ratio <= 0.32


def test_masked_weights_are_stored_as_coo_sparse_initializers(resnet_exports):
    _, masks, _, sparse = resnet_exports
    graph = onnx.load(str(sparse.path)).graph
    stored = {t.values.name: t for t in graph.sparse_initializer}
    assert set(stored) == set(masks)  # every conv and the fc weight; ONNX keeps the state_dict names
    assert not set(masks) & {t.name for t in graph.initializer}
    for name, tensor in stored.items():
        assert list(tensor.dims) == list(masks[name].shape)
        assert tensor.values.data_type == TensorProto.FLOAT
        assert tensor.indices.data_type == TensorProto.INT64
        indices = numpy_helper.to_array(tensor.indices)
        assert indices.ndim == 1
        assert np.array_equal(indices, np.flatnonzero(masks[name].numpy().reshape(-1)))


def test_sparse_file_computes_what_the_model_computes(resnet_exports):
    clean, _, dense, sparse = resnet_exports
    x = torch.randn(3, 3, 32, 32)  # another batch size than the example's
    with torch.no_grad():
        expected = clean.eval()(x).numpy()
    scale = np.abs(expected).max()
    for path in (dense.path, sparse.path):
        assert np.abs(run_file(path, x) - expected).max() <= 1e-4 * scale
    assert sparse.max_abs_error <= 1e-5 * scale and sparse.max_rel_error < 1e-5


def test_sidecar_records_each_layers_mask_sparsity(resnet_exports):
    _, masks, _, sparse = resnet_exports
    assert sparse.sidecar.name == "r18.onnx.json"
    data = json.loads(sparse.sidecar.read_text())
    assert data["opset"] == 18
    assert data["inputs"] == [{"name": "x", "dtype": "float", "shape": ["batch", 3, 32, 32]}]
    assert data["outputs"][0]["shape"] == ["batch", 10]
    assert data["dense_bytes"] > data["sparse_bytes"] == sparse.path.stat().st_size
    assert data["max_rel_error"] == sparse.max_rel_error
    rows = {row["name"]: row for row in data["layers"]}
    for name, mask in masks.items():
        row = rows[name]
        assert row["stored"] == "sparse"
        assert row["shape"] == list(mask.shape) and row["numel"] == mask.numel()
        assert row["nonzeros"] == int(mask.count_nonzero())
        assert row["sparsity"] == pytest.approx(1 - mask.count_nonzero().item() / mask.numel())
    assert rows["fc.bias"]["stored"] == "dense"
    assert data["totals"]["stored_sparse"] == len(masks)


def test_sparse_threshold_decides_which_weights_go_sparse(tmp_path):
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        model[0].weight[:8] = 0  # 50% zeros
        model[2].weight[:, :14] = 0  # 87.5% zeros
        model[2].bias[:3] = 0  # 75% zeros, but 1-D: never sparse
    x = torch.randn(2, 16)
    info = surgery.export_onnx(model, x, tmp_path / "a.onnx", sparse=True, sparse_threshold=0.7)
    stored = {row["name"]: row["stored"] for row in info.layers}
    assert stored == {"0.weight": "dense", "0.bias": "dense", "2.weight": "sparse", "2.bias": "dense"}
    info = surgery.export_onnx(model, x, tmp_path / "b.onnx", sparse=True, sparse_threshold=0.5)
    assert {row["name"] for row in info.layers if row["stored"] == "sparse"} == {"0.weight", "2.weight"}


# ------------------------------------------------------------ files and options


def test_opset_below_17_is_rejected(tmp_path):
    with pytest.raises(surgery.ExportError, match="opset 16 .* opset=17"):
        surgery.export_onnx(small_cnn(), torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", opset=16)


def test_opset_is_the_one_asked_for_or_an_error(tmp_path):
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    info = surgery.export_onnx(plain, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", opset=17)
    assert info.opset == 17 and onnx.load(str(info.path)).opset_import[0].version == 17
    # the exporter builds opset 18; its down-conversion of ReduceMean (global pooling) fails
    # and it would silently keep 18
    with pytest.raises(surgery.ExportError, match="opset 18 instead of the requested 17.*opset=18"):
        surgery.export_onnx(small_cnn(), torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", opset=17)
    newest = onnx.defs.onnx_opset_version()
    with pytest.raises(surgery.ExportError, match=f"up to {newest}"):
        surgery.export_onnx(small_cnn(), torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", opset=newest + 1)


@pytest.mark.slow
def test_large_models_are_written_with_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "EXTERNAL_DATA_BYTES", 0)  # every model counts as large
    model, x = small_cnn(), torch.randn(2, 3, 8, 8)
    path = tmp_path / "m.onnx"
    info = surgery.export_onnx(model, x, path)
    data = tmp_path / "m.onnx.data"
    assert info.external_data and data.exists()
    onnx.checker.check_model(str(path))
    inline = onnx.load(str(path), load_external_data=False).graph.initializer
    external = {t.name for t in inline if t.data_location == TensorProto.EXTERNAL}
    assert external == {"3.weight"}  # the only tensor of 1 KiB or more
    assert data.stat().st_size == model[3].weight.numel() * 4
    with torch.no_grad():
        assert np.abs(run_file(path, x) - model.eval()(x).numpy()).max() < 1e-5
    size = data.stat().st_size
    surgery.export_onnx(model, x, path)  # onnx appends to an existing data file; we must not
    assert data.stat().st_size == size


def test_parity_failure_raises_with_both_errors(tmp_path):
    class ExportsSomethingElse(nn.Module):
        """Adds 1 only while being exported: the file cannot match eager PyTorch."""

        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(6, 4)

        def forward(self, x):
            y = self.linear(x)
            return y + 1 if torch.compiler.is_exporting() else y

    with pytest.raises(surgery.ExportError, match=r"max \|diff\| = 1, relative error [\d.]+ > rtol 0.0001"):
        surgery.export_onnx(ExportsSomethingElse(), torch.randn(2, 6), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx.json").exists()


def test_relative_error_is_scaled_by_the_largest_reference_value():
    expected = [np.array([100.0, 0.001]), np.array([[2.0]])]
    actual = [np.array([100.0, 0.002]), np.array([[2.5]])]
    max_abs, max_rel = export_module.parity_errors(expected, actual)
    assert max_abs == pytest.approx(0.5)
    assert max_rel == pytest.approx(0.5 / 100.0)
    assert np.isnan(export_module.parity_errors([np.array([1.0])], [np.array([np.nan])])[1])


def test_batch_is_dynamic_from_a_batch_one_example(tmp_path):
    model = small_cnn()
    info = surgery.export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    assert info.dynamic_batch and info.inputs[0]["shape"][0] == "batch"
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        assert np.abs(run_file(tmp_path / "m.onnx", x) - model.eval()(x).numpy()).max() < 1e-5
    fixed = surgery.export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "f.onnx", dynamic_batch=False)
    assert not fixed.dynamic_batch and fixed.inputs[0]["shape"] == [1, 3, 8, 8]


def test_export_is_quiet_and_leaves_the_model_as_it_was(tmp_path, capfd):
    model = small_cnn().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        surgery.export_onnx(model, torch.randn(2, 3, 8, 8), tmp_path / "m.onnx")
    assert caught == []
    assert capfd.readouterr() == ("", "")
    assert all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_export_failure_is_one_error_without_exporter_logs(tmp_path, capfd):
    class DataDependent(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(surgery.ExportError, match="could not export DataDependent: .*data-dependent"):
        surgery.export_onnx(DataDependent(), torch.randn(4, 3), tmp_path / "m.onnx")
    assert capfd.readouterr() == ("", "")


def test_message_bytes_adds_up_to_bytesize(resnet_exports):
    proto = onnx.load(str(resnet_exports[3].path))  # holds dense and sparse initializers
    assert export_module._summed_bytes(proto) == proto.ByteSize()


def test_info_prints_a_short_summary(resnet_exports):
    text = str(resnet_exports[3])
    assert "r18.onnx" in text and "0.30x of 44.8 MB dense" in text and "21 of 22 initializers stored sparse" in text
    assert len(text.splitlines()) <= 6
