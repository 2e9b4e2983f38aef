"""OptG: optimizing gradient-driven criteria in network sparsity (Zhang et al.).

Trains supermask scores beside the weights (straight-through gradients, binary mask
recomputed from a global top-k at every epoch start, sparsity and mask learning rate on
sigmoid ramps) and prints the sparsity the run went through and the test accuracy, next
to gradual magnitude pruning (GMP) and RigL under the same budget, the during-training
baselines OptG compares with. The full-size run is configs/optg.yaml.

    python examples/optg.py [--epochs 6] [--sparsity 0.9]
"""

from __future__ import annotations

from workflow import load, parser, percent, scaled, table

from surgery.train import run


def main() -> None:
    args = parser(__doc__, sparsity=0.9).parse_args()
    config = load("optg")
    # A short run keeps the paper's shapes: OptG's ramp as steep relative to the run (alpha per epoch
    # scales with 1 / epochs), GMP and RigL updating every few steps rather than every 100.
    alpha = config.mask.options["alpha"] * (1 if args.full else config.train.epochs / args.epochs)
    every = "{}" if args.full else "{every: 5}"
    base = scaled(config, args, "optg").with_overrides([f"mask.options={{alpha: {alpha:g}}}"])
    rows = []
    for method, extra in (("optg", []), ("gmp", [f"mask.options={every}"]), ("rigl", [f"mask.options={every}"])):
        result = run(base.with_overrides([f"name={method}", f"output={args.out / method}", f"mask.method={method}", *extra]))
        path = " -> ".join(f"{row['sparsity']:.0%}" for row in result.history)
        rows.append((method, percent(result.test_accuracy), f"{result.sparsity:.1%}", path))
    print(table(rows, ("method", "test accuracy", "sparsity", "sparsity per epoch")))


if __name__ == "__main__":
    main()
