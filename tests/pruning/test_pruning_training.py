"""Mask methods that train: their schedules equal the papers' formulas, and each runs end to end.

GMP (cubic), RigL (cosine update fraction, drop/grow), ASNI (sigmoid sparsity, centroids),
OptG (P_k, eta_m,k, straight-through scores), IMP (1 - (1 - p)^k, rewinding) and learned
masks (penalties, folding), on tiny synthetic runs.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from surgery.errors import ConfigError, MaskError
from surgery.compiler.masks import load_masks, mask_parametrizations
from surgery.pruning import find_masks
from surgery.pruning.asni import alpha_for, asni_sparsity
from surgery.pruning.gmp import cubic_sparsity
from surgery.pruning.imp import imp_plan, round_sparsity
from surgery.pruning.optg import Supermask, optg_sparsity, ramp
from surgery.pruning.rigl import drop_and_grow, update_fraction
from surgery.train import RunConfig, run

pytestmark = pytest.mark.slow  # trains to find masks


def tiny(tmp_path, name, mask, **sections):
    data = {
        "name": name, "output": str(tmp_path / name), "model": {"spec": "cifar:resnet20"},
        "data": {"dataset": "synthetic", "image_size": 8, "batch_size": 100},
        "mask": mask, "recipe": "none",  # the methods' papers train the plain network
        "lr_schedule": {"milestones": [2]},
        "train": {"epochs": 3, "progress": False, "tensorboard": False, "log_every": 5},
        "export": {"onnx": False},
    }
    data.update(sections)
    return RunConfig.from_dict(data)


def sparsities(result):
    return [row["sparsity"] for row in result.history]


def stored_zeros_respect(result):
    """Every pruned weight of the trained model is exactly zero."""
    masks, _ = load_masks(result.run_dir / "masks.safetensors")
    weights = load_file(result.run_dir / "model.safetensors")
    return all(torch.count_nonzero(weights[n][~m]) == 0 for n, m in masks.items())


# ------------------------------------------------------------------ the formulas


def test_gmp_is_zhu_and_gupta_cubic():
    plan = {"start": 10, "end": 110, "every": 10, "initial": 0.0, "final": 0.9}
    assert cubic_sparsity(5, **plan) == 0.0
    for t in (10, 40, 70, 110):
        assert cubic_sparsity(t, **plan) == pytest.approx(0.9 + (0 - 0.9) * (1 - (t - 10) / 100) ** 3)
    assert cubic_sparsity(45, **plan) == cubic_sparsity(40, **plan)  # it moves only at pruning steps
    assert cubic_sparsity(500, **plan) == pytest.approx(0.9)


def test_rigl_update_fraction_and_drop_grow_keep_the_count():
    assert update_fraction(0, 100, 0.3) == pytest.approx(0.3)
    assert update_fraction(50, 100, 0.3) == pytest.approx(0.15)
    assert update_fraction(100, 100, 0.3) == 0.0
    mask = torch.tensor([True, True, True, True, False, False, False, False])
    weight = torch.tensor([0.1, 2.0, 3.0, 4.0, 0, 0, 0, 0])
    grad = torch.tensor([0.0, 9.0, 9.0, 9.0, 0.1, 5.0, 0.2, 0.3])
    new = drop_and_grow(mask, weight, grad, 0.25)  # one of four: drop the 0.1 weight, grow the 5.0 gradient
    assert new.tolist() == [False, True, True, True, False, True, False, False]
    # RigL grows among the connections inactive after the drop: a dropped weight whose gradient
    # is the largest comes straight back (the official code then keeps its value)
    grad[0] = 9.0
    assert drop_and_grow(mask, weight, grad, 0.25).tolist() == mask.tolist()


def test_asni_schedule_matches_hand_computed_values():
    # the paper's CIFAR-10 ResNet-18 row: alpha 97%, beta 0.5, gamma 16, 160 epochs
    assert asni_sparsity(80, 160, alpha=0.97, beta=0.5, gamma=16) == pytest.approx(0.485)
    assert asni_sparsity(160, 160, alpha=0.97, beta=0.5, gamma=16) == pytest.approx(0.97 / (1 + math.exp(-5)))
    assert asni_sparsity(1, 160, alpha=0.97, beta=0.5, gamma=16) == pytest.approx(0.97 / (1 + math.exp(79 / 16)))
    alpha = alpha_for(0.9, 160, beta=0.5, gamma=16)
    assert asni_sparsity(160, 160, alpha=alpha, beta=0.5, gamma=16) == pytest.approx(0.9)


def test_optg_sparsity_and_mask_learning_rate_are_the_sigmoid_ramps():
    tau, P = 160, 0.9
    for k in (1, 40, 80, 120, 160):
        factor = 1 / (1 + math.exp(-0.5 * (k - 0.5 * tau)))
        assert optg_sparsity(k, tau, P) == pytest.approx(P * factor)  # Eq. 16
        assert ramp(k, tau) == pytest.approx(factor)  # eta_m,k / eta_w,k, Eq. 17
    assert optg_sparsity(80, tau, P) == pytest.approx(0.45)


def test_optg_scores_get_the_straight_through_gradient():
    weight = torch.tensor([[1.0, -2.0], [3.0, 0.5]], requires_grad=True)
    supermask = Supermask(torch.tensor([[True, False], [True, True]]))
    out = supermask(weight)
    assert out.tolist() == [[1.0, 0.0], [3.0, 0.5]]
    upstream = torch.tensor([[0.1, 0.2], [0.3, 0.4]])
    out.backward(upstream)
    assert torch.equal(supermask.scores.grad, upstream * weight.detach())  # dL/d(w*m) * w, pruned entry too
    assert torch.equal(weight.grad, upstream * supermask.mask)


def test_optg_keeps_ties_at_the_threshold_so_all_zero_scores_start_dense():
    from surgery.pruning.optg import threshold_masks

    zeros = {"a": torch.zeros(4, 4), "b": torch.zeros(8)}
    assert all(m.all() for m in threshold_masks(zeros, 0.5).values())  # no arbitrary tied layer is cut away
    scores = {"a": torch.arange(16.0).view(4, 4), "b": torch.arange(16.0, 24.0)}
    masks = threshold_masks(scores, 0.75)  # 6 of 24 kept: scores 18..23, all in b
    assert not masks["a"].any() and masks["b"].tolist() == [False, False, True, True, True, True, True, True]


def test_imp_rounds_reach_one_minus_one_minus_p_to_the_k():
    rounds, rate = imp_plan(0.9, rounds=3)
    assert rounds == 3 and 1 - (1 - rate) ** 3 == pytest.approx(0.9)
    rounds, rate = imp_plan(0.9)  # the default rate 0.2
    assert rate == 0.2 and rounds == 11 and round_sparsity(rounds, rate, 0.9) == 0.9
    assert [round_sparsity(k, 0.2, 0.9) for k in (1, 2, 3)] == pytest.approx([0.2, 0.36, 0.488])


def test_imp_rounds_that_cannot_reach_the_target_say_what_would():
    with pytest.raises(ConfigError, match=r"2 rounds pruning 0.2 .* reach sparsity 0.3600, short of the target 0.9; use 11 rounds"):
        imp_plan(0.9, rounds=2, rate=0.2)


def test_training_methods_are_not_found_by_find_masks():
    from surgery.zoo.models import build_model

    with pytest.raises(MaskError, match="trains the model.*surgery prune"):
        find_masks(build_model("cifar:resnet20"), "imp", 0.9)


# ------------------------------------------------------------------ end to end


def test_gmp_prunes_gradually_to_the_target(tmp_path):
    result = run(tiny(tmp_path, "gmp", {"method": "gmp", "sparsity": 0.8, "options": {"every": 5, "start": 0.0}}))
    assert sparsities(result)[0] < sparsities(result)[1] < 0.8 + 1e-6
    assert result.sparsity == pytest.approx(0.8, abs=1e-3) and stored_zeros_respect(result)


def test_rigl_keeps_the_sparsity_and_moves_the_mask(tmp_path):
    config = tiny(tmp_path, "rigl", {"method": "rigl", "sparsity": 0.8, "options": {"every": 4}})
    result = run(config)
    assert all(s == pytest.approx(0.8, abs=1e-3) for s in sparsities(result))
    assert result.history[-1]["rigl_updates"] == 5  # steps 4, 8, ... below 75% of 30
    start, _ = load_masks(config.run_dir / "masks.safetensors")
    from surgery.pruning.random import random_masks
    initial = random_masks(result.model, 0.8, distribution="erk")
    assert any(not torch.equal(start[n], initial[n]) for n in start)  # rewired since the ERK start
    assert stored_zeros_respect(result)


def test_asni_ends_at_the_target_and_exports_centroids_that_restart_the_mask(tmp_path):
    config = tiny(tmp_path, "asni", {"method": "asni", "sparsity": 0.8}, lr_schedule={"kind": "cosine", "delta": 0.06})
    result = run(config)
    assert sparsities(result)[-1] == pytest.approx(0.8, abs=1e-3) and sparsities(result)[0] < sparsities(result)[1]
    masks, metadata = load_masks(config.run_dir / "masks.safetensors")
    assert "asni.centroids" in metadata and "asni.signs" in metadata
    again = tiny(tmp_path, "asni-c", {"file": str(config.run_dir / "masks.safetensors")}, init={"centroids": True},
                 recipe={}, train={"epochs": 1, "progress": False, "tensorboard": False}, lr_schedule={"milestones": []})
    restarted = run(again)
    assert restarted.sparsity == pytest.approx(0.8, abs=1e-3)


def test_optg_trains_scores_and_leaves_plain_masks(tmp_path):
    result = run(tiny(tmp_path, "optg", {"method": "optg", "sparsity": 0.8}))
    assert sparsities(result)[0] < sparsities(result)[1] < sparsities(result)[2] <= 0.8
    assert result.sparsity == pytest.approx(0.8, abs=1e-3) and stored_zeros_respect(result)
    assert "scores" not in " ".join(load_file(result.run_dir / "model.safetensors"))


def test_imp_records_every_round_and_rewinds(tmp_path):
    config = tiny(tmp_path, "imp", {"method": "imp", "sparsity": 0.75, "epochs": 2,
                                    "options": {"rounds": 2, "rewind": {"epoch": 1}}},
                  lr_schedule={"milestones": [1]}, train={"epochs": 2, "progress": False, "tensorboard": False})
    result = run(config)
    lines = (config.run_dir / "rounds.csv").read_text().splitlines()
    assert len(lines) == 3
    assert [float(line.split(",")[3]) for line in lines[1:]] == pytest.approx([0.5, 0.75])
    for line in lines[1:]:
        round_mask, meta = load_masks(line.split(",")[4])
        assert json_float(meta["sparsity"]) == pytest.approx(float(line.split(",")[3]), abs=1e-4)
    assert result.sparsity == pytest.approx(0.75, abs=1e-3)


def test_learned_masks_fold_and_prune_by_magnitude(tmp_path):
    config = tiny(tmp_path, "learned", {"method": "learned", "sparsity": 0.7, "epochs": 2,
                                        "options": {"lambda1": 1e-2, "lambda2": 1e-2}},
                  lr_schedule={"milestones": [1]}, train={"epochs": 2, "progress": False, "tensorboard": False})
    result = run(config)
    assert result.sparsity == pytest.approx(0.7, abs=1e-3) and stored_zeros_respect(result)


def test_learned_mask_samples_bernoulli_keeps_in_training_and_uses_the_expectation_in_eval():
    from surgery.pruning.learned import SoftMask

    torch.manual_seed(0)
    weight = torch.randn(64, 32)
    soft = SoftMask(weight)  # stochastic by default, M = 1/2 everywhere
    with torch.no_grad():
        soft.values.uniform_(0.2, 0.8)
    first, second = soft(weight), soft(weight)
    kept = first != 0
    assert torch.equal(first[kept], weight[kept]) and 0.3 < kept.float().mean() < 0.7  # w or 0, never w * M
    assert not torch.equal(first, second)  # a fresh sample every forward pass
    soft.eval()
    torch.testing.assert_close(soft(weight), weight * soft.values)  # the expectation at evaluation
    soft.train()
    upstream = torch.randn_like(weight)
    (soft(weight) * upstream).sum().backward()
    torch.testing.assert_close(soft.values.grad, upstream * weight)  # straight through: as if the sample were M


def test_deterministic_learned_mask_multiplies_by_m_itself():
    from surgery.pruning.learned import LearnedMaskHook, SoftMask

    weight = torch.randn(8, 4)
    soft = SoftMask(weight, stochastic=False)
    torch.testing.assert_close(soft(weight), weight * 0.5)
    assert LearnedMaskHook(["w"]).stochastic and not LearnedMaskHook(["w"], stochastic=False).stochastic


@pytest.mark.parametrize(("option", "value"), [("lambda1", -1e-3), ("lambda2", math.nan), ("lambda1", "big"),
                                               ("stochastic", "yes")])
def test_learned_mask_options_out_of_range_are_config_errors_naming_them(option, value):
    from surgery.pruning.learned import LearnedMaskHook

    with pytest.raises(ConfigError, match=option):
        LearnedMaskHook(["w"], **{option: value})


def test_a_hooked_run_resumes_to_the_same_masks(tmp_path):
    """The hooks' state travels in checkpoints: an interrupted GMP run ends where an uninterrupted one does."""
    from surgery.train.trainer import Interrupted

    mask = {"method": "gmp", "sparsity": 0.8, "options": {"every": 3, "start": 0.0}}
    reference = run(tiny(tmp_path, "ref", mask))
    config = tiny(tmp_path, "cut", mask)
    import signal

    from surgery.train import trainer as trainer_module
    original = trainer_module.Trainer._train_step

    def stop_at_step_15(self, x, y, smoothing):
        if self.step == 15 and self._signal is None and not getattr(self, "_resumed", False):
            self._signal = signal.SIGTERM
        return original(self, x, y, smoothing)

    trainer_module.Trainer._train_step = stop_at_step_15
    try:
        with pytest.raises(Interrupted):
            run(config)
    finally:
        trainer_module.Trainer._train_step = original
    resumed = run(config, resume=True)
    a, b = load_masks(reference.run_dir / "masks.safetensors")[0], load_masks(resumed.run_dir / "masks.safetensors")[0]
    assert all(torch.equal(a[n], b[n]) for n in a)
    wa, wb = load_file(reference.run_dir / "model.safetensors"), load_file(resumed.run_dir / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def json_float(text):
    import json

    return float(json.loads(text))


def test_mask_parametrizations_name_masked_weights():
    import surgery
    from surgery.zoo.models import build_model
    from surgery.pruning import random_masks

    model = build_model("cifar:resnet20")
    ghosted = surgery.compile(model, torch.randn(2, 3, 8, 8), {"masks": random_masks(model, 0.5)})
    found = mask_parametrizations(ghosted)
    assert set(found) == set(random_masks(model, 0.5)) and all(o.shape == m.mask.shape for m, o in found.values())
