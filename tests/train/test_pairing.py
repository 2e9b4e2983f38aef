"""Paired seeds: one seed gives every arm the same starting weights, mask and data order, and each run
records digests of them (result.json's ``pairing``) that a paired report checks."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_run_config

from surgery.compiler.masks import load_masks
from surgery.zoo.models import build_model
from surgery.train import load_dataset
from surgery.train.pairing import data_digest, tensors_digest
from surgery.train.pipeline import run
from surgery.train.run_files import RunFiles

pytestmark = pytest.mark.slow  # three short runs


@pytest.fixture(scope="module")
def arms(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("arms")
    results = {}
    for recipe in ("none", "tost", "official-jumps"):  # no tweak, every tweak with LRsI, kept jumps
        config = tiny_run_config(tmp, recipe, recipe=recipe, mask={"method": "synflow", "sparsity": 0.9},
                                 data={"val_split": 0.2, "subset": 150, "batch_size": 30}, train={"epochs": 2, "seed": 3},
                                 lr_schedule={"milestones": [1]})
        results[recipe] = run(config).record
    return tmp, results


def test_the_arms_of_one_seed_start_from_the_same_weights_mask_and_data(arms):
    tmp, records = arms
    pairings = {recipe: record["pairing"] for recipe, record in records.items()}
    assert pairings["none"] == pairings["tost"] == pairings["official-jumps"]
    masks = {recipe: load_masks(RunFiles(tmp / recipe).masks)[0] for recipe in records}
    for name, mask in masks["none"].items():  # bit for bit
        assert torch.equal(mask, masks["tost"][name]) and torch.equal(mask, masks["official-jumps"][name])
    assert records["tost"]["lrsi"] is not None and records["none"]["lrsi"] is None  # LRsI rescaled after the digest


def test_the_digests_are_of_what_they_name(arms):
    _, records = arms
    pairing = records["none"]["pairing"]
    torch.manual_seed(3)
    fresh = build_model("cifar:resnet20", 10, input_size=8)
    assert pairing["init"] == tensors_digest(fresh.state_dict())  # before ghosts and LRsI: the seed's network
    torch.manual_seed(4)
    assert tensors_digest(build_model("cifar:resnet20", 10, input_size=8).state_dict()) != pairing["init"]
    dataset = load_dataset("synthetic", image_size=8, val_split=0.2, seed=3, subset=150)
    assert pairing["data"] == data_digest(dataset, 3) != data_digest(dataset, 4)
    assert records["none"]["data"] == {"splits": {"train": 120, "val": 30, "test": len(dataset.splits["test"])},
                                       "subset": {"images": 150, "seed": 0}}
