"""What each arm's final model holds, and plain training sized to match an arm that keeps its ghosts."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_run_config

import surgery
from surgery.apps.cli import main
from surgery.errors import SweepError
from surgery.zoo.models import build_model
from surgery.compiler.presets import PRESETS
from surgery.pruning.budget import prunable_for
from surgery.train import sweep
from surgery.train.config import RunConfig
from surgery.train.record import COMPLETED, holdings, recorded_holdings
from surgery.train.run_files import RunFiles
from surgery.train.sweeps import paired, table
from surgery.train.sweeps.grid import plan


@pytest.fixture
def base(tmp_path):
    return tiny_run_config(tmp_path, "base", mask={"sparsity": 0.9, "scope": "global"})


def test_holdings_count_kept_ghosts_as_dense_weights():
    held = holdings(parameters=1_000 + 300, prunable=900, kept=90, ghosts=300)
    assert held == {"prunable": 900, "kept": 90, "ghosts": 300, "trainable": 1_300 - 810,
                    "effective_sparsity": pytest.approx(1 - 390 / 1_200)}
    assert holdings(parameters=1_000, prunable=900, kept=90, ghosts=0)["effective_sparsity"] == pytest.approx(0.9)


def test_a_record_made_before_holdings_were_recorded_is_counted_from_what_it_holds():
    old = {"model": {"parameters": 1_000}, "weights": {"prunable": 900, "kept": 90},
           "ghosts": {"parameters": 300, "kept": True}}
    assert recorded_holdings(old) == holdings(parameters=1_300, prunable=900, kept=90, ghosts=300)
    removed = {**old, "ghosts": {"parameters": 300, "kept": False}}
    assert recorded_holdings(removed)["trainable"] == 1_000 - 810 and recorded_holdings(removed)["ghosts"] == 0


def counts(config: RunConfig, recipe: str) -> tuple[int, int, int]:
    """The model's parameters, its mask budget and the ghost parameters ``recipe`` adds, counted directly."""
    model = build_model(config.model.spec, 10, input_size=8)
    budget = sum(w.numel() for w in prunable_for(model).values())
    ghosted = surgery.compile(model, __import__("torch").zeros(2, 3, 8, 8), recipe=PRESETS[recipe].passes)
    return sum(p.numel() for p in model.parameters()), budget, surgery.manifest_of(ghosted).ghost_parameters


def test_match_gives_the_sparsity_whose_plain_model_is_as_large_as_the_arm(base, tmp_path):
    runs = plan(base, [{"recipe": ["none", "tost-official"]},
                       {"recipe": ["none"], "mask.sparsity": [{"match": "tost-official"}, {"parameters": 100_000}]}],
                [0], tmp_path / "s")
    matched = {run.name: run for run in runs if run.matched}
    total, budget, ghosts = counts(base, "tost-official")
    arm = matched["recipe-none_sparsity-match-tost-official_seed-0"]
    assert arm.matched.kept == round(0.1 * budget) + ghosts  # the arm's mask weights plus its kept ghosts
    assert round((1 - arm.config.mask.sparsity) * budget) == arm.matched.kept  # what a global budget keeps
    assert arm.matched.trainable == total - budget + arm.matched.kept
    assert arm.cell["mask.sparsity"] == "{match: tost-official}"
    asked = matched["recipe-none_sparsity-parameters-100000_seed-0"]
    assert total - budget + round((1 - asked.config.mask.sparsity) * budget) == 100_000


def test_an_arm_that_removes_its_ghosts_is_matched_at_its_own_sparsity(base, tmp_path):
    [run] = [r for r in plan(base, [{"recipe": ["none", "tost"]}, {"recipe": ["none"], "mask.sparsity": [{"match": "tost"}]}],
                             [0], tmp_path / "s") if r.matched]
    assert run.config.mask.sparsity == pytest.approx(0.9, abs=1e-5) and run.matched.arm_ghosts == 0


def test_matching_an_arm_the_sweep_does_not_run_names_its_arms(base, tmp_path):
    with pytest.raises(SweepError) as error:
        plan(base, [{"recipe": ["none", "tost"]}, {"recipe": ["none"], "mask.sparsity": [{"match": "tost-official"}]}],
             [0], tmp_path / "s")
    message = str(error.value)
    assert "names an arm this sweep does not run (recipe=tost-official)" in message
    assert "its arms: recipe=none; recipe=tost" in message


@pytest.mark.parametrize(("sparsity", "target", "asked"), [
    (0.9, {"parameters": 10}, "10 were asked"),
    (0.0, {"match": "tost-official"}, "recipe=tost-official holds"),  # dense plus its jumps: more than dense
])
def test_a_count_no_sparsity_reaches_says_the_reachable_range(base, tmp_path, sparsity, target, asked):
    total, budget, _ = counts(base, "tost-official")
    grids = [{"recipe": ["none", "tost-official"]}, {"recipe": ["none"], "mask.sparsity": [target]}]
    with pytest.raises(SweepError) as error:
        plan(base.with_fields({"mask.sparsity": sparsity}), grids, [0], tmp_path / "s")
    message = str(error.value)
    assert "no sparsity in [0, 1) reaches" in message and asked in message
    assert f"holds between {total - budget + 1:,} (one weight kept) and {total:,} (dense)" in message


@pytest.mark.parametrize(("value", "message"), [
    ({"matches": "tost"}, "one key, match or parameters"),
    ({"match": "tots"}, "match names the arm to match"),
    ({"parameters": -3}, "positive count"),
])
def test_a_malformed_target_is_refused_before_anything_runs(base, tmp_path, value, message):
    with pytest.raises(SweepError, match=message):
        plan(base, [{"recipe": ["none"], "mask.sparsity": [value]}], [0], tmp_path / "s")


def test_the_cli_refuses_an_unknown_arm_in_one_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(tiny_run_config(tmp_path, "c", recipe="none").to_yaml())
    argv = ["sweep", str(path), "--grid", "recipe=none,tost", "--grid", "mask.sparsity={match: gsk}", "--dry-run"]
    assert main(argv) == 2
    assert "names an arm this sweep does not run" in capsys.readouterr().err


def sized_rows(arm: dict, plain: dict, matched: dict, ours, theirs, same_size, sizes=(38_036, 6_996)) -> list[dict]:
    rows = []
    for cell, values, size in ((arm, ours, sizes[0]), (plain, theirs, sizes[1]), (matched, same_size, sizes[0])):
        rows += [{**cell, "seed": seed, "status": COMPLETED, "test_acc_last": value, "trainable_parameters": size,
                  "pair_init": f"i{seed}", "pair_data": "d", "pair_mask": f"{size}-{seed}"}
                 for seed, value in enumerate(values)]
    return rows


def test_an_arm_that_keeps_more_parameters_is_also_paired_with_plain_training_of_its_size():
    fields = ["recipe", "mask.sparsity"]
    rows = sized_rows({"recipe": "tost-official"}, {"recipe": "none"},
                      {"recipe": "none", "mask.sparsity": "{match: tost-official}"},
                      [0.50, 0.52, 0.54], [0.45, 0.47, 0.49], [0.51, 0.54, 0.55])
    rows = [r | {"pair_mask": "m"} if r.get("mask.sparsity") is None else r for r in rows]  # same mask, same sparsity
    against_none, same_size = paired.compare(rows, fields, "test_acc_last")
    assert against_none.kind == paired.BASELINE_KIND and against_none.mean == pytest.approx(5.0)
    assert same_size.kind == paired.EQUAL_SIZE and same_size.baseline == {"recipe": "none",
                                                                          "mask.sparsity": "{match: tost-official}"}
    assert same_size.n == 3 and same_size.mean == pytest.approx(-4 / 3)  # masks differ by design: still pairs
    assert same_size.sizes == (38_036, 38_036)
    text = "\n".join(paired.markdown([against_none, same_size], fields, "test_acc_last"))
    assert "## Paired against plain sparse training of the same final size" in text
    assert "| tost-official |  | mask.sparsity={match: tost-official} | 38,036 / 38,036 | 3 | -1.33 |" in text


def test_without_a_plain_cell_of_its_size_the_report_says_how_to_add_one():
    rows = sized_rows({"recipe": "tost-official"}, {"recipe": "none"}, {"recipe": "none", "mask.sparsity": "0.5"},
                      [0.5, 0.5], [0.4, 0.4], [0.6, 0.6], sizes=(38_036, 6_996))
    rows = [r | {"trainable_parameters": 130_000} if r.get("mask.sparsity") else r | {"pair_mask": "m"} for r in rows]
    *_, same_size = paired.compare(rows, ["recipe", "mask.sparsity"], "test_acc_last")
    assert same_size.baseline is None and "mask.sparsity: {match: ARM}" in same_size.problem
    paired.require_pairs([same_size])  # said in the table, not refused: the sweep may not have asked for it


@pytest.mark.slow
def test_a_sweep_trains_plain_at_the_size_of_the_kept_jumps_arm(tmp_path):
    config = tiny_run_config(tmp_path, "cap", recipe="none", train={"epochs": 1, "device": "cpu"},
                             lr_schedule={"milestones": []}, mask={"sparsity": 0.9, "scope": "global"},
                             export={"verify": True, "onnx": False})
    out = tmp_path / "sweep"
    sweep(config, [{"recipe": ["none", "official-jumps"]},
                   {"recipe": ["none"], "mask.sparsity": [{"match": "official-jumps"}]}], seeds=1, jobs=2, out=out)
    rows = {(r["recipe"], r.get("mask.sparsity")): r for r in table.collect(out)}
    jumps, plain = rows[("official-jumps", None)], rows[("none", None)]
    matched = rows[("none", "{match: official-jumps}")]
    assert all(r["status"] == COMPLETED for r in rows.values())
    assert jumps["ghost_parameters"] > 0 and plain["ghost_parameters"] == matched["ghost_parameters"] == 0
    assert matched["trainable_parameters"] == jumps["trainable_parameters"] > plain["trainable_parameters"]
    assert jumps["sparsity"] == pytest.approx(0.9, abs=1e-4) and jumps["effective_sparsity"] < 0.85
    assert matched["sparsity"] == pytest.approx(matched["effective_sparsity"])  # no ghosts: the two agree
    assert matched["kept_weights"] == jumps["kept_weights"] + jumps["ghost_parameters"]
    record = json.loads(RunFiles(jumps["run_dir"]).result.read_text())
    assert record["weights"]["ghosts"] == jumps["ghost_parameters"] and record["effective_sparsity"] < record["sparsity"]
    summary = RunFiles(jumps["run_dir"]).summary.read_text()
    assert "final model holds" in summary and "dense ghost parameters kept" in summary
    text = (out / "results.md").read_text()
    assert "effective sparsity (%)" in text and "## Paired against plain sparse training of the same final size" in text
    assert (out / "accuracy-vs-effective-sparsity.png").stat().st_size > 5_000
