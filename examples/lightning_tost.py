"""ToST in a Lightning run: one callback (pip install "tost-surgery[lightning]").

A LightningModule trains a CIFAR ResNet-20 with a random 90% mask on the digits data set, SGD and
a MultiStepLR schedule. ``ToSTCallback("net", masks=masks)`` compiles ``self.net`` at setup, steps
alpha and beta every batch, strips the ghosts right before the first milestone (fixing the
optimizer), and at the end puts the clean module back in ``self.net``, verified against the
original (and exported to ONNX unless --no-export).

    python examples/lightning_tost.py [--epochs 8] [--image-size 16] [--out runs/lightning_tost]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from surgery.zoo.cifar import he_cifar_resnet
from surgery.integrations.lightning import ToSTCallback
from surgery.pruning import random_masks
from surgery.train.data import ImageDataset, load_dataset


class DigitsClassifier(pl.LightningModule):
    def __init__(self, num_classes: int, image_size: int, epochs: int):
        super().__init__()
        self.net = he_cifar_resnet(20, num_classes=num_classes)
        self.milestones = [epochs // 2, epochs * 3 // 4]  # ToST's decays at 50% and 75% of the run
        self.example_input_array = torch.zeros(2, 3, image_size, image_size)  # what the callback compiles with

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("loss", loss, prog_bar=True)
        return loss

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
        return [optimizer], [torch.optim.lr_scheduler.MultiStepLR(optimizer, self.milestones, gamma=0.1)]


def loader(data: ImageDataset, split: str, shuffle: bool) -> torch.utils.data.DataLoader:
    part = data.split(split)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (data.mean, data.std))
    images = (part.images.float() / 255 - mean) / std
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, part.labels), batch_size=128,
                                       shuffle=shuffle, drop_last=shuffle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("runs/lightning_tost"))
    parser.add_argument("--no-export", action="store_true")
    args = parser.parse_args()
    pl.seed_everything(0, verbose=False)

    data = load_dataset("digits", image_size=args.image_size)
    module = DigitsClassifier(data.num_classes, args.image_size, args.epochs)
    masks = random_masks(module.net, 0.9, seed=0)
    tost = ToSTCallback("net", masks=masks, export=None if args.no_export else args.out / "resnet20.onnx")
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, callbacks=[tost], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader(data, "train", shuffle=True))

    print(tost.removal)
    print(tost.report)
    accuracy = trainer.test(module, loader(data, "test", shuffle=False), verbose=False)[0]["test_acc"]
    print(f"clean: test {accuracy:.1%} with module.net de-ghosted, masks baked into its weights")


if __name__ == "__main__":
    main()
