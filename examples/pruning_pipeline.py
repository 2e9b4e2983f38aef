"""The end-to-end pruning pipeline with sparsity enforcement (Dogariu).

Pre-pruning: ZerO initialization and a learned soft mask with its penalties, folded into the
weights and pruned by magnitude. Post-pruning, from those weights: decayed label smoothing,
PSwish with a rising beta and parameter-free soft skips that fade out, after which the
original network trains on. Compared with the same post-pruning from a random mask and
from the learned mask without ZerO. The full-size run is configs/pruning-pipeline.yaml.

    python examples/pruning_pipeline.py [--epochs 6] [--sparsity 0.9]
"""

from __future__ import annotations

from workflow import load, parser, percent, scaled, table

from surgery.train import run


def main() -> None:
    args = parser(__doc__, sparsity=0.9).parse_args()
    base = scaled(load("pruning-pipeline"), args, "pipeline")
    variants = {  # label: (run name, overrides)
        "ZerO + learned mask": ("pipeline-zero-learned", []),
        "learned mask (random init)": ("pipeline-learned", ["init.zero=false"]),
        "random mask (random init)": ("pipeline-random", ["init.zero=false", "mask.method=random", "mask.options={}"]),
    }
    rows = []
    for label, (name, tweaks) in variants.items():
        result = run(base.with_overrides([f"name={name}", f"output={args.out / name}", *tweaks]))
        rows.append((label, percent(result.test_accuracy), f"{result.sparsity:.1%}"))
    print(table(rows, ("pre-pruning", "test accuracy", "sparsity")))


if __name__ == "__main__":
    main()
