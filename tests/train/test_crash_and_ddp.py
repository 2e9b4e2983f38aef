"""Real processes: a run SIGKILLed mid-epoch and resumed ends bit-identical to one never killed;
two gloo ranks under torchrun end with the same weights as each other and a 1-process run's mask."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # kills runs and starts gloo ranks in subprocesses

TINY = {
    "model": {"spec": "cifar:resnet20"},
    "data": {"dataset": "synthetic", "image_size": 8, "batch_size": 100},
    "mask": {"sparsity": 0.8},
    "recipe": "tost",
    "lr_schedule": {"milestones": [2]},
    "label_smoothing": {"start": 0.1},
    "train": {"epochs": 4, "progress": False, "tensorboard": False, "log_every": 1, "checkpoint_every": 1},
    "export": {"onnx": False},
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def write_config(tmp_path: Path, name: str, **train) -> Path:
    config = {**TINY, "name": name, "output": str(tmp_path / name), "train": {**TINY["train"], **train}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def surgery_run(config: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "surgery", "run", str(config), *extra]
    return subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(process: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def rows(path: Path) -> int:
    return max(len(path.read_text().splitlines()) - 1, 0) if path.exists() else 0


def test_a_run_killed_mid_epoch_resumes_to_bit_identical_weights(tmp_path):
    reference = surgery_run(write_config(tmp_path, "reference"))
    config = write_config(tmp_path, "killed")
    run_dir = tmp_path / "killed"
    victim = surgery_run(config)
    deadline = time.monotonic() + 240
    # Kill once epoch 2 is checkpointed and epoch 3 is under way (10 steps per epoch).
    while rows(run_dir / "steps.csv") < 23 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (run_dir / "model.safetensors").exists()
    output = finished(surgery_run(config, "--resume"))
    assert "resumed from" in output and "epoch 3" in output
    finished(reference)
    expected = load_file(tmp_path / "reference" / "model.safetensors")
    got = load_file(run_dir / "model.safetensors")
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


DDP_WORKER = """
import os, sys, torch
from surgery.train import pipeline
from surgery.train.config import RunConfig

result = pipeline.run(RunConfig.from_yaml(sys.argv[1]))
torch.save(result.model.state_dict(), os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.pt"))
"""


def test_two_gloo_ranks_agree_and_keep_the_one_process_mask(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER)
    config = write_config(tmp_path, "ddp", epochs=3)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
               str(worker), str(config), str(tmp_path)]
    single = surgery_run(write_config(tmp_path, "single", epochs=3))
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    finished(single)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    ddp_masks = load_file(tmp_path / "ddp" / "masks.safetensors")
    single_masks = load_file(tmp_path / "single" / "masks.safetensors")
    assert ddp_masks.keys() == single_masks.keys()
    assert all(torch.equal(ddp_masks[k], single_masks[k]) for k in ddp_masks)
    for name, mask in ddp_masks.items():  # the trained weights honour the mask on both ranks
        assert torch.count_nonzero(rank0[name][~mask.bool()]) == 0
    assert rows(tmp_path / "ddp" / "metrics.csv") == 3  # one writer: rank 0
    assert (tmp_path / "ddp" / "verify.txt").is_file()
