"""LRsI: the learned scales are folded in exactly, nothing else of the model changes, the
one-step loss improves on a badly scaled init, and bad options are ConfigErrors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import MLP, SmallCNN, randomize_norms, requires_cuda, seeded
from torch import nn

import surgery
from surgery.errors import ConfigError, DataError, DivergedError
from surgery.init.lrsi import LRsIResult, lrsi
from surgery.masks import masked_parameters, prunable_weights
from surgery.pruning import random_masks

NUM_CLASSES = 5
RECIPE = {"ghost_skip": {"projection": "conv1x1"}, "soft_activation": {"kind": "pswish"}}
MASKED_WEIGHTS = {
    "conv1.parametrizations.weight.original",
    "conv2.parametrizations.weight.original",
    "fc.parametrizations.weight.original",
}


def make_batches(count: int = 3, size: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A learnable task: each class is a fixed random image plus noise."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(NUM_CLASSES, 3, 8, 8, generator=generator)
    batches = []
    for _ in range(count):
        labels = torch.randint(0, NUM_CLASSES, (size,), generator=generator)
        batches.append((prototypes[labels] + 0.3 * torch.randn(size, 3, 8, 8, generator=generator), labels))
    return batches


BATCHES = make_batches()


def compiled_cnn(weight_factor: float = 1.0) -> torch.fx.GraphModule:
    model = randomize_norms(seeded(SmallCNN, NUM_CLASSES))
    ghosted = surgery.compile(model, BATCHES[0][0], {**RECIPE, "masks": random_masks(model, 0.8)})
    scale_weights(ghosted, weight_factor)
    return ghosted.eval()


def scale_weights(model: nn.Module, factor: float) -> None:
    with torch.no_grad():
        for weight in prunable_weights(model).values():
            weight.mul_(factor)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict(keep_vars=True).items()}


# ---------------------------------------------------------------------- the fold


def test_fold_multiplies_each_weight_by_its_scale_and_changes_nothing_else():
    gm = compiled_cnn()
    gm.bn1.train()  # a mixed mode must come back as it was, module by module
    before = snapshot(gm)
    params_before = dict(gm.named_parameters())
    modules_before = [(name, type(m)) for name, m in gm.named_modules()]
    code_before = gm.code
    modes_before = {name: m.training for name, m in gm.named_modules()}
    rng_before = torch.get_rng_state()

    result = lrsi(gm, BATCHES, iterations=4, scale_lr=0.05)

    assert isinstance(result, LRsIResult) and result.iterations == 4
    assert set(result.scales) == MASKED_WEIGHTS  # ghost projection convs are not re-scaled
    assert any(abs(s - 1.0) > 1e-3 for s in result.scales.values())
    after = snapshot(gm)
    assert list(after) == list(before)
    for name, value in after.items():
        if name in result.scales:
            torch.testing.assert_close(value, before[name] * result.scales[name], rtol=1e-6, atol=0)
        else:  # biases, BN affine and running stats, ghost parameters, masks, alpha / beta
            assert torch.equal(value, before[name]), name
    for name, mask in masked_parameters(gm).items():
        module = gm.get_submodule(name.rpartition(".")[0])
        assert torch.all(module.parametrizations.weight.original[~mask] == 0)
        assert torch.all(module.weight[~mask] == 0)
    params_after = dict(gm.named_parameters())
    assert list(params_after) == list(params_before)
    assert all(params_after[n] is params_before[n] for n in params_before)  # an optimizer still holds them
    assert all(p.grad is None for p in params_after.values())
    assert [(name, type(m)) for name, m in gm.named_modules()] == modules_before
    assert gm.code == code_before
    assert {name: m.training for name, m in gm.named_modules()} == modes_before
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_plain_module_gets_scales_under_its_own_parameter_names():
    model = randomize_norms(seeded(SmallCNN, NUM_CLASSES)).train()
    model.conv1.weight.requires_grad_(False)  # frozen weights are the user's choice: left alone
    before = snapshot(model)

    result = lrsi(model, BATCHES, iterations=3)

    assert set(result.scales) == {"conv2.weight", "fc.weight"}
    assert torch.equal(model.conv1.weight, before["conv1.weight"])
    for name, scale in result.scales.items():
        torch.testing.assert_close(model.get_parameter(name).detach(), before[name] * scale, rtol=1e-6, atol=0)
    for name in ("bn1.running_mean", "bn1.running_var", "bn2.num_batches_tracked"):
        assert torch.equal(model.get_buffer(name), before[name])
    assert model.training


# ---------------------------------------------------------------------- the objective


def test_blown_up_init_is_scaled_down_and_the_one_step_loss_improves():
    gm = compiled_cnn(weight_factor=10.0)
    objectives = []

    result = lrsi(gm, BATCHES, iterations=30, scale_lr=0.03, on_iteration=lambda i, v: objectives.append((i, v)))

    assert result.loss_after < result.loss_before
    # Layers may trade scale among themselves; the network's overall gain is what must fall.
    assert math.prod(result.scales.values()) < 0.5, result.scales
    assert min(result.scales.values()) < 1.0, result.scales
    assert [i for i, _ in objectives] == list(range(1, 31))
    assert all(math.isfinite(v) for _, v in objectives)


def test_scales_never_go_below_min_scale():
    gm = compiled_cnn(weight_factor=10.0)

    result = lrsi(gm, BATCHES, iterations=12, scale_lr=0.2, min_scale=0.6)

    assert min(result.scales.values()) == pytest.approx(0.6)  # the floor was reached and held
    assert all(scale >= 0.6 - 1e-7 for scale in result.scales.values())


def test_gradient_norm_bound_switches_the_objective_to_the_gradient_norm():
    objectives = []
    constrained = lrsi(compiled_cnn(), BATCHES, iterations=4, grad_norm_bound=1e-6,
                       on_iteration=lambda i, v: objectives.append(v))
    free = lrsi(compiled_cnn(), BATCHES, iterations=4, grad_norm_bound=math.inf)

    assert constrained.constrained_iterations == 4 and free.constrained_iterations == 0
    assert objectives[-1] < objectives[0]  # it lowered ||g||_2
    assert constrained.scales != free.scales


# ---------------------------------------------------------------------- batches, determinism


def test_same_batches_give_the_same_scales_and_a_generator_is_cycled():
    first = lrsi(compiled_cnn(), BATCHES, iterations=5)
    again = lrsi(compiled_cnn(), BATCHES, iterations=5)
    from_generator = lrsi(compiled_cnn(), (batch for batch in BATCHES), iterations=5)

    assert first.scales == again.scales
    assert first.loss_after == again.loss_after
    assert from_generator.scales == first.scales


def test_dropout_inside_the_procedure_is_deterministic():
    def dropout_net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.Dropout(0.5), nn.Linear(32, NUM_CLASSES))

    first = lrsi(dropout_net(), BATCHES, iterations=3)
    again = lrsi(dropout_net(), BATCHES, iterations=3)

    assert first.scales == again.scales


def test_one_batch_is_enough():
    result = lrsi(compiled_cnn(), BATCHES[:1], iterations=3)
    assert set(result.scales) == MASKED_WEIGHTS


@requires_cuda
def test_runs_on_cuda_with_cpu_batches():
    gm = compiled_cnn().cuda()
    result = lrsi(gm, BATCHES, iterations=3)
    assert all(math.isfinite(s) for s in result.scales.values())
    for name, mask in masked_parameters(gm).items():
        assert torch.all(gm.get_submodule(name.rpartition(".")[0]).weight[~mask] == 0)


# ---------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("lr", 0.0),
        ("lr", math.nan),
        ("iterations", 0),
        ("iterations", 2.5),
        ("scale_lr", -1.0),
        ("grad_norm_bound", 0.0),
        ("min_scale", 0.0),
        ("min_scale", 2.0),
        ("on_iteration", 5),
    ],
)
def test_bad_options_are_config_errors_naming_the_option(option, value):
    with pytest.raises(ConfigError, match=option):
        lrsi(compiled_cnn(), BATCHES, **{option: value})


def test_no_batches_is_a_config_error():
    with pytest.raises(ConfigError, match="no batches"):
        lrsi(compiled_cnn(), [])
    with pytest.raises(ConfigError, match="no batches"):
        lrsi(compiled_cnn(), iter([]))


def test_a_model_without_conv_or_linear_weights_is_a_config_error():
    with pytest.raises(ConfigError, match="no conv or linear weight"):
        lrsi(nn.Sequential(nn.BatchNorm1d(4)), [(torch.randn(4, 4), torch.zeros(4, dtype=torch.long))])


def test_malformed_batches_and_losses_are_reported():
    inputs = BATCHES[0][0]
    with pytest.raises(DataError, match=r"\(inputs, targets\) pairs"):
        lrsi(compiled_cnn(), [inputs])
    with pytest.raises(ConfigError, match="scalar"):
        lrsi(compiled_cnn(), BATCHES, loss_fn=lambda logits, t: F.cross_entropy(logits, t, reduction="none"))
    with pytest.raises(DivergedError, match="non-finite"):
        lrsi(seeded(MLP), [(torch.full((4, 8), math.nan), torch.zeros(4, dtype=torch.long))])
