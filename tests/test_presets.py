"""Recipe presets: `tost` is the paper's four tweaks whatever door a user comes in by; `tost-official` is
the authors' released code; each tweak switches off by one field or flag; contradictions are refused."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import surgery
from conftest import tiny_run_config
from surgery.apps.cli import build_parser, configured
from surgery.apps.demo import demo_config
from surgery.errors import ConfigError, SurgeryError
from surgery.compiler.ghosts import ConvProjection, GhostSkip, PSwish, ghosts
from surgery.zoo.models import build_model
from surgery.compiler.presets import PRESETS
from surgery.train import RunConfig, pipeline
from surgery.train.losses import classification_loss
from surgery.train.run_files import RunFiles
from surgery.train.sweeps.grid import plan

FOUR_TWEAKS = {"ghost_skip", "soft_activation"}


def four_tweaks(config: RunConfig) -> bool:
    return (set(config.recipe) == FOUR_TWEAKS and config.lrsi.enabled and config.label_smoothing.start == 0.1
            and config.ghosts.remove_at == "first_decay" and config.label_smoothing.spread == "all")


def cli_config(*argv: str) -> RunConfig:
    args = build_parser().parse_args(["train", "cifar:resnet20", *argv])
    return configured(RunConfig.from_dict({"name": "t"}), args)


def test_tost_is_the_four_tweaks_through_every_door(tmp_path):
    (tmp_path / "run.yaml").write_text("recipe: tost\n")
    assert four_tweaks(RunConfig.from_dict({}))  # surgery train's base, and a mapping without a recipe
    assert four_tweaks(RunConfig())
    assert four_tweaks(RunConfig.from_yaml(tmp_path / "run.yaml"))
    assert four_tweaks(cli_config())
    assert four_tweaks(cli_config("--recipe", "tost"))
    assert four_tweaks(demo_config())
    sweep = plan(RunConfig.from_dict({"recipe": "none"}), [{"recipe": ["tost", "none"]}], [0], tmp_path / "s")
    assert four_tweaks(sweep[0].config) and sweep[1].config.recipe == {} and not sweep[1].config.lrsi.enabled


def test_each_tweak_switches_off_by_one_flag():
    assert not cli_config("--no-lrsi").lrsi.enabled
    assert cli_config("--label-smoothing", "0").label_smoothing.start == 0.0
    assert set(surgery.Recipe.from_dict(cli_config("--no-ghost-skip").recipe).to_dict()) == {"soft_activation"}
    assert set(surgery.Recipe.from_dict(cli_config("--no-pswish").recipe).to_dict()) == {"ghost_skip"}
    assert cli_config("--lrsi-iterations", "7").lrsi.iterations == 7
    baseline = cli_config("--recipe", "none")
    assert baseline.recipe == {} and not baseline.lrsi.enabled and baseline.label_smoothing.start == 0.0
    assert cli_config("--recipe", "none", "--lrsi").lrsi.enabled  # a flag given beside a preset wins


def test_a_recipe_given_as_passes_trains_those_passes_alone(tmp_path):
    config = RunConfig.from_dict({"recipe": {"ghost_skip": {}}})
    assert config.preset is None and not config.lrsi.enabled and config.label_smoothing.start == 0.0
    assert RunConfig.from_dict({"recipe": {"ghost_skip": {}}, "lrsi": {"enabled": True}}).lrsi.enabled


def test_tost_official_is_the_released_code():
    config = RunConfig.from_dict({"recipe": "tost-official"})
    assert config.recipe["ghost_skip"] == {"projection": "conv1x1", "identity": False, "fill": 1e-4}
    assert config.ghost_plan().alpha.at(0.7) == 1.0 and config.ghost_plan().beta.at(0.7) == 2.0
    assert config.ghosts.remove_at == "never"
    lrsi = config.lrsi
    assert (lrsi.enabled, lrsi.iterations, lrsi.scale_lr, lrsi.grad_norm_bound, lrsi.normalize, lrsi.half_batches) == (
        True, 180, 1e-2, 1.0, True, False)
    assert (config.label_smoothing.start, config.label_smoothing.spread) == (0.1, "others")
    # the paper's removal of the same jumps is one field away, and a round trip keeps it all
    removed = RunConfig.from_dict({"recipe": "tost-official", "ghosts": {"remove_at": "first_decay"}})
    assert removed.ghosts.remove_at == "first_decay" and removed.recipe == config.recipe
    assert RunConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()


def test_leaving_a_preset_undoes_what_it_set():
    official = RunConfig.from_dict({"recipe": "tost-official", "lrsi": {"eta": 0.05}})
    back = official.with_fields({"recipe": "tost"})
    assert four_tweaks(back) and back.lrsi.half_batches and back.lrsi.iterations is None
    assert back.lrsi.eta == 0.05  # not a preset field: kept


@pytest.mark.parametrize(("data", "message"), [
    ({"recipe": "tost-oficial"}, r"unknown recipe preset 'tost-oficial'.*Did you mean 'tost-official'"),
    ({"recipe": "tost-official", "lrsi": {"enabled": False}},
     r"tost-official sets lrsi.enabled to True \(LRsI/train_ticket.py\), but the config sets False"),
    ({"recipe": "tost-official", "label_smoothing": {"spread": "all"}}, r"sets label_smoothing.spread to 'others'"),
    ({"recipe": "tost-official", "ghosts": {"beta": {"kind": "linear", "start": 1, "end": 50}}},
     r"sets ghosts.beta to .*fixed at 2"),
    ({"recipe": "tost", "label_smoothing": {"spread": "every"}}, r"unknown label_smoothing.spread 'every'"),
])
def test_bad_presets_and_contradictions_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict(data)


def test_contradicting_flags_are_refused_with_the_field_and_the_preset_value():
    with pytest.raises(ConfigError, match=r"recipe tost-official sets recipe to .*identity"):
        cli_config("--recipe", "tost-official", "--no-ghost-skip")
    with pytest.raises(SurgeryError, match=r"unknown recipe preset 'tots'"):
        surgery.ToST(torch.nn.Conv2d(3, 3, 3), torch.randn(1, 3, 8, 8), "tots", total_steps=4)
    with pytest.raises(SurgeryError, match=r"unknown recipe preset 'nnone'.*'none'"):
        surgery.compile(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3)), torch.randn(1, 3, 8, 8), "nnone")


def test_label_smoothing_spread_matches_both_formulas():
    logits, targets = torch.randn(6, 10, generator=torch.Generator().manual_seed(0)), torch.arange(6)
    alpha, classes = 0.1, 10
    paper = torch.full((6, classes), alpha / classes).scatter_(1, targets[:, None], 1 - alpha + alpha / classes)
    official = torch.full((6, classes), alpha / (classes - 1)).scatter_(1, targets[:, None], 1 - alpha)
    expected = {name: -(F.log_softmax(logits, 1) * y).sum(1).mean() for name, y in (("all", paper), ("others", official))}
    for spread, value in expected.items():
        assert classification_loss(logits, targets, label_smoothing=alpha, spread=spread) == pytest.approx(value.item())


def test_official_jumps_are_filled_projections_on_every_wrapped_conv():
    model = build_model("cifar:resnet20", 10)
    ghosted = surgery.compile(model, torch.randn(2, 3, 16, 16), PRESETS["tost-official"].passes)
    skips = [g for _, g in ghosts(ghosted) if isinstance(g, GhostSkip)]
    assert len(skips) == 18 and all(isinstance(s.projection, ConvProjection) for s in skips)
    assert all(torch.all(s.projection.conv.weight == 1e-4) and s.projection.norm is not None for s in skips)
    assert all(torch.all(s.projection.norm.weight == 1) for s in skips)  # BatchNorm keeps PyTorch's init


def test_own_loop_runs_lrsi_and_the_smoothing_of_its_preset():
    model, x = build_model("cifar:resnet20", 10), torch.randn(4, 3, 8, 8)
    batches = [(torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))) for _ in range(3)]
    tost = surgery.ToST(model, x, "tost", total_steps=6, steps_per_epoch=3)
    before = {k: v.clone() for k, v in tost.model.state_dict().items()}
    result = tost.lrsi(batches, lr=0.1)
    assert result.iterations == 3  # one pass over the loader
    assert any(not torch.equal(before[k], v) for k, v in tost.model.state_dict().items())
    assert (tost.criterion.label_smoothing, tost.criterion.spread) == (0.1, "all")
    official = surgery.ToST(model, x, "tost-official", total_steps=6, steps_per_epoch=3)
    assert official.removal_step is None and official.criterion.spread == "others"
    assert official.strength() == {"alpha": 1.0, "beta": 2.0}
    kept = official.finish()
    assert ghosts(kept) and official.architecture.startswith("kept ") and official.report is None


# tost-official pins LRsI's 180 iterations (3 whole batches each): batches of 10 of 100 images keep them seconds.
OFFICIAL_DATA = {"batch_size": 10, "subset": 100}


@pytest.mark.slow
def test_a_run_that_keeps_its_ghosts_says_so_and_exports_what_it_trained(tmp_path):
    config = tiny_run_config(tmp_path, recipe="tost-official", export={"onnx": True}, data=OFFICIAL_DATA)
    result = pipeline.run(config)
    record = json.loads(RunFiles(config.run_dir).result.read_text())
    kept = record["ghosts"]["kept_modules"]
    assert kept == 18 + 19 and record["architecture"] == f"kept {kept} ghost modules: not the original"
    assert record["verification"]["status"] == "skipped" and "not the original" in record["verification"]["message"]
    assert record["lrsi"]["iterations"] == 180
    assert record["export"]["architecture"] == record["architecture"] and record["export"]["max_rel_error"] < 1e-4
    sidecar = json.loads((RunFiles(config.run_dir).onnx.parent / "model.onnx.json").read_text())
    assert sidecar["architecture"] == record["architecture"]
    summary = RunFiles(config.run_dir).summary.read_text()
    assert "| architecture | **kept 37 ghost modules: not the original** |" in summary
    assert "dense parameters kept in the trained model" in summary
    assert any(isinstance(g, PSwish) for _, g in ghosts(result.model)) and result.model.training is False
    jumps = [g.projection.conv.weight for _, g in ghosts(result.model) if isinstance(g, GhostSkip)]
    assert all(int(w.count_nonzero()) == w.numel() for w in jumps)  # never pruned: the masks cover the original


@pytest.mark.slow
def test_the_official_jumps_removed_as_the_paper_says_end_verified(tmp_path):
    config = tiny_run_config(tmp_path, recipe="tost-official", ghosts={"remove_at": "first_decay"}, data=OFFICIAL_DATA)
    result = pipeline.run(config)
    assert result.record["architecture"] == "the original" and result.record["verification"]["status"] == "passed"
    assert result.ghosts_removed_at == (20, 2)  # 10 steps an epoch
