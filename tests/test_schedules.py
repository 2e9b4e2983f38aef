"""Schedules: the papers' formulas, their placement on the timeline, and bad input."""

from __future__ import annotations

import math

import pytest

from surgery.errors import ConfigError
from surgery.compiler.schedules import Clock, GhostPlan, LRSchedule, Schedule, SmoothingPlan, scaled_milestones


def test_linear_is_the_pipeline_papers_formula():
    alpha = Schedule("linear", 1.0, 0.0)
    beta = Schedule("linear", 1.0, 50.0)
    for t in (0.0, 0.25, 0.5, 1.0):
        assert alpha.at(t) == pytest.approx(1.0 * (1 - t))
        assert beta.at(t) == pytest.approx(1.0 * (1 - t) + 50.0 * t)


def test_cosine_step_and_constant():
    cosine = Schedule("cosine", 1.0, 0.0)
    assert cosine.at(0) == 1.0 and cosine.at(1) == pytest.approx(0.0) and cosine.at(0.5) == pytest.approx(0.5)
    assert cosine.at(0.25) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    stairs = Schedule("step", 1.0, 0.0, steps=4)
    assert [stairs.at(t) for t in (0.0, 0.2, 0.3, 0.6, 0.99, 1.0)] == pytest.approx([1, 1, 0.75, 0.5, 0.25, 0])
    assert Schedule("constant", 0.1, 0.1).at(0.7) == 0.1


def test_parse_numbers_mappings_and_errors():
    assert Schedule.parse(0.1, name="ls") == Schedule("constant", 0.1, 0.1)
    assert Schedule.parse({"kind": "cosine", "start": 2}, name="beta", default=Schedule("linear", 1, 50)).end == 50
    with pytest.raises(ConfigError, match="unknown schedule kind 'cosin'.*cosine"):
        Schedule.parse({"kind": "cosin"}, name="alpha")
    with pytest.raises(ConfigError, match="no field 'strat'.*start"):
        Schedule.parse({"strat": 1}, name="alpha")


def test_ghosts_reach_their_end_values_on_the_last_step_before_removal():
    plan = GhostPlan()
    lr = LRSchedule("step", (90, 135))
    removal = plan.removal_epoch(lr, 180)
    assert removal == 90  # ToST: right before the first LR decay
    first = plan.strength(Clock(0, 0, 391), removal)
    last = plan.strength(Clock(89, 390, 391), removal)
    assert first == {"alpha": 1.0, "beta": 1.0}
    assert last["alpha"] == pytest.approx(0.0) and last["beta"] == pytest.approx(50.0)
    middle = plan.strength(Clock(45, 0, 391), removal)
    assert 0.45 < middle["alpha"] < 0.55


def test_per_epoch_stepping_is_constant_within_an_epoch():
    plan = GhostPlan(per="epoch")
    a = plan.strength(Clock(3, 0, 100), 10)
    b = plan.strength(Clock(3, 99, 100), 10)
    assert a == b and a["alpha"] == pytest.approx(1 - 3 / 9)


def test_removal_options_and_the_ablations():
    lr = LRSchedule("step", (90, 135))
    assert GhostPlan(remove_at=60).removal_epoch(lr, 180) == 60
    assert GhostPlan(remove_at="never").removal_epoch(lr, 180) is None
    assert GhostPlan(remove_at="never").strength(Clock(100, 0, 10), None) == {"alpha": 1.0, "beta": 1.0}
    abrupt = GhostPlan(removal="abrupt")
    assert abrupt.strength(Clock(89, 9, 10), 90) == {"alpha": 1.0, "beta": 1.0}
    assert LRSchedule("cosine").first_decay(160) == 80


def test_a_removal_after_the_run_ends_is_an_error():
    with pytest.raises(ConfigError, match="after the run ends"):
        GhostPlan(remove_at=200).removal_epoch(LRSchedule("step", (90, 135)), 180)
    with pytest.raises(ConfigError, match="neither an epoch"):
        GhostPlan(remove_at="later")


def test_learning_rate_factors():
    step = LRSchedule("step", (90, 135), 0.1)
    assert [step.factor(e, 180) for e in (0, 89.9, 90, 134, 135, 179)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    cosine = LRSchedule("cosine")
    assert cosine.factor(0, 100) == 1 and cosine.factor(50, 100) == pytest.approx(0.5)
    asni = LRSchedule("cosine", delta=0.06)
    assert asni.factor(80, 160) == pytest.approx((1 + math.cos(math.pi * 80 / (1.06 * 160))) / 2)
    end = asni.factor(160, 160)
    assert end == pytest.approx((1 + math.cos(math.pi / 1.06)) / 2) and 0 < end < 0.01  # never negative
    warm = LRSchedule("step", (90,), warmup_epochs=4)
    assert warm.factor(0, 180) == pytest.approx(0.2) and warm.factor(4, 180) == 1
    with pytest.raises(ConfigError, match="unknown learning-rate schedule 'cosinus'"):
        LRSchedule("cosinus")
    with pytest.raises(ConfigError, match="never apply"):
        LRSchedule("step", (90, 200)).check(180)


@pytest.mark.parametrize("epochs", range(2, 40))
def test_every_run_of_two_or_more_epochs_decays_at_half_and_three_quarters(epochs):
    milestones = scaled_milestones(epochs)
    assert milestones and all(0 < m < epochs for m in milestones)
    assert milestones == sorted({epochs // 2, epochs * 3 // 4})
    LRSchedule("step", tuple(milestones)).check(epochs)  # the rule satisfies its own check


def test_a_one_epoch_run_has_no_decay_and_the_suggested_milestones_keep_the_rule():
    assert scaled_milestones(1) == [] and scaled_milestones(180) == [90, 135] and scaled_milestones(3) == [1, 2]
    with pytest.raises(ConfigError, match=r"at 50% and 75% of the run \(\[1\]\)"):
        LRSchedule("step", (1, 2)).check(2)
    with pytest.raises(ConfigError, match="a 1-epoch run has no decay"):
        LRSchedule("step", (1,)).check(1)


def test_label_smoothing_decays_over_its_own_span_then_holds():
    plan = SmoothingPlan(Schedule("linear", 0.1, 0.0), epochs=11)
    assert plan.at(Clock(0, 0, 10), 100) == pytest.approx(0.1)
    assert plan.at(Clock(5, 0, 10), 100) == pytest.approx(0.05)
    assert plan.at(Clock(50, 0, 10), 100) == 0.0
    with pytest.raises(ConfigError, match="outside"):
        SmoothingPlan(Schedule("constant", 1.5, 1.5))
