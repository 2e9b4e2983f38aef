"""Losses: label smoothing by hand, distillation against a direct KL, a teacher that stays frozen."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from conftest import SmallCNN, randomize_norms, seeded
from torch import nn

from surgery.errors import ConfigError, DataError
from torchvision.models import GoogLeNetOutputs

from surgery.train.losses import Distillation, classification_loss, main_and_auxiliary, with_auxiliary

GENERATOR = torch.Generator().manual_seed(0)
LOGITS = torch.randn(6, 4, generator=GENERATOR)
TARGETS = torch.tensor([0, 1, 2, 3, 1, 0])
IMAGES = torch.randn(6, 3, 8, 8, generator=GENERATOR)


def teacher_and_student() -> tuple[nn.Module, nn.Module]:
    teacher = randomize_norms(seeded(SmallCNN, 4, seed=1)).train()
    student = seeded(SmallCNN, 4, seed=2)
    return teacher, student


# ---------------------------------------------------------------------- label smoothing


def test_label_smoothing_matches_the_smoothed_targets_by_hand():
    a, classes = 0.2, LOGITS.shape[1]
    smoothed = F.one_hot(TARGETS, classes).float() * (1 - a) + a / classes  # y (1 - a) + a / K
    by_hand = -(smoothed * LOGITS.log_softmax(dim=1)).sum(dim=1).mean()

    torch.testing.assert_close(classification_loss(LOGITS, TARGETS, label_smoothing=a), by_hand)


def test_no_smoothing_is_plain_cross_entropy_and_probabilities_are_accepted():
    hard = -LOGITS.log_softmax(dim=1)[torch.arange(6), TARGETS].mean()
    torch.testing.assert_close(classification_loss(LOGITS, TARGETS), hard)
    soft_targets = F.one_hot(TARGETS, 4).float()
    torch.testing.assert_close(classification_loss(LOGITS, soft_targets), hard)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, math.nan, True, "0.1"])
def test_smoothing_outside_zero_one_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="label_smoothing"):
        classification_loss(LOGITS, TARGETS, label_smoothing=bad)


def test_targets_that_do_not_fit_the_logits_are_data_errors():
    with pytest.raises(DataError, match=r"targets of shape \(5,\)"):
        classification_loss(LOGITS, TARGETS[:5])
    with pytest.raises(DataError, match="logits have shape"):
        classification_loss(LOGITS[0], TARGETS[0])


# ---------------------------------------------------------------------- distillation


def test_distillation_is_zero_when_the_student_equals_the_teacher():
    teacher, _ = teacher_and_student()
    distill = Distillation(teacher, temperature=3.0, weight=1.0)
    with torch.no_grad():
        same = teacher(IMAGES)  # Distillation put the teacher in eval mode

    assert float(distill(same, TARGETS, IMAGES)) == pytest.approx(0.0, abs=1e-6)


def test_distillation_equals_the_weighted_sum_of_cross_entropy_and_a_direct_kl():
    teacher, student = teacher_and_student()
    tau, weight, smoothing = 4.0, 0.7, 0.1
    distill = Distillation(teacher, temperature=tau, weight=weight)
    logits = student(IMAGES)

    with torch.no_grad():
        p_teacher = F.softmax(teacher.eval()(IMAGES) / tau, dim=1)
    p_student = F.softmax(logits / tau, dim=1)
    kl = (p_teacher * (p_teacher.log() - p_student.log())).sum(dim=1).mean()  # KL(teacher || student)
    expected = (1 - weight) * classification_loss(logits, TARGETS, label_smoothing=smoothing) + weight * tau**2 * kl

    torch.testing.assert_close(distill(logits, TARGETS, IMAGES, label_smoothing=smoothing), expected)


def test_gradients_reach_the_student_but_never_the_teacher():
    teacher, student = teacher_and_student()
    distill = Distillation(teacher)

    distill(student(IMAGES), TARGETS, IMAGES).backward()

    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.fc.parameters())


def test_teacher_stays_in_eval_mode_and_its_statistics_do_not_move():
    teacher, student = teacher_and_student()
    distill = Distillation(teacher).train()
    stats = teacher.bn1.running_mean.clone()

    teacher.train()  # e.g. a trainer calling .train() on everything it knows
    distill(student(IMAGES), TARGETS, IMAGES)

    assert not any(m.training for m in teacher.modules())
    assert torch.equal(teacher.bn1.running_mean, stats)


def test_the_teacher_is_not_part_of_the_loss_modules_state():
    teacher, _ = teacher_and_student()
    distill = Distillation(teacher)
    holder = nn.ModuleDict({"loss": distill})

    assert list(holder.parameters()) == [] and holder.state_dict() == {}
    assert distill.teacher is teacher


def test_distillation_weight_zero_is_the_hard_loss_alone():
    teacher, student = teacher_and_student()
    logits = student(IMAGES)
    torch.testing.assert_close(
        Distillation(teacher, weight=0.0)(logits, TARGETS, IMAGES, label_smoothing=0.1),
        classification_loss(logits, TARGETS, label_smoothing=0.1),
    )


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -2.0}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"weight": 1.5}, "weight"),
        ({"weight": -0.1}, "weight"),
    ],
)
def test_bad_distillation_options_are_config_errors(options, named):
    teacher, _ = teacher_and_student()
    with pytest.raises(ConfigError, match=named):
        Distillation(teacher, **options)


def test_bad_teachers_are_config_errors():
    with pytest.raises(ConfigError, match="not a torch.nn.Module"):
        Distillation("resnet18.pt")
    wrong_classes = Distillation(seeded(SmallCNN, 7))
    with pytest.raises(ConfigError, match="same classes"):
        wrong_classes(seeded(SmallCNN, 4)(IMAGES), TARGETS, IMAGES)
    with pytest.raises(ConfigError, match="label_smoothing"):
        Distillation(seeded(SmallCNN, 4))(LOGITS, TARGETS, IMAGES, label_smoothing=1.0)


# ------------------------------------------------------- auxiliary heads (GoogLeNet, Inception v3)


def test_auxiliary_logits_are_told_apart_from_the_logits():
    logits, aux = torch.randn(4, 3), torch.randn(4, 3)
    assert main_and_auxiliary(logits) == (logits, [])
    main, auxiliary = main_and_auxiliary(GoogLeNetOutputs(logits, aux, None))  # a head switched off: None
    assert main is logits and len(auxiliary) == 1 and auxiliary[0] is aux


@pytest.mark.parametrize("output", [(torch.randn(4, 3), torch.randn(4, 5)), {"out": torch.randn(4, 3)}, ("x",)])
def test_an_output_that_is_not_logits_says_what_training_needs(output):
    with pytest.raises(ConfigError, match=r"training needs logits of shape \(batch, classes\)"):
        main_and_auxiliary(output)


def test_the_auxiliary_loss_adds_each_head_weighted():
    logits, aux, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    expected = F.cross_entropy(logits, y) + 0.3 * F.cross_entropy(aux, y)
    assert torch.allclose(with_auxiliary(0.3)((logits, aux), y), expected)
    assert torch.allclose(with_auxiliary(0.3)(logits, y), F.cross_entropy(logits, y))


class ModelOutputLike(OrderedDict):
    """Like Hugging Face's ModelOutput: a dict whose entries are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as error:
            raise AttributeError(name) from error


def test_the_logits_of_a_model_output_are_its_logits_entry():
    logits = torch.randn(4, 3)
    assert main_and_auxiliary(ModelOutputLike(loss=None, logits=logits)) == (logits, [])


def test_a_model_output_without_logits_names_the_entries_it_has():
    output = ModelOutputLike(last_hidden_state=torch.randn(4, 5, 8), pooler_output=torch.randn(4, 8))
    with pytest.raises(ConfigError, match="ModelOutputLike with last_hidden_state, pooler_output; training needs logits"):
        main_and_auxiliary(output)
