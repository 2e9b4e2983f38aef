"""The end-of-run report: plots a researcher can read and a summary.md that renders as markdown.

Run directories are faked with the CSV layout the trainer writes and a result.json as the
pipeline records it, so these tests need no training and run in a few seconds.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from surgery.errors import ReportError
from surgery.compiler.export import ExportInfo
from surgery.train.record import export_section
from surgery.train.report import (
    plot_curves,
    plot_layer_sparsity,
    plot_schedules,
    write_report,
)

METRICS_HEADER = [
    "epoch", "step", "lr", "alpha", "beta", "label_smoothing", "ghosts", "train_loss", "train_acc",
    "val_loss", "val_acc", "test_loss", "test_acc", "images_per_s", "seconds",
]
STEPS_HEADER = ["step", "epoch", "lr", "alpha", "beta", "label_smoothing", "loss"]
STEPS_PER_EPOCH = 10
VERIFY_PASSED = {
    "status": "passed",
    "checks": ["(a) graph isomorphic to the original trace (71 nodes)",
               "(b) state_dict loads strictly into the original class",
               "(c) outputs equal: max |diff| = 0 <= 1e-05"],
    "report": {"nodes": 71, "outputs_max_abs_diff": 0.0},
}


def _write_csv(path: Path, header: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


def _epoch_row(epoch: int, *, ghosts: str, test_acc: float | None) -> dict:
    """One metrics row; no validation split, alpha/beta empty once the ghosts are removed."""
    on = ghosts == "on"
    return {
        "epoch": epoch,
        "step": epoch * STEPS_PER_EPOCH,
        "lr": 0.1 if epoch < 5 else 0.01,
        "alpha": max(0.0, 1 - epoch / 4) if on else "",
        "beta": 10 ** (epoch - 1) if on else "",  # 1 ... 1000: three decades
        "label_smoothing": 0.1,
        "ghosts": ghosts,
        "train_loss": 2.0 / epoch,
        "train_acc": 0.5 + 0.05 * epoch,
        "val_loss": "",
        "val_acc": "",
        "test_loss": "" if test_acc is None else 1.5 / epoch,
        "test_acc": "" if test_acc is None else test_acc,
        "images_per_s": 1000 + epoch,
        "seconds": 125.0 * epoch,
    }


def _step_rows(epochs: int) -> list[dict]:
    rows = []
    for step in range(1, epochs * STEPS_PER_EPOCH + 1):
        epoch = (step - 1) // STEPS_PER_EPOCH + 1
        on = epoch <= 4
        rows.append({
            "step": step, "epoch": epoch, "lr": 0.1 if epoch < 5 else 0.01,
            "alpha": max(0.0, 1 - step / 40) if on else "", "beta": 1.2 ** step if on else "",
            "label_smoothing": 0.1, "loss": 2.0 / step ** 0.3,
        })
    return rows


def _export() -> dict:
    layers = [
        {"name": "conv1.weight", "shape": [16, 3, 3, 3], "dtype": "float", "numel": 432, "nonzeros": 43,
         "sparsity": 0.9, "stored": "sparse"},
        {"name": "fc.bias", "shape": [10], "dtype": "float", "numel": 10, "nonzeros": 10, "sparsity": 0.0,
         "stored": "dense"},
    ]
    info = ExportInfo(
        path=Path("model.onnx"), sidecar=Path("model.onnx.json"), opset=18, inputs=[], outputs=[],
        dynamic_batch=True, max_abs_error=2.4e-7, max_rel_error=1e-7, rtol=1e-4,
        dense_bytes=4_000_000, sparse_bytes=1_200_000, external_data=False, layers=layers,
    )
    return export_section(info)


def _record(**sections) -> dict:
    """result.json of a completed six-epoch run whose ghosts left after epoch 4 (step 40)."""
    record = {
        "format": 1, "status": "completed", "reason": None, "config": {"name": "tiny", "hash": "sha256:0"},
        "accuracy": {"test": 0.7734, "test_last": 0.7734, "selected": "last", "best_val": None},
        "sparsity": 0.9, "weights": {"prunable": 1000, "kept": 100},
        "tweaks": {"ghost_skips": 2, "ghost_skip_projections": {"identity": 2}, "soft_activations": 0},
        "ghosts": {"count": 2, "parameters": 0, "removed_at": {"step": 40, "epoch": 4}, "kept": False},
        "training": {"epochs": 6, "steps": 60, "seconds": 750.0},
        "verification": VERIFY_PASSED, "export": _export(),
    }
    return record | sections


def _write_record(run_dir: Path, **sections) -> None:
    (run_dir / "result.json").write_text(json.dumps(_record(**sections)))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """Six epochs: ghosts on for four, removed for two; no val split; test skipped at epoch 2."""
    rows = [
        _epoch_row(epoch, ghosts="on" if epoch <= 4 else "removed", test_acc=None if epoch == 2 else acc)
        for epoch, acc in zip(range(1, 7), (0.40, None, 0.61, 0.7215, 0.7890, 0.7734))
    ]
    _write_csv(tmp_path / "metrics.csv", METRICS_HEADER, rows)
    _write_csv(tmp_path / "steps.csv", STEPS_HEADER, _step_rows(6))
    (tmp_path / "config.yaml").write_text("model: cifar:resnet20\noptimizer:\n  name: sgd\n  lr: 0.1\n")
    _write_record(tmp_path)
    return tmp_path


def _assert_png(path: Path, min_width: int = 300, min_height: int = 200) -> tuple[int, int]:
    assert path.is_file(), f"{path.name} was not written"
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # decodes every pixel: a truncated file fails here
        width, height = image.size
        colours = image.convert("L").getextrema()
    assert width >= min_width and height >= min_height
    assert colours[0] < colours[1], f"{path.name} is a blank image"
    return width, height


def _table_rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("|")]


def _cells(row: str) -> int:
    """Cells of a markdown table row: unescaped pipes, less the outer one."""
    return len(re.findall(r"(?<!\\)\|", row)) - 1


def test_full_run_writes_plots_and_summary(run_dir: Path) -> None:
    summary = write_report(
        run_dir, title="ResNet-20 | CIFAR-10, 90% random mask",
        layer_sparsity={"conv1.weight": 0.5, "layer1.0.conv1.weight": 0.9, "fc.weight": 0.7},
        events=[(40, "ghosts removed"), (40, "LR x0.1")],
        extra={"model": "cifar:resnet20", "device": "cpu"},
    )
    assert summary == run_dir / "summary.md"
    for name in ("curves.png", "schedules.png", "sparsity.png"):
        _assert_png(run_dir / name)
    text = summary.read_text()

    assert text.startswith("# ResNet-20")
    assert "| final test accuracy | 77.34% (epoch 6) |" in text
    assert "| best test accuracy | 78.90% (epoch 5) |" in text
    assert "val accuracy" not in text  # no validation split: no empty rows about it
    assert "| epochs | 6 |" in text and "| optimizer steps | 60 |" in text
    assert "| ghosts | removed before epoch 5 (step 40); epochs 5-6 trained as the original architecture |" in text
    assert "| wall time | 12m 30s |" in text
    assert "| model | cifar:resnet20 |" in text and "| device | cpu |" in text
    assert "| tweaks | ghost skips: 2 (2 identity) |" in text
    assert "| sparsity | 90.00% of conv/linear weights are zero |" in text
    assert "1.20 MB sparse, 4.00 MB dense (30% of dense); 1 of 2 initializers sparse" in text
    assert "max \\|diff\\| vs PyTorch 2.4e-07" in text
    assert "| verification | **passed** (3 checks): (a) graph isomorphic" in text
    for name in ("curves.png", "schedules.png", "sparsity.png"):
        assert f"]({name})" in text
    assert "```yaml\nmodel: cifar:resnet20\n" in text
    # Pipes in the title, the parity row and the verification text must not break any table.
    for row in _table_rows(text):
        assert _cells(row) == 2, row


def test_extra_sparsity_replaces_the_computed_one(run_dir: Path) -> None:
    text = write_report(
        run_dir, title="run", layer_sparsity={"a": 0.2, "b": 0.8}, extra={"sparsity": "90.0% (weighted)"}
    ).read_text()
    assert "| sparsity | 90.0% (weighted) |" in text
    assert "unweighted" not in text.split("## Plots")[0]


def test_without_a_record_sparsity_is_the_mean_over_layers(run_dir: Path) -> None:
    (run_dir / "result.json").unlink()
    text = write_report(run_dir, title="run", layer_sparsity={"a": 0.5, "b": 0.9}).read_text()
    assert "| sparsity (mean over layers, unweighted) | 70.00% |" in text
    assert "verification" not in text and "ONNX" not in text and "| ghosts |" not in text


def test_weighted_sparsity_comes_from_the_mask_file(run_dir: Path) -> None:
    import torch

    from surgery.compiler.masks import save_masks

    masks = {"big.weight": torch.zeros(90, dtype=torch.bool), "small.weight": torch.ones(10, dtype=torch.bool)}
    save_masks(masks, run_dir / "masks.safetensors")
    (run_dir / "result.json").unlink()
    text = write_report(run_dir, title="run", layer_sparsity={"big.weight": 1.0, "small.weight": 0.0}).read_text()
    assert "| sparsity (mask file, weighted by layer size) | 90.00% |" in text


def test_failed_verification_is_reported_as_failed(run_dir: Path) -> None:
    message = "output of original and clean differ: max |diff| = 0.3 > 1e-05\nthe de-ghosted graph ..."
    _write_record(run_dir, status="failed", reason={"error": "VerificationError", "message": message.splitlines()[0],
                                                    "stage": "finish"},
                  verification={"status": "failed", "error": "VerificationError", "message": message})
    text = write_report(run_dir, title="run").read_text()
    assert "| status | **failed**: output of original and clean differ" in text
    assert "| verification | **failed**: output of original and clean differ: max \\|diff\\| = 0.3 > 1e-05 |" in text
    assert "```text\n" + message + "\n```" in text  # the whole message in the Verification section


def test_the_verdict_is_the_records_whatever_verify_txt_says(run_dir: Path) -> None:
    (run_dir / "verify.txt").write_text("FAILED\nthis file is for people; nothing reads it\n")
    text = write_report(run_dir, title="run").read_text()
    assert "| verification | **passed** (3 checks)" in text and "nothing reads it" not in text


def test_the_selected_weights_accuracy_comes_from_the_record(run_dir: Path) -> None:
    best = {"epoch": 5, "val_acc": 0.81, "test_acc": 0.789}
    _write_record(run_dir, accuracy={"test": 0.789, "test_last": 0.7734, "selected": "best_val", "best_val": best})
    text = write_report(run_dir, title="run").read_text()
    assert ("| test accuracy (kept weights) | 78.90% (weights of the best-validation epoch 5, val 81.00%); "
            "last epoch 77.34% |") in text


def test_ghosts_kept_and_an_unverified_run_say_so(run_dir: Path) -> None:
    _write_record(run_dir, ghosts={"count": 2, "parameters": 10, "removed_at": None, "kept": True},
                  verification={"status": "skipped", "message": "ghosts kept to the end"}, export=None)
    text = write_report(run_dir, title="run").read_text()
    assert "| ghosts | kept to the end (ghosts.remove_at: never): not the original architecture |" in text
    assert "| verification | **skipped**: ghosts kept to the end |" in text and "ONNX" not in text
    assert "| ghost cost | 10 dense parameters kept in the trained model = 10% of the 100 kept weights |" in text
    assert "| architecture | **ghosts kept: not the original** |" in text  # a record without its words


def test_120_layers_stay_readable(run_dir: Path) -> None:
    layers = {f"stage{i // 40}.block{i % 40}.conv.weight": (i % 10) / 10 for i in range(120)}
    text = write_report(run_dir, title="run", layer_sparsity=layers).read_text()
    few = _assert_png(plot_layer_sparsity(dict(list(layers.items())[:5]), run_dir / "few.png"))
    many = _assert_png(run_dir / "sparsity.png")
    assert many[1] > 4 * few[1]  # the figure grows with the layer count instead of squeezing the bars

    details = text[text.index("<details>"):text.index("</details>")]
    assert "All 120 layers" in details
    assert sum(row.startswith("| `stage") for row in details.splitlines()) == 120
    inline = text[text.index("## Per-layer sparsity"):text.index("<details>")]
    assert sum(row.startswith("| `stage") for row in inline.splitlines()) == 10


def test_one_epoch_run_without_optional_files(tmp_path: Path) -> None:
    """No steps.csv (schedules come from metrics.csv), no sidecar, verify or config, ghosts never used."""
    row = _epoch_row(1, ghosts="none", test_acc=0.3125) | {"alpha": "", "beta": ""}
    _write_csv(tmp_path / "metrics.csv", METRICS_HEADER, [row])
    text = write_report(tmp_path, title="one epoch").read_text()

    _assert_png(tmp_path / "curves.png")
    _assert_png(tmp_path / "schedules.png")
    assert not (tmp_path / "sparsity.png").exists() and "sparsity.png" not in text
    assert "| final test accuracy | 31.25% (epoch 1) |" in text
    assert "ONNX" not in text and "verification" not in text and "ghosts" not in text
    assert "No config.yaml" in text


def test_schedules_fall_back_to_metrics_per_epoch(run_dir: Path) -> None:
    (run_dir / "steps.csv").unlink()
    write_report(run_dir, title="run", events=[(40, "ghosts removed")])
    _assert_png(run_dir / "schedules.png")


def test_standalone_plots_return_their_paths(run_dir: Path) -> None:
    assert plot_curves(run_dir / "metrics.csv", run_dir / "out" / "c.png") == run_dir / "out" / "c.png"
    assert plot_schedules(run_dir / "steps.csv", run_dir / "s.png", events=[(40, "ghosts removed")]).is_file()


def test_missing_metrics_raises(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=rf"no metrics\.csv in {re.escape(str(tmp_path))}: the run has not"):
        write_report(tmp_path, title="run")


def test_header_only_metrics_raises(tmp_path: Path) -> None:
    _write_csv(tmp_path / "metrics.csv", METRICS_HEADER, [])
    with pytest.raises(ReportError, match="has no rows: the run has not finished an epoch"):
        write_report(tmp_path, title="run")


def test_garbage_cell_names_file_line_and_column(run_dir: Path) -> None:
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    rows[2]["test_acc"] = "n/a"
    _write_csv(run_dir / "metrics.csv", METRICS_HEADER, rows)
    with pytest.raises(ReportError, match=r"metrics\.csv, line 4: column 'test_acc' holds 'n/a'"):
        write_report(run_dir, title="run")


def test_sparsity_given_as_percentage_raises(run_dir: Path) -> None:
    with pytest.raises(ReportError, match=r"layer_sparsity\['conv1.weight'\] = 90 is not a fraction"):
        write_report(run_dir, title="run", layer_sparsity={"conv1.weight": 90})


def test_leaves_pyplot_and_global_style_alone(run_dir: Path) -> None:
    """A user's interactive backend, open figures and rcParams are none of the report's business."""
    import sys

    import matplotlib

    pyplot_loaded = "matplotlib.pyplot" in sys.modules
    style = {key: matplotlib.rcParams[key] for key in ("font.size", "axes.spines.top", "axes.grid")}
    write_report(run_dir, title="run", layer_sparsity={"a": 0.5})
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_loaded
    assert {key: matplotlib.rcParams[key] for key in style} == style
