"""ToST: train a sparse network better with ANY mask (Jaiswal et al., ICML 2022).

Draws masks with several finders (random, ERK random, SNIP, GraSP, SynFlow), trains each
with and without the ToST recipe (ghost skips around the body's 3x3 convs, PSwish, LRsI,
label smoothing; the ghosts fade out and leave before the first LR decay), and prints the
test accuracy side by side. The plain runs are the paper's baselines: no tweak at all
(recipe: none, no LRsI, hard labels). Every ToST model ends as the original architecture,
verified. The full-size runs are configs/tost-cifar10.yaml (ResNet-18) and, with --table2,
configs/tost-table2.yaml (Table 2's ResNet-32).

    python examples/tost_any_mask.py [--epochs 6] [--data digits] [--methods random,snip,synflow] [--table2]
"""

from __future__ import annotations

from workflow import load, parser, percent, scaled, table

from surgery.train import run


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--methods", default="random,erk,snip,grasp,synflow", help="mask finders, comma-separated")
    options.add_argument("--table2", action="store_true", help="ToST's Table 2 protocol (GraSP's ResNet-32)")
    args = options.parse_args()
    base = load("tost-table2") if args.table2 else load("tost-cifar10")
    rows = []
    for method in args.methods.split(","):
        for recipe, tweaks in (("plain", ["recipe=none", "lrsi.enabled=false", "label_smoothing.start=0"]), ("ToST", [])):
            name = f"tost-any-mask-{method}-{recipe.lower()}"
            distribution = ["mask.distribution=erk", "mask.scope=layer"] if method == "erk" else []
            config = scaled(base, args, name).with_overrides(
                [f"mask.method={'random' if method == 'erk' else method}", *distribution, *tweaks])
            result = run(config)
            rows.append((method, recipe, percent(result.test_accuracy), f"{result.sparsity:.1%}",
                         "verified" if result.verify is not None else "-"))
    print(table(rows, ("mask", "training", "test accuracy", "sparsity", "architecture")))


if __name__ == "__main__":
    main()
