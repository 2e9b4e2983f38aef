"""``surgery sweep``: a grid of runs from one config, resumable, with mean ± std over seeds.

    from surgery.train import sweep
    rows = sweep("examples/configs/sweep-digits.yaml",
                 {"mask.method": ["random", "snip"], "mask.sparsity": [0.95, 0.98], "recipe": ["tost", "none"]},
                 seeds=3, jobs=2)

``grid`` plans the runs (``RECIPES``, the presets: ToST in both readings, none and each tweak alone), ``state`` ties an output
directory to one base config, ``launch`` runs them (local processes or Slurm through submitit),
``table`` and ``plot`` turn the run directories into ``results.csv``, ``results.md`` and
``accuracy-vs-sparsity.png``, and ``driver`` chains them.
"""

from surgery.train.sweeps.driver import report, sweep
from surgery.train.sweeps.grid import RECIPES

__all__ = ["RECIPES", "report", "sweep"]
