"""A run's mask stage: methods get what they need from the run's data."""

from __future__ import annotations

import dataclasses

from rich.console import Console

from surgery.zoo.models import build_model
from surgery.pruning.registry import METHODS, method
from surgery.train import RunConfig
from surgery.train.data import load_dataset, make_loader
from surgery.train.distributed import Distributed
from surgery.train.masking import plan_masks


def test_a_method_that_runs_a_made_up_input_gets_the_datas_shape(monkeypatch):
    seen = {}
    synflow = method("synflow")

    def spy(model, names, budget, **options):
        seen.update(options)
        return synflow.find(model, names, budget, **{**options, "rounds": 1})

    monkeypatch.setitem(METHODS, "synflow", dataclasses.replace(synflow, find=spy))
    config = RunConfig.from_dict({"model": {"spec": "cifar:resnet20"}, "mask": {"method": "synflow", "sparsity": 0.9,
                                                                           "allow_empty_layers": True}})  # 1 round
    loader = make_loader(load_dataset("synthetic", image_size=16), "train", 10, train=True, seed=0)
    plan = plan_masks(config, build_model("cifar:resnet20", 10), train_loader=loader, eval_loaders={},
                      dist=Distributed.from_env("cpu"), console=Console(quiet=True))
    assert seen["input_shape"] == (3, 16, 16)  # not SynFlow's CIFAR-sized default of 32
    assert plan.masks
