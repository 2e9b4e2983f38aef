"""The embedded demo job (``surgery demo``): the whole pipeline, offline, on CPU, in about two minutes.

A CIFAR-style ResNet-20 on scikit-learn's bundled 8x8 digits (upsampled), a random
90% mask, full ToST (ghost skips around the body's 3x3 convs, PSwish for every ReLU,
LRsI, label smoothing), trained with SGD while alpha falls 1 -> 0 and beta rises; the
ghosts leave before the first LR decay, training goes on with the plain ResNet-20,
and the result is verified against the original, exported to sparse ONNX and
reported. It is ``surgery run`` on the config below.
"""

from __future__ import annotations

from rich.console import Console

from surgery.train import RunConfig, RunResult
from surgery.train import run as run_pipeline

EPOCHS = 30


def demo_config() -> RunConfig:
    """The demo's config; ``surgery demo``'s flags and ``--set`` change it like any other config's."""
    return RunConfig.from_dict({
        "name": "demo",
        "output": "runs/demo",
        "model": {"spec": "cifar:resnet20"},
        "data": {"dataset": "digits", "image_size": 16, "batch_size": 128},
        "mask": {"method": "random", "sparsity": 0.9},
        "recipe": "tost",  # the paper's four tweaks (surgery.compiler.presets): ghost skips, PSwish, LRsI, label smoothing 0.1
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4},
        "lr_schedule": {"kind": "step", "gamma": 0.1},  # decays at 50% and 75% of train.epochs
        "train": {"epochs": EPOCHS, "device": "cpu", "checkpoint_every": 5, "tensorboard": False},
    })


def run(config: RunConfig, console: Console | None = None, *, resume: bool | str = False, force: bool = False) -> RunResult:
    return run_pipeline(config, console=console, resume=resume, force=force)
