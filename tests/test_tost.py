"""surgery.ToST: ToST in the user's own loop, its schedules, its removal, resuming, DDP, bad input."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from conftest import SmallCNN, seeded

import surgery
from surgery.errors import ToSTError
from surgery.compiler.ghosts import GhostSkip, PSwish, ghost_parameters, ghosts
from surgery.compiler.masks import masked_parameters
from surgery.pruning import random_masks
from surgery.compiler.schedules import Clock, GhostPlan

X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 5, (4,), generator=g)) for _ in range(n)]


def make_tost(model=None, **options) -> surgery.ToST:
    model = model or seeded(SmallCNN)
    torch.manual_seed(0)  # the projections' initialization
    return surgery.ToST(model, X, "tost", masks=random_masks(model, 0.5, seed=0), **options)


def sgd(tost: surgery.ToST) -> torch.optim.SGD:
    return tost.attach(torch.optim.SGD(tost.model.parameters(), lr=0.05, momentum=0.9))


def train(tost, optimizer, data, start: int, stop: int) -> list:
    events = []
    for x, y in data[start:stop]:
        loss = F.cross_entropy(tost.net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        events.append(tost.step())
    return events


def strengths(model) -> dict[str, set[float]]:
    held = [g for _, g in ghosts(model)]
    return {"alpha": {float(g.alpha) for g in held if isinstance(g, GhostSkip)},
            "beta": {float(g.beta) for g in held if isinstance(g, PSwish)}}


def test_a_loop_runs_the_schedules_removes_the_ghosts_at_the_step_and_ends_verified():
    original = seeded(SmallCNN)
    tost = make_tost(original, total_steps=10, remove_at_step=6)
    optimizer = sgd(tost)
    assert optimizer.param_groups[-1]["name"] == "ghosts"
    assert {id(p) for p in optimizer.param_groups[-1]["params"]} == {id(p) for p in ghost_parameters(tost.model)}
    assert not {id(p) for p in optimizer.param_groups[0]["params"]} & {id(p) for p in ghost_parameters(tost.model)}
    data = batches(10)
    before = train(tost, optimizer, data, 0, 5)
    plan = GhostPlan()
    assert before == [None] * 5 and tost.strength() == plan.strength(Clock(0, 5, 6), 1)  # the trainer's numbers
    assert strengths(tost.model) == {"alpha": {0.0}, "beta": {50.0}}  # end values on the last step with ghosts
    kept = list(optimizer.param_groups[0]["params"])
    F.cross_entropy(tost.net(data[5][0]), data[5][1]).backward()
    optimizer.step()
    momentum = {id(p): optimizer.state[p]["momentum_buffer"].clone() for p in kept}

    removal = tost.step()
    assert (removal.step, tost.removed_at) == (6, 6) and removal.parameters > 0 and not removal.rewrapped
    assert "ghosts removed after step 6" in str(removal) and not ghosts(tost.model)
    assert [g.get("name") for g in optimizer.param_groups] == [None] and len(optimizer.state) == len(kept)
    assert all(torch.equal(optimizer.state[p]["momentum_buffer"], momentum[id(p)]) for p in kept)
    assert tost.strength() == {"alpha": None, "beta": None}

    train(tost, optimizer, data, 6, 10)
    for name, mask in masked_parameters(tost.model).items():  # pruned weights stayed zero
        owner, _, attr = name.rpartition(".")
        assert not tost.model.get_submodule(owner).parametrizations[attr].original[~mask].any()
    clean = tost.finish()
    assert tost.report.outputs_max_abs_diff is not None and not masked_parameters(clean)
    fresh = SmallCNN()
    fresh.load_state_dict(clean.state_dict())  # strict: the original's keys


def test_the_removal_step_from_an_epoch_and_by_default_before_the_first_lr_decay():
    assert make_tost(total_steps=20, steps_per_epoch=5).removal_step == 10  # epoch 2 of 4, as the trainer's 50%
    assert make_tost(total_steps=20, steps_per_epoch=5, remove_at_epoch=3).removal_step == 15
    assert make_tost(total_steps=9).removal_step == 4
    assert make_tost(total_steps=1).removal_step == 1  # removed after the only step


def test_per_epoch_schedules_hold_within_an_epoch():
    tost = make_tost(total_steps=12, steps_per_epoch=3, remove_at_epoch=3, per="epoch")
    optimizer = sgd(tost)
    seen = []
    for _ in range(6):
        seen.append(tost.strength()["alpha"])
        train(tost, optimizer, batches(1), 0, 1)
    assert seen == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5]


@pytest.mark.parametrize("interrupt_at", [3, 6], ids=["before-removal", "after-removal"])
def test_a_resumed_loop_ends_with_the_weights_of_an_uninterrupted_one(interrupt_at):
    data, options = batches(8), {"total_steps": 8, "remove_at_step": 5}
    straight = make_tost(**options)
    train(straight, sgd(straight), data, 0, 8)

    first = make_tost(**options)
    optimizer = sgd(first)
    train(first, optimizer, data, 0, interrupt_at)
    buffer = io.BytesIO()
    torch.save({"model": first.model.state_dict(), "optimizer": optimizer.state_dict(), "tost": first.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer)

    resumed = make_tost(**options)
    optimizer = sgd(resumed)
    resumed.load_state_dict(checkpoint["tost"])  # first: it de-ghosts when the checkpoint was taken after removal
    resumed.model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    events = train(resumed, optimizer, data, interrupt_at, 8)
    assert (resumed.removed_at == 5) and ((events[5 - interrupt_at - 1] is not None) == (interrupt_at < 5))
    expected = straight.model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in resumed.model.state_dict().items())


def test_ddp_is_rebuilt_when_the_ghosts_leave(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        tost = make_tost(total_steps=4, remove_at_step=2)
        optimizer = sgd(tost)
        before = tost.ddp()
        events = train(tost, optimizer, batches(4), 0, 4)  # calls tost.net, the new wrapper after removal
        assert events[1].rewrapped and "call tost.net" in str(events[1])
        assert tost.net is not before and tost.net.module is tost.model
        assert {id(p) for p in tost.net.parameters()} == {id(p) for p in tost.model.parameters()}
    finally:
        dist.destroy_process_group()


def test_bad_input_is_a_clear_error():
    with pytest.raises(ToSTError, match=r"remove_at_step=11 is outside the run of total_steps=10.*after the run ends"):
        make_tost(total_steps=10, remove_at_step=11)
    with pytest.raises(ToSTError, match=r"remove_at_epoch=5 \(step 25\) is outside the run of total_steps=20"):
        make_tost(total_steps=20, remove_at_epoch=5, steps_per_epoch=5)
    with pytest.raises(ToSTError, match="needs steps_per_epoch"):
        make_tost(total_steps=20, remove_at_epoch=2)
    with pytest.raises(ToSTError, match="not both"):
        make_tost(total_steps=20, remove_at_epoch=2, remove_at_step=3, steps_per_epoch=5)
    with pytest.raises(ToSTError, match="total_steps=0 must be a whole number"):
        make_tost(total_steps=0)

    original = seeded(SmallCNN)
    tost = make_tost(original, total_steps=2)
    with pytest.raises(ToSTError, match="holds none of the ghosted model's parameters.*tost.model.parameters"):
        tost.attach(torch.optim.SGD(original.parameters(), lr=0.1))
    ghost_ids = {id(p) for p in ghost_parameters(tost.model)}
    without_ghosts = [p for p in tost.model.parameters() if id(p) not in ghost_ids]
    with pytest.raises(ToSTError, match="leaves out .* ghost parameters"):
        tost.attach(torch.optim.SGD(without_ghosts, lr=0.1))

    optimizer = sgd(tost)
    train(tost, optimizer, batches(2), 0, 2)
    with pytest.raises(ToSTError, match="past total_steps=2"):
        tost.step()
    tost.finish()
    with pytest.raises(ToSTError, match=r"tost.step\(\) after tost.finish\(\)"):
        tost.step()


def test_a_checkpoint_of_another_schedule_is_refused():
    saved = make_tost(total_steps=10, remove_at_step=4).state_dict()
    with pytest.raises(ToSTError, match="total_steps=10 with removal at step 4; this one has 10 and 5"):
        make_tost(total_steps=10, remove_at_step=5).load_state_dict(saved)


class Detector(torch.nn.Module):
    """A traceable backbone under a forward fx cannot trace (Python filtering of rows)."""

    def __init__(self):
        super().__init__()
        self.backbone = SmallCNN(num_classes=8)
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x):
        scores = self.head(self.backbone(x))
        return torch.stack([row for row in scores if float(row.detach().max()) > -1e9])


def test_a_submodule_trains_with_tost_and_the_whole_model_comes_back_verified():
    original = seeded(Detector)
    torch.manual_seed(0)
    masks = {"backbone.conv2.weight": torch.rand(6, 3, 3, 3) > 0.5}
    tost = surgery.ToST(original, X, "tost", masks=masks, total_steps=4, remove_at_step=2, submodule="backbone")
    assert type(tost.model) is Detector and ghosts(tost.model)
    optimizer = sgd(tost)
    events = train(tost, optimizer, batches(4), 0, 4)
    assert events[1].step == 2 and not ghosts(tost.model) and len(optimizer.param_groups) == 1
    assert not tost.model.backbone.conv2.parametrizations.weight.original[~masks["backbone.conv2.weight"]].any()
    clean = tost.finish()
    assert type(clean) is Detector and tost.report.outputs_max_abs_diff is not None
    Detector().load_state_dict(clean.state_dict())  # strict: the user's class
