"""The Python API end to end: compile -> train -> de-ghost -> verify -> sparse ONNX.

A torchvision ResNet-18 with a random 90% mask and the recipe in configs/tost.yaml,
trained with a plain SGD loop on random data while alpha goes 1 -> 0 and beta up
(the trainer, with real datasets and the papers' schedules, is `surgery train`).

    python examples/round_trip.py [--steps 30] [--out runs/round_trip]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

import surgery
from surgery.compiler.masks import save_masks
from surgery.pruning import random_masks

RECIPE = Path(__file__).parent / "configs" / "tost.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("runs/round_trip"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    model = torchvision.models.resnet18(num_classes=10)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    masks = random_masks(model, 0.9, seed=0)
    save_masks(masks, args.out / "mask.safetensors", method="random", model="torchvision:resnet18", seed=0)

    recipe = surgery.Recipe.from_yaml(RECIPE).replace(masks=masks)
    ghosted = surgery.compile(model, x, recipe)
    print(surgery.manifest_of(ghosted).summary())

    optimizer = torch.optim.SGD(ghosted.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for step in range(args.steps):
        t = step / max(args.steps - 1, 1)
        surgery.set_ghost_strength(ghosted, alpha=1.0 - t, beta=1.0 + 49.0 * t)
        loss = F.cross_entropy(ghosted(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:3d}  loss {loss.item():.3f}")

    clean = surgery.deghost(ghosted)
    print(surgery.verify(model, clean, x, ghosted=ghosted))
    info = surgery.export_onnx(clean, x[:2], args.out / "resnet18.onnx", sparse=True)
    print(info)

    fresh = torchvision.models.resnet18(num_classes=10)
    fresh.load_state_dict(clean.state_dict())  # strict: the original architecture, sparse weights
    print("weights zero:", f"{surgery.compiler.masks.weight_sparsity(fresh):.1%}")


if __name__ == "__main__":
    main()
