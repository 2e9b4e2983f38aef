"""LRsI as GradInit: one hand-computed iteration, the learned scales folded in exactly and nothing
else of the model changed, fresh batches every iteration, the one-step loss improved on a badly
scaled init, and bad options as ConfigErrors."""

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
from surgery.compiler.masks import masked_parameters, prunable_weights
from surgery.pruning import random_masks

NUM_CLASSES = 5
RECIPE = {"ghost_skip": {"projection": "conv1x1"}, "soft_activation": {"kind": "pswish"}}
# GradInit's set: conv / Linear weights and biases, norm weights and biases (masked ones through the mask)
SCALED = {
    "conv1.parametrizations.weight.original", "conv1.bias", "bn1.weight", "bn1.bias",
    "conv2.parametrizations.weight.original", "bn2.weight", "bn2.bias",
    "fc.parametrizations.weight.original", "fc.bias",
}


def make_batches(count: int = 6, size: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
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


# ---------------------------------------------------------------------- one iteration by hand


def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((output - target) ** 2).mean()


def one_weight_problem():
    """f(x) = w x with w = 0.5; halves h0 = (1, 0), h1 = (2, 1), h2 = (3, 2): S = {h0, h1}, S~ = {h0, h2}."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.5)
    batches = [(torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0], [1.0]])),
               (torch.tensor([[3.0], [4.0]]), torch.tensor([[2.0], [2.0]]))]
    return model, batches


def test_one_iteration_matches_a_hand_computed_gradinit_step():
    # On S at scale m = 1: residuals (0.5, 0), g = mean(2 r x) = 0.5 <= gamma = 1, so the objective is
    # the loss after the normalized step w - eta g / |g| = 0.4, on S~: residuals (0.4, -0.8), loss 0.4,
    # objective 0.4 / eta = 4. d objective / dm = 0.5 * mean(2 r x) / eta = 0.5 * -2 / 0.1 = -10, clipped
    # to -1; Adam's first step moves m by lr against its sign: m = 1 + 0.01.
    model, batches = one_weight_problem()
    objectives = []
    result = lrsi(model, batches, loss_fn=mse, eta=0.1, iterations=1, scale_lr=0.01,
                  on_iteration=lambda i, v: objectives.append(v))
    assert objectives == [pytest.approx(4.0)]
    assert result.scales == {"weight": pytest.approx(1.01)} and result.constrained_iterations == 0
    assert model.weight.item() == pytest.approx(0.505)
    assert result.loss_before == pytest.approx(0.4)
    # from m = 1.01: g = 0.525, step to 0.405, S~ residuals (0.405, -0.785): loss 0.390125
    assert result.loss_after == pytest.approx(0.390125) and result.loss_after < result.loss_before


def test_a_gradient_above_the_bound_lowers_its_norm_instead():
    # |g| = 0.5 > gamma = 0.1: the objective is |g|, d|g|/dm = mean(2 * 0.5 x^2) = 2.5 -> clipped 1 -> m = 0.99
    model, batches = one_weight_problem()
    objectives = []
    result = lrsi(model, batches, loss_fn=mse, eta=0.1, iterations=1, scale_lr=0.01, grad_norm_bound=0.1,
                  on_iteration=lambda i, v: objectives.append(v))
    assert objectives == [pytest.approx(0.5)]
    assert result.scales == {"weight": pytest.approx(0.99)} and result.constrained_iterations == 1


def test_the_unnormalized_step_is_eta_times_the_gradient():
    # eta g = 0.1 * 0.5: w'' = 0.45, S~ residuals (0.45, -0.65): loss (0.2025 + 0.4225) / 2 = 0.3125
    model, batches = one_weight_problem()
    result = lrsi(model, batches, loss_fn=mse, eta=0.1, iterations=1, normalize=False)
    assert result.loss_before == pytest.approx(0.3125)


# ---------------------------------------------------------------------- the fold


def test_fold_multiplies_each_tensor_by_its_scale_and_changes_nothing_else():
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
    assert set(result.scales) == SCALED  # the ghost projection's conv and norm are not re-scaled
    assert any(abs(s - 1.0) > 1e-3 for s in result.scales.values())
    after = snapshot(gm)
    assert list(after) == list(before)
    for name, value in after.items():
        if name in result.scales:
            torch.testing.assert_close(value, before[name] * result.scales[name], rtol=1e-6, atol=0)
        else:  # running statistics, ghost parameters, masks, alpha / beta
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

    assert set(result.scales) == {"conv1.bias", "bn1.weight", "bn1.bias", "conv2.weight", "bn2.weight", "bn2.bias",
                                  "fc.weight", "fc.bias"}
    assert torch.equal(model.conv1.weight, before["conv1.weight"])
    for name, scale in result.scales.items():
        torch.testing.assert_close(model.get_parameter(name).detach(), before[name] * scale, rtol=1e-6, atol=0)
    for name in ("bn1.running_mean", "bn1.running_var", "bn2.num_batches_tracked"):
        assert torch.equal(model.get_buffer(name), before[name])
    assert model.training


# ---------------------------------------------------------------------- the objective


def test_blown_up_init_is_scaled_down_and_the_one_step_loss_improves():
    model = seeded(nn.Sequential, nn.Flatten(), nn.Linear(192, 32), nn.ReLU(), nn.Linear(32, NUM_CLASSES))
    scale_weights(model, 10.0)
    objectives = []

    result = lrsi(model, BATCHES, iterations=30, scale_lr=0.05, grad_norm_bound=math.inf,
                  on_iteration=lambda i, v: objectives.append((i, v)))

    assert result.loss_after < result.loss_before
    weights = [result.scales["1.weight"], result.scales["3.weight"]]
    assert math.prod(weights) < 0.5, result.scales  # the network's gain fell; layers may trade scale
    assert [i for i, _ in objectives] == list(range(1, 31))
    assert all(math.isfinite(v) for _, v in objectives)


def test_scales_never_go_below_their_floors():
    # targets 0: ||g|| falls with every scale, so each iteration pushes all of them down
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(0.5), model.bias.fill_(0.3)
    batches = [(torch.tensor([[1.0], [2.0]]), torch.zeros(2, 1)), (torch.tensor([[3.0], [4.0]]), torch.zeros(2, 1))]
    result = lrsi(model, batches, loss_fn=mse, iterations=40, scale_lr=0.1, min_scale=0.6, grad_norm_bound=1e-6)
    assert result.constrained_iterations == 40
    assert result.scales["weight"] == pytest.approx(0.6)  # the floor was reached and held
    assert 0.0 <= result.scales["bias"] < 0.6  # a bias may shrink to 0 (GradInit's floor for biases)


def test_gradient_norm_bound_switches_the_objective_to_the_gradient_norm():
    objectives = []
    constrained = lrsi(compiled_cnn(), BATCHES, iterations=4, grad_norm_bound=1e-6,
                       on_iteration=lambda i, v: objectives.append(v))
    free = lrsi(compiled_cnn(), BATCHES, iterations=4, grad_norm_bound=math.inf)

    assert constrained.constrained_iterations == 4 and free.constrained_iterations == 0
    assert constrained.scales != free.scales


# ---------------------------------------------------------------------- batches, modes, determinism


class Counting:
    """An iterable of distinct batches that records which ones were read."""

    def __init__(self, batches):
        self.batches, self.read = batches, []

    def __iter__(self):
        for index, batch in enumerate(self.batches):
            self.read.append(index)
            yield batch


def test_every_iteration_reads_fresh_data():
    batches = Counting(make_batches(count=20))
    lrsi(compiled_cnn(), batches, iterations=4)
    assert batches.read == list(range(6))  # three fresh half-batches per iteration, none repeated


def test_same_batches_give_the_same_scales_and_a_generator_is_replayed():
    first = lrsi(compiled_cnn(), BATCHES, iterations=5)
    again = lrsi(compiled_cnn(), BATCHES, iterations=5)
    from_generator = lrsi(compiled_cnn(), (batch for batch in BATCHES), iterations=5)

    assert first.scales == again.scales
    assert first.loss_after == again.loss_after
    assert from_generator.scales == first.scales


def test_dropout_is_off_and_batch_norm_uses_batch_statistics_as_in_gradinit():
    def net(p):
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.BatchNorm1d(32), nn.Dropout(p),
                             nn.Linear(32, NUM_CLASSES))

    with_dropout, without = lrsi(net(0.5).eval(), BATCHES, iterations=3), lrsi(net(0.0).eval(), BATCHES, iterations=3)
    assert with_dropout.scales == without.scales  # dropout off; and eval() did not freeze BatchNorm
    model = net(0.0).eval()
    with torch.no_grad():
        model[2].running_var.fill_(1e4)  # running statistics would shrink the signal 100x
    assert lrsi(model, BATCHES, iterations=3).scales == without.scales


def test_no_iterations_means_one_per_batch_of_the_loader():
    result = lrsi(compiled_cnn(), BATCHES, iterations=None)
    assert result.iterations == len(BATCHES) and result.seconds > 0
    with pytest.raises(ConfigError, match=r"no len\(\); give iterations, e.g. iterations=390"):
        lrsi(compiled_cnn(), (batch for batch in BATCHES), iterations=None)
    with pytest.raises(ConfigError, match="no batches"):
        lrsi(compiled_cnn(), [], iterations=None)


def batch_sizes_seen(**options) -> list[int]:
    sizes = []

    def loss(logits, targets):
        sizes.append(len(targets))
        return F.cross_entropy(logits, targets)

    lrsi(compiled_cnn(), BATCHES, loss_fn=loss, iterations=2, grad_norm_bound=math.inf, **options)
    return sizes


def test_half_batches_off_reads_whole_batches_as_tost_does():
    # each loss is on S or S~: two half-batches of 8 (GradInit's) or two whole batches of 16 (ToST's)
    assert set(batch_sizes_seen()) == {16}
    assert set(batch_sizes_seen(half_batches=False)) == {32}
    batches = Counting(make_batches(count=20))
    lrsi(compiled_cnn(), batches, iterations=4, half_batches=False)
    assert batches.read == list(range(12))  # three fresh whole batches per iteration


def test_one_batch_is_enough():
    result = lrsi(compiled_cnn(), BATCHES[:1], iterations=3)
    assert set(result.scales) == SCALED


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
        ("eta", 0.0),
        ("eta", math.nan),
        ("iterations", 0),
        ("iterations", -3),
        ("iterations", 2.5),
        ("iterations", True),
        ("iterations", "abc"),
        ("half_batches", "no"),
        ("normalize", None),
        ("scale_lr", -1.0),
        ("grad_norm_bound", 0.0),
        ("min_scale", 0.0),
        ("min_scale", 2.0),
        ("grad_clip", 0.0),
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


def test_a_model_without_conv_linear_or_norm_parameters_is_a_config_error():
    with pytest.raises(ConfigError, match="no trainable conv, Linear or norm-layer weight"):
        lrsi(nn.Sequential(nn.Flatten()), [(torch.randn(4, 4), torch.zeros(4, dtype=torch.long))])


def test_malformed_batches_and_losses_are_reported():
    inputs = BATCHES[0][0]
    with pytest.raises(DataError, match=r"\(inputs, targets\) pairs"):
        lrsi(compiled_cnn(), [inputs])
    with pytest.raises(ConfigError, match="scalar"):
        lrsi(compiled_cnn(), BATCHES, loss_fn=lambda logits, t: F.cross_entropy(logits, t, reduction="none"))
    with pytest.raises(DivergedError, match="non-finite"):
        lrsi(seeded(MLP), [(torch.full((4, 8), math.nan), torch.zeros(4, dtype=torch.long))])
