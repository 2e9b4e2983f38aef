"""The one-shot mask finders: magnitude (OMP), SNIP, GraSP, SynFlow.

The math is checked against independent computations (autograd by hand, SynFlow's closed
form on a two-layer linear net, finite differences for GraSP's Hessian-gradient
product); budgets, copies, determinism and errors are checked for every finder, on
torchvision and timm models whose masks then go straight into ``surgery.compile``.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from conftest import randomize_norms, seeded
from torch import nn

import surgery
from surgery.errors import MaskError
from surgery.compiler.masks import masked_parameters, prunable_weights
from surgery.pruning import METHODS, Budget, find_masks, masks_from_scores, prunable_for
from surgery.pruning.budget import layer_densities, weights_of
from surgery.pruning.grasp import grasp_keep_scores, hessian_gradient_product
from surgery.pruning.snip import scoring_copy, snip_scores, summed_gradients, trainable_weights
from surgery.pruning.synflow import exponential_density, linearized_copy, synflow_rounds, synflow_scores

ONE_SHOT = ("magnitude", "snip", "grasp", "synflow")
QUICK = {"synflow": {"rounds": 2}}  # budgets and copies do not need SynFlow's 100 rounds


def batches_for(model_input: tuple[int, ...], classes: int, n: int = 1, size: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, *model_input, generator=generator), torch.randint(classes, (size,), generator=generator))
            for _ in range(n)]


class DropoutNet(nn.Module):
    """conv-BN-ReLU, dropout, a linear head: BatchNorm statistics and RNG use a finder must not touch."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8 * 4 * 4, classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 4)
        return self.fc(self.drop(x.flatten(1)))


def vgg16_bn_cifar(classes: int = 10, width: float = 1.0) -> nn.Module:
    """torchvision's VGG-16-BN (13 conv-BN-ReLU, 5 pools) with the CIFAR head: pool to 1x1, one linear.

    The ImageNet classifier (120M weights) would only make these tests slow, so it is built on
    the meta device and replaced; ``width`` scales every layer alike (the same relative sizes).
    """
    cfg = [v if v == "M" else max(int(v * width), 1) for v in torchvision.models.vgg.cfgs["D"]]
    features = torchvision.models.vgg.make_layers(cfg, batch_norm=True)
    with torch.device("meta"):
        model = torchvision.models.VGG(features, num_classes=classes)  # inits the real features as torchvision does
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Linear(cfg[-2], classes)
    nn.init.normal_(model.classifier.weight, 0, 0.01)
    nn.init.zeros_(model.classifier.bias)
    return model


ZOO = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10),
    "vgg16_bn": vgg16_bn_cifar,
    "timm:convnext_atto": lambda: timm.create_model("convnext_atto", pretrained=False, num_classes=10),
}


# ------------------------------------------------------------------ the math


def test_snip_scores_are_gradient_times_weight_and_masks_keep_the_top_k():
    model = seeded(nn.Sequential, nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    batches = batches_for((3, 8, 8), 5, n=2, size=3)
    names = ["0.weight", "3.weight"]
    params = [model.get_parameter(n) for n in names]
    loss = sum(F.cross_entropy(model(x), y) for x, y in batches)  # sum of the batches' mean losses
    by_hand = {n: (g * p).abs().detach() for n, g, p in zip(names, torch.autograd.grad(loss, params), params)}

    net = scoring_copy(model, batches)
    weights = trainable_weights(net, names)
    scores = snip_scores(weights, summed_gradients(net, weights, batches))
    for name in names:
        torch.testing.assert_close(scores[name], by_hand[name], rtol=1e-5, atol=1e-8)

    masks = find_masks(model, "snip", 0.7, batches=batches)
    flat = torch.cat([by_hand[n].flatten() for n in names])
    top = torch.zeros_like(flat, dtype=torch.bool)
    top[flat.topk(round(0.3 * flat.numel())).indices] = True
    assert torch.equal(torch.cat([masks[n].flatten() for n in names]), top)


def two_layer_linear(d0: int = 4, d1: int = 3, d2: int = 2) -> nn.Module:
    return seeded(nn.Sequential, nn.Linear(d0, d1, bias=False), nn.Linear(d1, d2, bias=False))


def test_synflow_scores_match_the_closed_form_of_a_two_layer_linear_net():
    # y = W2 W1 x, x = 1: R = 1^T |W2| |W1| 1, dR/d|W1|[i, j] = colsum(|W2|)[i], dR/d|W2|[k, i] = rowsum(|W1|)[i]
    model = two_layer_linear()
    a1, a2 = model[0].weight.detach().abs().double(), model[1].weight.detach().abs().double()
    expected = {"0.weight": a2.sum(0)[:, None] * a1, "1.weight": a1.sum(1)[None, :] * a2}

    net = linearized_copy(model, torch.float64, torch.device("cpu"))
    weights = weights_of(net, list(expected))
    scores = synflow_scores(net, weights, torch.ones(1, 4, dtype=torch.float64))
    flow = a2.sum(0) @ a1.sum(1)
    for name, value in expected.items():
        torch.testing.assert_close(scores[name], value)
        torch.testing.assert_close(scores[name].sum(), flow)  # conservation: every layer carries all of R

    budget = Budget(0.5, "global")
    one_round = find_masks(model, "synflow", 0.5, rounds=1)
    assert all(torch.equal(one_round[n], m) for n, m in masks_from_scores(scores, budget).items())


def test_synflow_input_shape_may_carry_the_batch_of_one():
    model = two_layer_linear()
    plain = find_masks(model, "synflow", 0.5, rounds=3, input_shape=(4,))
    batched = find_masks(model, "synflow", 0.5, rounds=3, input_shape=(1, 4))
    assert all(torch.equal(plain[n], m) for n, m in batched.items())


def test_synflow_sees_through_clamping_activations():
    # all-ones in, |weights|: pre-activations pass 6, where ReLU6 passes no gradient to the first layer
    model = seeded(nn.Sequential, nn.Linear(4, 8), nn.ReLU6(), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].weight.mul_(20)
    net = linearized_copy(model, torch.float64, torch.device("cpu"))
    assert isinstance(model[1], nn.ReLU6) and isinstance(net[1], nn.ReLU)
    scores = synflow_scores(net, weights_of(net, ["0.weight", "2.weight"]), torch.ones(1, 4, dtype=torch.float64))
    assert bool((scores["0.weight"] > 0).all())


def test_synflow_schedule_keeps_the_exponential_count_every_round():
    model = seeded(nn.Sequential, nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10), nn.ReLU(), nn.Linear(10, 4))
    names = list(prunable_for(model))
    total = sum(model.get_parameter(n).numel() for n in names)
    previous = None
    rounds = 5
    for k, keep in enumerate(synflow_rounds(model, names, Budget(0.9, "global"), rounds=rounds), start=1):
        kept = sum(int(m.sum()) for m in keep.values())
        assert kept == round(0.1 ** (k / rounds) * total) == round(exponential_density(0.9, k, rounds) * total)
        if previous is not None:  # pruned weights never come back
            assert all(bool((keep[n] <= previous[n]).all()) for n in names)
        previous = {n: m.clone() for n, m in keep.items()}
    assert k == rounds


@pytest.mark.parametrize("zeros, ties", [(False, False), (True, False), (False, True), (True, True)])
def test_synflow_ranking_keeps_exactly_the_top_alive_scores(zeros, ties, monkeypatch):
    import surgery.pruning.synflow as synflow

    def no_full_topk(*args):
        raise AssertionError("the sampled bracket fell back to a full topk")

    monkeypatch.setattr(synflow, "_keep_top_exact", no_full_topk)  # big enough for the bracket path
    generator = torch.Generator().manual_seed(0)
    scores = [torch.rand(n, generator=generator, dtype=torch.float64) for n in (300_000, 5_000, 200_000)]
    alive = [torch.rand(s.shape, generator=generator) < 0.9 for s in scores]
    for s, a in zip(scores, alive):
        if zeros:  # kept weights without flow score 0, like the pruned ones
            s[torch.rand(s.shape, generator=generator) < 0.4] = 0
        if ties:
            s.mul_(100).round_()
        s[~a] = 0
    n_alive, n_positive = sum(int(a.sum()) for a in alive), sum(int((s > 0).sum()) for s in scores)
    for count in sorted({n_alive - 1, n_alive // 2, n_alive // 10, min(n_positive + 5, n_alive - 1)}):
        keep = [a.clone() for a in alive]
        synflow.keep_top(scores, keep, [(torch.empty_like(a), torch.empty_like(a)) for a in alive], count)
        assert sum(int(k.sum()) for k in keep) == count
        assert all(bool((k <= a).all()) for k, a in zip(keep, alive))  # nothing pruned comes back
        kept = torch.cat([s[k] for s, k in zip(scores, keep)])
        dropped = torch.cat([s[a & ~k] for s, a, k in zip(scores, alive, keep)])
        assert float(kept.min()) >= float(dropped.max())


def test_synflow_runs_exactly_rounds_passes_of_a_batch_of_one():
    model = seeded(torchvision.models.resnet18, num_classes=10)
    forwards, backwards = [], []

    def count(module, inputs, output):
        forwards.append(inputs[0].shape[0])
        output.register_hook(lambda grad: backwards.append(1))

    handle = model.register_forward_hook(count)  # the scoring copy inherits the hook
    try:
        find_masks(model, "synflow", 0.9, rounds=4, input_shape=(3, 16, 16))
    finally:
        handle.remove()
    assert forwards == [1] * 4 and len(backwards) == 4


@pytest.mark.parametrize("temperature", [1.0, 200.0])
def test_grasp_hessian_gradient_product_matches_finite_differences(temperature):
    net = seeded(nn.Sequential, nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    batches = [(x.double(), y) for x, y in batches_for((5,), 3, n=2, size=4)]
    weights = {n: net.get_parameter(n) for n in ("0.weight", "2.weight")}
    g, hg = hessian_gradient_product(net, weights, batches, temperature=temperature)

    def gradient_at(step: float) -> dict[str, torch.Tensor]:  # dL/dw at w + step * g, by hand
        shifted = copy.deepcopy(net)
        with torch.no_grad():
            for n in weights:
                shifted.get_parameter(n).add_(step * g[n])
        params = [shifted.get_parameter(n) for n in weights]
        loss = sum(F.cross_entropy(shifted(x) / temperature, y) for x, y in batches)
        return dict(zip(weights, torch.autograd.grad(loss, params)))

    eps = 1e-4 / float(torch.cat([v.flatten() for v in g.values()]).norm())
    plus, minus = gradient_at(eps), gradient_at(-eps)
    for n in weights:
        finite = (plus[n] - minus[n]) / (2 * eps)
        torch.testing.assert_close(hg[n], finite, rtol=1e-5, atol=1e-7 * float(finite.abs().max()))


def test_grasp_prunes_the_highest_paper_scores():
    # GraSP's score S = -w * Hg; the paper removes the weights with the highest S
    model = seeded(nn.Sequential, nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    batches = batches_for((3, 8, 8), 5, n=2, size=4)
    names = list(prunable_for(model))
    masks = find_masks(model, "grasp", 0.8, batches=batches)

    net = scoring_copy(model, batches)
    weights = trainable_weights(net, names)
    _, hg = hessian_gradient_product(net, weights, batches)
    paper = {n: -s for n, s in grasp_keep_scores(weights, hg).items()}
    kept = torch.cat([paper[n][masks[n]] for n in names])
    pruned = torch.cat([paper[n][~masks[n]] for n in names])
    assert float(kept.max()) <= float(pruned.min())


def test_magnitude_keeps_the_largest_weights_and_omp_is_the_same_method():
    model = seeded(nn.Sequential, nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))
    masks = find_masks(model, "magnitude", 0.6)
    kept = torch.cat([model.get_parameter(n).detach().abs()[m] for n, m in masks.items()])
    pruned = torch.cat([model.get_parameter(n).detach().abs()[~m] for n, m in masks.items()])
    assert float(kept.min()) >= float(pruned.max())
    assert METHODS["omp"] is METHODS["magnitude"]
    assert all(torch.equal(masks[n], m) for n, m in find_masks(model, "omp", 0.6).items())


# ------------------------------------------------------------------ budgets on real models


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ZOO))
def test_every_finder_hits_the_global_budget_and_its_masks_compile(arch):
    model = seeded(ZOO[arch])
    batches = batches_for((3, 32, 32), 10)
    for method in ONE_SHOT:  # global scope: each method's default; some empty a layer here (test_empty_layers.py)
        masks = find_masks(model, method, 0.9, batches=batches, allow_empty_layers=True, **QUICK.get(method, {}))
        assert set(masks) == set(prunable_for(model))
        kept, total = sum(int(m.sum()) for m in masks.values()), sum(m.numel() for m in masks.values())
        assert abs(kept - 0.1 * total) <= 1, method
        ghosted = surgery.compile(model, batches[0][0], {"masks": masks})
        attached, stored = masked_parameters(ghosted), prunable_weights(ghosted)
        assert set(attached) == set(masks)
        for name, mask in masks.items():
            assert torch.equal(attached[name].cpu(), mask)
            assert not stored[name].detach()[~mask].any(), (method, name)  # pruned weights are exactly zero


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
@pytest.mark.parametrize("method", ONE_SHOT)
def test_every_finder_hits_each_layers_budget(method, distribution):
    model = seeded(ZOO["mobilenet_v2"])  # 52 layers, depthwise ones of a few hundred weights among them
    masks = find_masks(model, method, 0.8, scope="layer", distribution=distribution,
                       batches=batches_for((3, 32, 32), 10), **QUICK.get(method, {}))
    densities = layer_densities({n: tuple(m.shape) for n, m in masks.items()}, Budget(0.8, "layer", distribution))
    assert all(abs(int(m.sum()) - densities[n] * m.numel()) <= 1 for n, m in masks.items())


@pytest.mark.slow
@pytest.mark.parametrize("arch, sparsity", [("resnet18", 0.995), ("vgg16_bn", 0.99), ("vgg16_bn", 0.995)])
def test_synflow_keeps_every_layer_alive_at_extreme_sparsity(arch, sparsity):
    # full-width ResNet-18; VGG-16-BN at quarter width (same depth and relative layer sizes, 16x fewer weights)
    model = seeded(ZOO["resnet18"]) if arch == "resnet18" else seeded(vgg16_bn_cifar, width=0.25)
    masks = find_masks(model, "synflow", sparsity)  # the default 100 rounds
    kept = {n: int(m.sum()) for n, m in masks.items()}
    assert min(kept.values()) >= 1, sorted(kept.items(), key=lambda kv: kv[1])[:3]
    assert sum(kept.values()) == round((1 - sparsity) * sum(m.numel() for m in masks.values()))


# ------------------------------------------------------------------ copies, determinism, errors


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("method", ONE_SHOT)
def test_finders_leave_the_model_and_the_rng_alone(method, training):
    model = randomize_norms(seeded(DropoutNet)).train(training)
    model.conv.weight.requires_grad_(False)  # a frozen weight stays frozen (and is still scored)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    find_masks(model, method, 0.5, batches=batches_for((3, 8, 8), 5, n=2, size=4), **QUICK.get(method, {}))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes
    assert not model.conv.weight.requires_grad and model.fc.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("method", ONE_SHOT)
def test_finders_are_deterministic_under_their_seed(method):
    model = seeded(DropoutNet).train()
    batches = batches_for((3, 8, 8), 5, n=2, size=4)
    first, again = (find_masks(model, method, 0.5, batches=batches, seed=3, **QUICK.get(method, {})) for _ in range(2))
    assert all(torch.equal(first[n], again[n]) for n in first)
    if method == "snip":  # the seed drives the dropout masks
        other = find_masks(model, method, 0.5, batches=batches, seed=4)
        assert not all(torch.equal(first[n], other[n]) for n in first)


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5])
def test_sparsity_outside_zero_one_is_a_mask_error(sparsity):
    model = seeded(DropoutNet)
    with pytest.raises(MaskError, match=f"sparsity {sparsity}"):
        find_masks(model, "snip", sparsity, batches=batches_for((3, 8, 8), 5))


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_data_dependent_finder_without_data_is_a_mask_error(method):
    with pytest.raises(MaskError, match="batches="):
        find_masks(seeded(DropoutNet), method, 0.9)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(MaskError, match="Did you mean 'snip'") as error:
        find_masks(seeded(DropoutNet), "snipp", 0.9)
    assert all(name in str(error.value) for name in (*ONE_SHOT, "omp", "random"))


@pytest.mark.parametrize("method, options, match", [
    ("synflow", {"round": 10}, "unknown \\['round'\\]"),
    ("snip", {"temperature": 2}, "takes no options"),
    ("magnitude", {"rounds": 2}, "takes no options"),
    ("grasp", {"temperature": 0}, "temperature 0"),
    ("synflow", {"rounds": 0}, "rounds=0"),
    ("synflow", {"input_shape": (3, -1)}, "input_shape"),
    ("synflow", {"dtype": "int8"}, "not a floating dtype"),
])
def test_bad_options_are_mask_errors(method, options, match):
    with pytest.raises(MaskError, match=match):
        find_masks(seeded(DropoutNet), method, 0.5, batches=batches_for((3, 8, 8), 5), **options)


def test_batches_that_are_not_input_target_pairs_are_a_mask_error():
    x, _ = batches_for((3, 8, 8), 5)[0]
    with pytest.raises(MaskError, match="tensor pairs"):
        find_masks(seeded(DropoutNet), "snip", 0.5, batches=[x])
