"""ToST on a detector's backbone, in the detector's own training code.

torch.fx cannot trace a Faster R-CNN as a whole (its forward branches on targets and image
sizes), but its backbone traces. ``surgery.ToST(..., submodule="backbone")`` ghosts only the
backbone (MobileNetV3 + FPN) of ``fasterrcnn_mobilenet_v3_large_320_fpn`` with a random 90% mask
and hands back the whole detector, so the usual loop runs unchanged: images and targets in, a loss
dict out. Here it trains a few steps on synthetic images (one bright box per object, random
boxes and labels), alpha and beta moving every step, the ghosts leaving in place halfway; then
``finish()`` de-ghosts, bakes the masks and verifies the whole detector against the original
(graphs of the backbone, strict load, boxes/labels/scores equal), and the backbone, the part
torch.onnx can export, goes to a sparse ONNX file.

    python examples/detection_backbone.py [--steps 12] [--image-size 160] [--batch 4] [--out runs/detection]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import surgery
from surgery.compiler.masks import overall_sparsity
from surgery.zoo.models import build_model
from surgery.pruning import random_masks
from surgery.zoo.tasks import detection_targets

SPEC = "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn"
NUM_CLASSES = 3  # background and two kinds of box


def synthetic_batch(model: torch.nn.Module, batch: int, size: int, seed: int) -> tuple[list, list]:
    """Noise images with each target box painted bright: something the detector can learn to find."""
    generator = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, size, size, generator=generator) * 0.3 for _ in range(batch)]
    targets = detection_targets(model, images, num_classes=NUM_CLASSES, boxes_per_image=1, seed=seed)
    for image, target in zip(images, targets):
        for (x1, y1, x2, y2), label in zip(target["boxes"].long().tolist(), target["labels"].tolist()):
            image[label - 1, y1:y2, x1:x2] = 1.0  # the label's colour channel
    return images, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--out", type=Path, default=Path("runs/detection"))
    parser.add_argument("--no-export", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)

    model = build_model(SPEC, NUM_CLASSES, input_size=args.image_size)  # its transform resizes to the image size
    masks = {name: mask for name, mask in random_masks(model, args.sparsity, seed=0).items()
             if name.startswith("backbone.")}  # masks apply inside the compiled part
    example = synthetic_batch(model, args.batch, args.image_size, seed=0)
    tost = surgery.ToST(model, example, "tost", masks=masks, total_steps=args.steps, submodule="backbone",
                        remove_at_step=args.steps // 2)
    optimizer = tost.attach(torch.optim.SGD(tost.model.parameters(), lr=0.01, momentum=0.9))

    tost.model.train()
    for step in range(args.steps):
        images, targets = synthetic_batch(model, args.batch, args.image_size, seed=step + 1)
        losses = tost.model(images, targets)  # the detector's own loss dict
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        removal = tost.step()
        strength = tost.strength()
        ghosts = "removed" if strength["alpha"] is None else f"alpha {strength['alpha']:.2f}  beta {strength['beta']:.1f}"
        print(f"step {step + 1}/{args.steps}  loss {loss.item():.3f}  {ghosts}")
        if removal:
            print(removal)

    clean = tost.finish()
    print(tost.report)
    zero = overall_sparsity({name: clean.get_parameter(name) != 0 for name in masks})
    print(f"clean: a {type(clean).__name__} again, {zero:.1%} of the backbone's masked weights are zero")
    if not args.no_export:
        images, _ = synthetic_batch(model, 2, args.image_size, seed=0)
        batch = clean.transform(images)[0].tensors  # what the backbone receives: normalized, resized, batched
        info = surgery.export_onnx(clean.backbone, (batch,), args.out / "backbone.onnx", sparse=True)
        print(info)


if __name__ == "__main__":
    main()
