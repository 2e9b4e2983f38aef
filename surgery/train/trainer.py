"""The training loop: forward, backward, the optimizer step, evaluation, logging; DDP, AMP, signals.

``Trainer(model, TrainerSettings.from_config(config), train_loader, eval_loaders).fit()``
trains a compiled (ghosted, masked) model. Every step it sets the learning rate and the
label-smoothing factor from pure functions of (epoch, batch), so a resumed run computes
exactly what an uninterrupted one would. Whatever else acts on the run is a training hook
(``surgery.hooks``), called at fixed points in this order: the best-validation selection
(``selection.BestValidation``: it judges an epoch before the ghosts' removal at the run's
end), the ghosts' alpha / beta and removal (``ghost_schedule.GhostSchedule``: its optimizer
group comes before any method's), the mask methods given as ``hooks``, and the checkpoints
(``checkpointing.Checkpointing``: last, so they hold what the others did). Masks stay
attached until the end, so pruned weights are exactly zero after every step.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import fx, nn

from surgery.compiler.masks import masked_parameters, overall_sparsity
from surgery.compiler.schedules import Clock
from surgery.errors import ConfigError, DivergedError
from surgery.hooks import TrainingHook
from surgery.train.checkpoint import CheckpointStore, rng_state, set_rng_state
from surgery.train.checkpointing import Checkpointing
from surgery.train.distributed import Distributed
from surgery.train.ghost_schedule import GhostSchedule
from surgery.train.interrupt import Interrupted, acknowledge, signal_name, stop_after_step
from surgery.train.losses import Distillation, classification_loss, main_and_auxiliary
from surgery.train.metrics import MetricsLog
from surgery.train.progress import EpochProgress
from surgery.train.run_files import RunFiles
from surgery.train.selection import BestValidation
from surgery.train.settings import TrainerSettings


@dataclass
class TrainResult:
    model: nn.Module  # de-ghosted unless ghosts are kept (remove_at: never); masks still attached
    history: list[dict[str, Any]]
    events: list[tuple[int, str]] = field(default_factory=list)  # (step, label) lines for the plots only
    steps: int = 0
    seconds: float = 0.0
    best: dict[str, Any] | None = None  # the best-validation epoch: {epoch, val_acc, test_acc}
    selected: str = "last"  # whose weights ``model`` holds: the last epoch's or the best-validation epoch's
    ghosts_removed_at: tuple[int, int] | None = None  # (step, epoch): removed after ``epoch`` epochs, at ``step``


class Trainer:
    def __init__(
        self,
        model: fx.GraphModule,
        settings: TrainerSettings,
        train_loader: Any,
        eval_loaders: Mapping[str, Any],
        *,
        dist: Distributed | None = None,
        run_dir: Path | None = None,
        teacher: nn.Module | None = None,
        console: Console | None = None,
        hooks: Sequence[TrainingHook] = (),
    ):
        self.settings = settings
        self.dist = dist or Distributed()
        self.device = self.dist.device
        self.console = console or Console(stderr=True)
        self.train_loader, self.eval_loaders = train_loader, dict(eval_loaders)
        self.run_dir = Path(run_dir) if run_dir is not None else settings.run_dir
        self.steps_per_epoch = len(train_loader)
        if self.steps_per_epoch == 0:
            raise ConfigError("the training loader yields no batch: its split is smaller than one batch; "
                              "lower data.batch_size.")
        self.epochs = settings.epochs
        self.amp_dtype = _amp_dtype(settings.amp, self.device)
        self.channels_last = uses_channels_last(settings.channels_last, self.device)

        self.module = model.to(self.device)
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.loss_fn = self._loss(teacher)
        self.optimizer = self._optimizer()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.hooks = list(hooks)  # the mask methods
        self._check_hook_names()
        self.ghosts = GhostSchedule(settings.ghost_plan, settings.lr_plan)
        self.selection = BestValidation(settings.select, validated="val" in self.eval_loaders, mask_hooks=self.hooks,
                                        ghosts=self.ghosts)
        self.checkpoints = Checkpointing(RunFiles(self.run_dir).checkpoints, settings.run_config,
                                         every=settings.checkpoint_every, keep=settings.keep_checkpoints)
        self.all_hooks = [self.selection, self.ghosts, *self.hooks, self.checkpoints]
        self.epoch = self.batch = self.step = 0
        self.history: list[dict[str, Any]] = []
        for hook in self.all_hooks:  # before wrapping: a hook may add parameters (OptG's scores)
            hook.setup(self)
        self.net = self._wrapped()

        self.sums = _Sums()
        self._signal: int | None = None
        self._pending: list[tuple[int, dict[str, Any], torch.Tensor]] = []
        self.seconds_before = 0.0

    # ------------------------------------------------------------------ setup

    def _loss(self, teacher: nn.Module | None):
        s, spread = self.settings, self.settings.smoothing_spread
        if teacher is None:
            return lambda logits, y, x, ls: classification_loss(logits, y, label_smoothing=ls, spread=spread)
        distill = Distillation(teacher.to(self.device), temperature=s.distill_temperature, weight=s.distill_weight)
        return lambda logits, y, x, ls: distill(logits, y, x, label_smoothing=ls, spread=spread)

    def _optimizer(self) -> torch.optim.Optimizer:
        groups = [{"params": [p for p in self.module.parameters() if p.requires_grad], "name": "weights"}]
        o = self.settings.optimizer
        if o.name == "sgd":
            return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)
        kind = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
        return kind(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)

    def _check_hook_names(self) -> None:
        names = [hook.name for hook in self.hooks]
        if len(set(names)) != len(names):
            raise ConfigError(f"training hooks {names} share a name; each keeps its own checkpoint state under its name.")

    def _wrapped(self) -> nn.Module:
        net = self.dist.wrap(self.module)
        if self.settings.compile:
            net = torch.compile(net)
        return net

    def module_changed(self) -> None:
        """A hook changed the module's parameters in place (the ghosts left): rebuild the wrappers around them."""
        self.net = self._wrapped()

    @property
    def store(self) -> CheckpointStore:
        """This run's checkpoints."""
        return self.checkpoints.store

    # ------------------------------------------------------------------ the loop

    def fit(self, resume: bool | str | Path = False, checkpoint: tuple[dict, Path] | None = None) -> TrainResult:
        """Train to the last epoch; ``resume``: True (this run's latest good checkpoint) or a file;
        ``checkpoint``: that file's (state, path), already loaded."""
        if resume:
            self.restore(*(checkpoint or self.checkpoints.load(resume)))
        self.log = MetricsLog(self.run_dir, tensorboard=self.settings.tensorboard, resume_step=self.step if resume else None,
                              resume_epoch=self.epoch) if self.dist.is_main else None
        start = time.perf_counter() - self.seconds_before
        self.started = start
        try:
            with self._signals():
                self._loop()
                if self.dist.any(self._signal is not None):  # asked during the last step: the final checkpoint
                    raise self._interrupted(self.checkpoints.saved)
        finally:
            if self.log:
                self.log.close()
        for hook in self.all_hooks:  # after the final checkpoint, which a resume must load into the hooked model
            hook.on_train_end(self)
        return TrainResult(self.module, self.history, self.plot_events(), self.step, time.perf_counter() - start,
                           best=self.selection.best, selected=self.selection.selected,
                           ghosts_removed_at=self.ghosts.removed_at)

    def _loop(self) -> None:
        while self.epoch < self.epochs:
            self._train_epoch()
            self.history.append(self._finish_epoch())
            self.epoch, self.batch, self.sums = self.epoch + 1, 0, _Sums()
            for hook in self.all_hooks:  # the final checkpoint comes after the last epoch's
                hook.after_epoch(self)

    def _train_epoch(self) -> None:
        self.module.train()
        self.train_loader.set_epoch(self.epoch)
        epoch_start = time.perf_counter()
        if self.batch == 0:
            for hook in self.all_hooks:
                hook.on_epoch_start(self)
        with EpochProgress(self.console, self.epoch, self.epochs, self.steps_per_epoch, self.batch,
                           enabled=self.settings.progress and self.dist.is_main) as bar:
            for x, y in self.train_loader.batches(self.batch):
                values = self._set_schedules(Clock(self.epoch, self.batch, self.steps_per_epoch))
                self._pending.append((self.step, values, self._train_step(x, y, values["label_smoothing"])))
                self.batch += 1
                self.step += 1
                for hook in self.all_hooks:
                    hook.after_step(self)
                synced = self.batch % self.settings.log_every == 0 or self.batch == self.steps_per_epoch
                if synced:
                    self._sync(bar)
                if self._stop_requested(synced):
                    if self._pending:
                        self._sync(bar)
                    raise self._interrupted(self.checkpoints.save(self))
            self.sums.seconds += time.perf_counter() - epoch_start

    def _set_schedules(self, clock: Clock) -> dict[str, Any]:
        """The learning rate into every param group; the values of every schedule at ``clock``, to log."""
        values = self._schedules(clock)
        for group in self.optimizer.param_groups:  # lr_scale: a hook's group on its own schedule (OptG's masks)
            group["lr"] = values["lr"] * group.get("lr_scale", 1.0)
        return values

    def _schedules(self, clock: Clock) -> dict[str, Any]:
        lr = self.settings.optimizer.lr * self.settings.lr_plan.factor(clock.fractional_epoch, self.epochs)
        hooks = {k: v for hook in self.all_hooks for k, v in hook.schedule_values(clock.step).items()}
        return {"lr": lr, **hooks, "label_smoothing": self.settings.smoothing.at(clock, self.epochs)}

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, smoothing: float) -> torch.Tensor:
        for hook in self.all_hooks:
            hook.before_step(self)
        with _autocast(self.device, self.amp_dtype):
            logits, auxiliary = main_and_auxiliary(self.net(x))
        loss = self.loss_fn(logits.float(), y, x, smoothing)
        total = loss
        for aux in auxiliary:  # GoogLeNet's and Inception's aux heads, in train mode only
            total = total + self.settings.aux_loss_weight * classification_loss(
                aux.float(), y, label_smoothing=smoothing, spread=self.settings.smoothing_spread)
        for hook in self.all_hooks:
            extra = hook.loss(self)
            total = total if extra is None else total + extra
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():
            self.sums.add(loss.detach(), (logits.argmax(1) == y).sum(), y.numel())
        return loss.detach()

    def _sync(self, bar: EpochProgress) -> None:
        """Every ``log_every`` steps: check the losses are finite, log them."""
        pending, self._pending = self._pending, []
        losses = torch.stack([loss for _, _, loss in pending]).float().cpu().tolist()
        bad = next(((s, v) for (s, _, _), v in zip(pending, losses) if not math.isfinite(v)), None)
        if self.dist.any(bad is not None):
            self._diverged(bad)
        if self.log:
            for (s, step_values, _), v in zip(pending, losses):
                self.log.log_step({"step": s + 1, "epoch": self.epoch + 1, **step_values, "loss": v})
        values = pending[-1][1]
        seen = self.sums.count * self.dist.world_size
        rate = seen / max(self.sums.seconds + bar.elapsed(), 1e-9)
        bar.update(self.batch, loss=losses[-1], acc=self.sums.accuracy(), rate=rate, **values)

    def _diverged(self, bad: tuple[int, float] | None) -> None:
        latest = self.checkpoints.latest()
        where = f"step {bad[0] + 1} (epoch {self.epoch + 1})" if bad else "another rank's step"
        kept = f"the last good checkpoint is {latest}" if latest else "no checkpoint was written yet"
        raise DivergedError(
            f"the training loss became {bad[1] if bad else 'non-finite'} at {where}; training stopped and "
            f"{kept}. Lower optimizer.lr (now {self.settings.optimizer.lr}), add lr_schedule.warmup_epochs, or "
            "check the data and the mask (a layer pruned to nothing)."
        )

    def _finish_epoch(self) -> dict[str, Any]:
        for hook in self.all_hooks:
            hook.on_epoch_end(self)
        self._sync_buffers()
        values = self._schedules(Clock(self.epoch, max(self.steps_per_epoch - 1, 0), self.steps_per_epoch))
        train = self.sums.reduced(self.dist)
        row: dict[str, Any] = {
            "epoch": self.epoch + 1, "step": self.step, **values,
            "train_loss": train["loss"], "train_acc": train["acc"],
            "images_per_s": train["count"] / max(self.sums.seconds, 1e-9),
            "sparsity": self.mask_sparsity(),
        }
        for hook in self.all_hooks:
            row.update(hook.values())
        if (self.epoch + 1) % self.settings.eval_every == 0 or self.epoch + 1 == self.epochs:
            for split, loader in self.eval_loaders.items():
                row[f"{split}_loss"], row[f"{split}_acc"] = self.evaluate(loader)
        row["seconds"] = time.perf_counter() - self.started
        if self.log:
            self.log.log_epoch(row)
        if self.dist.is_main:
            self.console.print(_epoch_line(row, self.epochs), highlight=False, soft_wrap=True)
        return row

    def mask_sparsity(self) -> float | None:
        """Fraction of the masked weights pruned now (None: no masks)."""
        masks = masked_parameters(self.module)
        return overall_sparsity(masks) if masks else None

    @torch.no_grad()
    def evaluate(self, loader: Any) -> tuple[float, float]:
        """Mean loss and accuracy over a split (summed over ranks), in eval mode."""
        was_training = self.module.training
        self.module.eval()
        total = torch.zeros(3, dtype=torch.float64, device=self.device)
        loader.set_epoch(0)
        for x, y in loader.batches(0):
            with _autocast(self.device, self.amp_dtype):
                logits = main_and_auxiliary(self.module(x))[0]
            loss = torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum")
            total += torch.stack([loss.double(), (logits.argmax(1) == y).sum().double(), torch.tensor(y.numel(), device=self.device, dtype=torch.float64)])
        self.dist.all_sum(total)
        self.module.train(was_training)
        loss_sum, correct, count = total.tolist()
        return loss_sum / max(count, 1), correct / max(count, 1)

    def _sync_buffers(self) -> None:
        """Every rank takes rank 0's BatchNorm statistics, so evaluation and checkpoints agree."""
        if self.dist.enabled:
            for buffer in self.module.buffers():
                torch.distributed.broadcast(buffer, src=0)

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict[str, Any]:
        """What a checkpoint holds of the run (``Checkpointing`` adds the config). The ghosts' and the
        selection's state sit at the top level, the mask methods' under ``hooks``: checkpoint format 1."""
        return {
            "epoch": self.epoch, "batch": self.batch, "step": self.step,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sums": self.sums.state(),
            **self.ghosts.state_dict(),
            "history": list(self.history),
            "hooks": {hook.name: hook.state_dict() for hook in self.hooks},
            **self.selection.state_dict(),
            "seconds": time.perf_counter() - self.started if hasattr(self, "started") else 0.0,
            "rng": rng_state(),
        }

    def restore(self, state: dict[str, Any], path: Path) -> None:
        """Load checkpoint ``state`` (read from ``path``, checked against the run's config): the ghosts first
        (a checkpoint saved without them loads into a model without them), then the model, optimizer, clocks,
        every hook's state and the RNG."""
        self.checkpoints.check(state, path)
        self.ghosts.load_state_dict(state)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.sums = _Sums.from_state(state["sums"], self.device)
        self.history = list(state["history"])
        self.seconds_before = float(state.get("seconds", 0.0))
        self.selection.load_state_dict(state)
        for hook in self.hooks:
            hook.load_state_dict(state.get("hooks", {}).get(hook.name, {}))
        set_rng_state(state["rng"])
        self.module_changed()  # a hook's state may have changed the module (the ghosts left)
        if self.dist.is_main:
            self.console.print(f"resumed from {path} at epoch {self.epoch + 1}, batch {self.batch} (step {self.step})")

    # ------------------------------------------------------------------ signals and events

    def _signals(self) -> contextlib.AbstractContextManager[None]:
        """The first SIGTERM / SIGINT asks to stop after this step, with a checkpoint; a second aborts without one."""
        return stop_after_step(self._request_stop, self._aborted)

    def _request_stop(self, signum: int) -> None:
        self._signal = signum
        if self.dist.is_main:
            acknowledge(signum)

    def _stop_requested(self, synced: bool) -> bool:
        """Alone: after any step. Under DDP at the sync points, where the ranks agree on it (a
        collective every step would make the CPU wait for the GPU)."""
        if self.dist.enabled:
            return synced and self.dist.any(self._signal is not None)
        return self._signal is not None

    def _interrupted(self, checkpoint: Path | None) -> Interrupted:
        signum = self._signal or signal.SIGTERM  # under DDP the signal may have reached another rank only
        where = f"checkpoint saved to {checkpoint}" if checkpoint else "rank 0 saved the checkpoint"
        return Interrupted(signum, f"stopped by {signal_name(signum)} at epoch {min(self.epoch + 1, self.epochs)}, step {self.step}: "
                           f"{where}; {resume_hint(self.run_dir)}.", checkpoint=checkpoint)

    def _aborted(self, signum: int) -> Interrupted:
        latest = self.checkpoints.latest()
        left = f"the latest is {latest}; {resume_hint(self.run_dir)}" if latest else "nothing to resume"
        return Interrupted(signum, f"aborted by a second {signal_name(signum)}: no checkpoint written; {left}.",
                           checkpoint=latest)

    def plot_events(self) -> list[tuple[int, str]]:
        """(step, label) of what the plots mark: the ghosts' removal and the LR decays."""
        lr = self.settings.lr_plan
        decays = [m for m in lr.milestones if m < self.epochs] if lr.kind == "step" else []
        events = [(m * self.steps_per_epoch, f"LR x{lr.gamma:g}") for m in decays]
        if self.ghosts.removed_at is not None:
            events.append((self.ghosts.removed_at[0], "ghosts removed"))
        return sorted(set(events))


def resume_hint(run_dir: Path) -> str:
    """How to continue a stopped run: the resolved config the pipeline wrote runs it again from its checkpoint,
    whichever command started it (train, run, demo, prune)."""
    config = RunFiles(run_dir).config
    return f"continue with: surgery run {config.absolute()} --resume" if config.is_file() else "continue with --resume"


class _Sums:
    """Running training loss / accuracy of the current epoch, on the device (no sync per step)."""

    def __init__(self, device: torch.device | None = None):
        self.loss = self.correct = None
        self.count = 0
        self.seconds = 0.0

    def add(self, loss: torch.Tensor, correct: torch.Tensor, n: int) -> None:
        loss_sum = loss.double() * n
        self.loss = loss_sum if self.loss is None else self.loss + loss_sum
        self.correct = correct.double() if self.correct is None else self.correct + correct.double()
        self.count += n

    def accuracy(self) -> float:
        return float(self.correct) / self.count if self.count else 0.0

    def reduced(self, dist: Distributed) -> dict[str, float]:
        if self.loss is None:
            return {"loss": float("nan"), "acc": float("nan"), "count": 0}
        total = torch.stack([self.loss, self.correct, torch.tensor(float(self.count), dtype=torch.float64, device=self.loss.device)])
        loss, correct, count = dist.all_sum(total).tolist()
        return {"loss": loss / count, "acc": correct / count, "count": count}

    def state(self) -> dict[str, Any]:
        return {
            "loss": None if self.loss is None else float(self.loss), "correct": None if self.correct is None else float(self.correct),
            "count": self.count, "seconds": self.seconds,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], device: torch.device) -> _Sums:
        sums = cls()
        if state["loss"] is not None:
            sums.loss = torch.tensor(state["loss"], dtype=torch.float64, device=device)
            sums.correct = torch.tensor(state["correct"], dtype=torch.float64, device=device)
        sums.count, sums.seconds = state["count"], state["seconds"]
        return sums


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp fp16 needs a CUDA device; use bf16 or off on the CPU.")
    return torch.bfloat16 if mode == "bf16" else torch.float16


def uses_channels_last(setting: str | bool, device: torch.device) -> bool:
    """``train.channels_last``: ``auto`` means on CUDA only (on the CPU it rarely pays)."""
    if setting == "auto":
        return device.type == "cuda"
    if isinstance(setting, bool):
        return setting
    raise ConfigError(f"train.channels_last must be auto, true or false, not {setting!r}.")


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _epoch_line(row: Mapping[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['train_loss']:.4f}", f"acc {row['train_acc']:.2%}"]
    for split in ("val", "test"):
        if row.get(f"{split}_acc") is not None:
            parts.append(f"{split} {row[f'{split}_acc']:.2%}")
    parts.append(f"lr {row['lr']:.3g}")
    if row.get("alpha") is not None:
        parts.append(f"alpha {row['alpha']:.3f}")
    if row.get("beta") is not None:
        parts.append(f"beta {row['beta']:.3g}")
    parts.append(f"{row['images_per_s']:.0f} img/s")
    return "  ".join(parts)
