"""The end-of-run report: training curves, schedules, per-layer sparsity and a markdown summary.

``write_report(run_dir, title=...)`` reads what a run left in its directory and writes next
to it:

* ``curves.png``: loss and accuracy (train / val / test) against epoch;
* ``schedules.png``: learning rate, alpha, beta, label smoothing (and the step loss)
  against optimizer step on a shared axis, with events such as the ghosts' removal;
* ``sparsity.png``: one bar per layer, when per-layer sparsity is given;
* ``summary.md``: a key/value table of the results, the images, the per-layer table
  and the config.

One concern per module: ``tables`` reads metrics.csv / steps.csv into columns, ``plots``
draws the figures, ``story`` says the run's record (result.json) in words (shared with
the CLI summary), ``summary`` assembles summary.md.
"""

from surgery.train.report.plots import plot_curves, plot_layer_sparsity, plot_schedules
from surgery.train.report.summary import write_report

__all__ = ["plot_curves", "plot_layer_sparsity", "plot_schedules", "write_report"]
