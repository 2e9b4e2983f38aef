"""ToST in your own training loop: plain PyTorch, a few lines of surgery.

A CIFAR ResNet-20 with a random 90% mask learns the digits data set with SGD and a step LR
schedule. ``surgery.ToST`` gives the paper's four tweaks: LRsI on the loader before the first
step (``tost.lrsi``), label smoothing 0.1 (``tost.criterion``), and ghost skips + PSwish whose
alpha and beta move every step and which leave in place right before the first LR decay
(fixing the optimizer); ``finish()`` hands back the clean model, masks baked, verified against
the original.

    python examples/own_loop.py [--epochs 8] [--image-size 16]
"""

from __future__ import annotations

import argparse

import torch

import surgery
from surgery.zoo.cifar import he_cifar_resnet
from surgery.compiler.masks import overall_sparsity
from surgery.pruning import random_masks
from surgery.train.data import load_dataset, make_loader


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += y.numel()
    model.train()
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--sparsity", type=float, default=0.9)
    args = parser.parse_args()
    torch.manual_seed(0)

    data = load_dataset("digits", image_size=args.image_size)
    train = make_loader(data, "train", 128, train=True)
    test = make_loader(data, "test", 256, train=False)
    model = he_cifar_resnet(20, num_classes=data.num_classes)
    masks = random_masks(model, args.sparsity, seed=0)
    milestones = [args.epochs // 2, args.epochs * 3 // 4]  # ToST's decays at 50% and 75% of the run

    x, _ = next(iter(train))
    tost = surgery.ToST(model, x, "tost", masks=masks, total_steps=len(train) * args.epochs,
                        remove_at_epoch=milestones[0], steps_per_epoch=len(train))
    print(f"LRsI: {tost.lrsi(train, lr=0.1).iterations} iterations on the training loader")
    criterion = tost.criterion
    optimizer = tost.attach(torch.optim.SGD(tost.model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4))
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)

    for epoch in range(args.epochs):
        train.set_epoch(epoch)
        for x, y in train:
            loss = criterion(tost.model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            removal = tost.step()
            if removal:
                print(removal)
        scheduler.step()
        strength = tost.strength()
        ghosts = "removed" if strength["alpha"] is None else f"alpha {strength['alpha']:.2f}  beta {strength['beta']:.1f}"
        print(f"epoch {epoch + 1}/{args.epochs}  loss {loss.item():.3f}  test {accuracy(tost.model, test):.1%}  {ghosts}")

    clean = tost.finish()
    print(tost.report)
    zero = overall_sparsity({name: clean.get_parameter(name) != 0 for name in masks})
    print(f"clean: test {accuracy(clean, test):.1%}, {zero:.1%} of the masked weights are zero, "
          f"verified against {type(model).__name__}")


if __name__ == "__main__":
    main()
