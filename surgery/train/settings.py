"""What the Trainer is told: ``TrainerSettings``, every setting of the loop and nothing else of a run.

``TrainerSettings.from_config(config)`` reads them off a ``RunConfig``: the one place the
config's sections (optimizer, lr_schedule, ghosts, label_smoothing, distill, train) become
the trainer's. The pipeline builds them for the main run, the mask stage for each round of
a ``before`` method (from the round's own config).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from surgery.compiler.schedules import GhostPlan, LRSchedule, SmoothingPlan
from surgery.train.config import OptimizerConfig, RunConfig


@dataclass(frozen=True)
class TrainerSettings:
    run_dir: Path  # where checkpoints/, metrics.csv, steps.csv and tensorboard/ go
    epochs: int
    optimizer: OptimizerConfig  # which optimizer to build; its lr is the base the LR schedule scales
    lr_plan: LRSchedule
    ghost_plan: GhostPlan  # alpha, beta and when the ghosts leave (GhostSchedule)
    smoothing: SmoothingPlan  # the label-smoothing factor over the run
    smoothing_spread: str  # how the factor spreads over the classes (losses.SPREADS)
    distill_temperature: float  # with a teacher
    distill_weight: float
    aux_loss_weight: float  # each auxiliary head's loss (GoogLeNet, Inception v3) next to the main one
    select: str  # the weights a run ends with: auto | best_val | last (BestValidation)
    amp: str  # auto | off | bf16 | fp16
    channels_last: str | bool  # auto | true | false
    compile: bool  # torch.compile the model
    checkpoint_every: int  # epochs between checkpoints (0: only the final one and a stop's)
    keep_checkpoints: int
    log_every: int  # steps between loss checks and steps.csv rows
    eval_every: int  # epochs between evaluations (the last epoch always evaluates)
    progress: bool  # the progress bar
    tensorboard: bool
    run_config: Mapping[str, Any]  # the run's config as data: every checkpoint holds it, a resume must match it

    @classmethod
    def from_config(cls, config: RunConfig) -> TrainerSettings:
        t = config.train
        return cls(
            run_dir=config.run_dir, epochs=t.epochs, optimizer=config.optimizer, lr_plan=config.lr_plan(),
            ghost_plan=config.ghost_plan(), smoothing=config.smoothing_plan(),
            smoothing_spread=config.label_smoothing.spread, distill_temperature=config.distill.temperature,
            distill_weight=config.distill.weight, aux_loss_weight=t.aux_loss_weight, select=t.select, amp=t.amp,
            channels_last=t.channels_last, compile=t.compile, checkpoint_every=t.checkpoint_every,
            keep_checkpoints=t.keep_checkpoints, log_every=t.log_every, eval_every=t.eval_every,
            progress=t.progress, tensorboard=t.tensorboard, run_config=config.to_dict(),
        )
