"""ASNI: the Amenable Sparse Network Investigator (Damadi et al.).

Step 1 trains once from dense while pruning globally by magnitude to a sigmoid schedule,
under a stretched cosine learning rate, and stores each layer's two centroids c+ / c-
with the mask. Step 2 retrains that sparse structure from the centroids (every kept
weight starts at c+ or c- by its learned sign) and, for comparison, from a fresh random
initialization. The full-size runs are configs/asni.yaml and configs/asni-centroids.yaml.

    python examples/asni.py [--epochs 6] [--sparsity 0.9]
"""

from __future__ import annotations

import json

from workflow import load, parser, percent, scaled, table

from surgery.compiler.masks import load_masks
from surgery.train import run


def main() -> None:
    args = parser(__doc__, sparsity=0.9).parse_args()
    gamma = max(args.epochs / 10, 0.3)  # the paper's 16 for 160 epochs, scaled
    learn = scaled(load("asni"), args, "asni").with_overrides([f"mask.options={{beta: 0.5, gamma: {gamma}}}"])
    learned = run(learn)
    mask_file = learn.run_dir / "masks.safetensors"
    _, metadata = load_masks(mask_file)
    centroids = json.loads(metadata["asni.centroids"])

    retrain = scaled(load("asni-centroids"), args, "asni-centroids").with_overrides([f"mask.file={mask_file}"])
    from_centroids = run(retrain)
    from_random = run(retrain.with_overrides(["name=asni-random", f"output={args.out / 'asni-random'}",
                                              "init.centroids=false"]))
    path = " -> ".join(f"{row['sparsity']:.0%}" for row in learned.history)
    print(f"ASNI sparsity per epoch: {path}")
    print(f"2L = {2 * len(centroids)} centroids, e.g. {next(iter(centroids))}: "
          + "c+ {:.4f}, c- {:.4f}".format(*next(iter(centroids.values()))))
    print(table([("learned sparse network (ASNI)", percent(learned.test_accuracy)),
                 ("retrained from the centroids", percent(from_centroids.test_accuracy)),
                 ("retrained from a random init", percent(from_random.test_accuracy))],
                (f"{learned.sparsity:.1%} sparse", "test accuracy")))


if __name__ == "__main__":
    main()
