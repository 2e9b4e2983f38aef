"""Lottery tickets, and spending them better (Frankle & Carbin; "Spending your winning lottery better").

Draws a ticket with IMP (rounds of training and pruning 20% of the remaining weights by
magnitude, rewinding to an early epoch of the dense run), then retrains that same ticket
from the same rewound weights twice: vanilla, and with the paper's architecture tweaks
(skips around the body's 3x3 convs, Swish) and recipe tweaks (LRsI, label smoothing). Prints every
IMP round and the two retrainings. The full-size run is configs/lottery-retrain.yaml.

    python examples/lottery_ticket.py [--epochs 6] [--rounds 3] [--sparsity 0.8]
"""

from __future__ import annotations

import csv

from workflow import load, parser, percent, scaled, table

from surgery.train import run


def main() -> None:
    options = parser(__doc__, sparsity=0.8)
    options.add_argument("--rounds", type=int, default=3)
    args = options.parse_args()
    rewind = max(1, args.epochs // 6)  # the paper's 33 of 180
    tweaked = scaled(load("lottery-retrain"), args, "lottery-tweaked").with_overrides([
        f"mask.options={{rounds: {args.rounds}, rewind: {{epoch: {rewind}}}}}"])
    with_tweaks = run(tweaked)  # IMP rounds, then the ticket retrained with AT + TRT
    vanilla = tweaked.with_overrides([
        "name=lottery-vanilla", f"output={args.out / 'lottery-vanilla'}", "recipe=none", "lrsi.enabled=false",
        "label_smoothing.start=0", f"mask.file={tweaked.run_dir / 'masks.safetensors'}",
        f"init.rewind={tweaked.run_dir / 'start-weights.safetensors'}"])
    plain = run(vanilla)

    with (tweaked.run_dir / "rounds.csv").open() as f:
        rounds = [(r["round"], f"{float(r['trained_sparsity']):.1%}", percent(float(r["accuracy"]) if r["accuracy"] else None),
                   f"{float(r['sparsity']):.1%}") for r in csv.DictReader(f)]
    print(table(rounds, ("IMP round", "trained at sparsity", "test accuracy", "mask after it")))
    print()
    print(table([("vanilla (rewound)", percent(plain.test_accuracy)),
                 ("AT + TRT (rewound)", percent(with_tweaks.test_accuracy))],
                (f"ticket at {with_tweaks.sparsity:.1%}", "test accuracy")))


if __name__ == "__main__":
    main()
