"""The sparse training runtime: data, schedules in motion, checkpoints, distributed, reports.

    from surgery.train import RunConfig, run
    result = run(RunConfig.from_yaml("examples/configs/tost-cifar10.yaml"))   # what `surgery run` does
    result = run(config, model=my_model, masks=my_masks)                      # your model and mask

    rows = sweep(config, {"mask.sparsity": [0.95, 0.98], "recipe": ["tost", "none"]}, seeds=3, jobs=2)

``Trainer`` is the loop alone, for a model you compiled yourself, told its settings by
``TrainerSettings.from_config(config)``; ``load_dataset`` and ``make_loader`` are the data side.
"""

from surgery.train.config import RunConfig
from surgery.train.data import ImageDataset, load_dataset, make_loader
from surgery.train.pipeline import RunResult, run
from surgery.train.settings import TrainerSettings
from surgery.train.sweeps import sweep
from surgery.train.trainer import Interrupted, Trainer, TrainResult

__all__ = ["ImageDataset", "Interrupted", "RunConfig", "RunResult", "TrainResult", "Trainer", "TrainerSettings",
           "load_dataset", "make_loader", "run", "sweep"]
