"""RunConfig: everything a `surgery run` needs, as versionable YAML.

    name: tost-resnet20-digits
    model:        {spec: cifar:resnet20}
    data:         {dataset: digits, batch_size: 128, val_split: 0.0}
    mask:         {method: random, sparsity: 0.9}          # or {file: mask.safetensors}; exclude: [fc.*]
    recipe:       {ghost_skip: {projection: conv1x1}, soft_activation: {kind: pswish}}
    optimizer:    {name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 2e-4}
    lr_schedule:  {kind: step, gamma: 0.1}                  # milestones: default 50% / 75% of train.epochs
    ghosts:       {alpha: {kind: linear, start: 1, end: 0}, beta: {...}, per: step, remove_at: first_decay}
    label_smoothing: {kind: linear, start: 0.1, end: 0.0}
    train:        {epochs: 180, device: auto, amp: auto}

Every problem of a config (unknown sections or fields, with close matches; values of the
wrong type, naming the type expected; values out of range) is reported in one
``ConfigError`` listing them all. ``with_fields`` sets fields by dotted name (what the
CLI's flags map to), ``with_overrides`` does the same from ``--set train.epochs=3`` text.
The defaults are ToST's: SGD momentum 0.9, weight decay 2e-4, lr 0.1, batch 128, 180
epochs, decay x0.1 at 50% and 75% of the run (90 and 135).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from surgery.errors import CheckpointError, ConfigError, RecipeError, SurgeryError, did_you_mean
from surgery.compiler.presets import DEFAULT, PASSES_ONLY, PRESETS, contradictions, is_preset, preset
from surgery.compiler.recipe import Recipe, recipe_passes
from surgery.init.lrsi import check_options
from surgery.pruning.registry import refuse_allow_empty_layers
from surgery.train.data.specs import DATASETS_WITH_PATHS, check_subset
from surgery.train.losses import SPREADS
from surgery.train.run_files import RunFiles
from surgery.compiler.schedules import GhostPlan, LRSchedule, Schedule, SmoothingPlan, scaled_milestones

OPTIMIZERS = ("sgd", "adamw", "adam")
SWEEP_SECTION = "sweep"  # a config file's grids and seeds for `surgery sweep`; a single run ignores it
AMP_MODES = ("auto", "off", "bf16", "fp16")


@dataclass
class ModelConfig:
    spec: str = "cifar:resnet20"
    num_classes: int | None = None  # None: the dataset's class count
    weights: str | None = None  # a state_dict file (.pt / .safetensors) loaded before masking
    leaf_modules: list[str] = field(default_factory=list)


@dataclass
class DataConfig:
    dataset: str = "digits"
    root: str | None = None
    download: bool = False
    image_size: int | None = None
    val_split: float = 0.0
    subset: int | None = None  # keep this many class-balanced training images (before val_split holds out its part)
    subset_seed: int = 0  # the subset's draw: fixed, so every run seed and every arm sees the same images
    batch_size: int = 128
    eval_batch_size: int | None = None
    augment: bool = True
    workers: int = 4


@dataclass
class MaskConfig:
    method: str = "random"  # a mask finder (surgery prune --list); or give `file`
    sparsity: float = 0.9
    file: str | None = None
    partial: bool = False  # the file may leave prunable weights without a mask (else it must cover them all)
    prunable: list[str] = field(default_factory=lambda: ["conv", "linear"])
    scope: str | None = None  # global | layer; None: the method's own (its paper's)
    distribution: str | None = None  # layer budgets: uniform | erk; None: the method's own (RigL: erk)
    dense_first: bool = False  # keep the first prunable layer dense (the stem)
    dense_last: bool = False  # keep the last prunable layer dense (the head, conv or linear)
    exclude: list[str] = field(default_factory=list)  # fnmatch patterns of weights kept dense, e.g. ["layer4.*"]
    allow_empty_layers: bool = False  # let a mask keep no weight of a layer (or cut every path): refused by default
    batches: int = 1  # training batches a data-dependent method (SNIP, GraSP) scores on
    epochs: int | None = None  # epochs of each training round of IMP / learned masks (None: train.epochs)
    options: dict[str, Any] = field(default_factory=dict)  # the method's own (IMP rounds, RigL every, ...)


@dataclass
class InitConfig:
    zero: bool = False  # ZerO: identity / Hadamard weights before masking
    zero_residual: bool = True  # with zero: also zero the last layer of every residual branch
    centroids: bool = False  # ASNI: start from the mask file's 2L centroids (c+ / c-)
    rewind: str | None = None  # weights (state_dict or trainer checkpoint) loaded into the masked model


@dataclass
class OptimizerConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class LRScheduleConfig:
    kind: str = "step"
    milestones: list[int] | None = None  # None: 50% and 75% of train.epochs (schedules.scaled_milestones)
    gamma: float = 0.1
    warmup_epochs: int = 0
    delta: float | None = None


@dataclass
class GhostsConfig:
    alpha: Any = field(default_factory=lambda: {"kind": "linear", "start": 1.0, "end": 0.0})
    beta: Any = field(default_factory=lambda: {"kind": "linear", "start": 1.0, "end": 50.0})
    per: str = "step"
    remove_at: Any = "first_decay"
    removal: str = "gradual"


@dataclass
class LabelSmoothingConfig:
    kind: str = "constant"
    start: float = 0.1  # the default recipe's (tost); `none` and a recipe given as passes: 0
    end: float | None = None
    spread: str = "all"  # a / K on every class (the paper); others: a / (K - 1) on the wrong ones (ToST's code)
    steps: int = 4
    epochs: int | None = None
    per: str = "epoch"


@dataclass
class DistillConfig:
    teacher: str | None = None  # a model spec; None: no distillation
    weights: str | None = None  # the trained dense teacher's state_dict
    temperature: float = 4.0
    weight: float = 0.9


@dataclass
class LRsIConfig:
    """GradInit's procedure and its published SGD setting (surgery.init.lrsi): fresh training data every
    iteration. ToST's argparse defaults are gamma .inf, no normalization (LRsI/train_ticket.py:45-48); its
    README runs gamma 1, normalized, scale_lr 1e-2, 180 iterations, whole batches."""

    enabled: bool = True  # the default recipe (tost) runs it; `none` and a recipe given as passes turn it off
    iterations: int | None = None  # None: one per training batch, an epoch (GradInit's 390: CIFAR-10 at 128)
    scale_lr: float = 1e-3  # Adam on the scales (GradInit: 1e-3 for BN ResNets, 1e-1 for VGG-19 with BN)
    eta: float | None = None  # the simulated step's length; None: optimizer.lr
    grad_norm_bound: float = 1.0  # gamma (GradInit's run_gradinit.sh); .inf: no constraint
    normalize: bool = True  # step eta * g / ||g|| (GradInit's run_gradinit.sh); false: eta * g
    min_scale: float = 0.01
    half_batches: bool = True  # S, S~ of one batch each (GradInit); false: of two whole batches each (ToST)


SELECTIONS = ("auto", "last", "best_val")


@dataclass
class TrainSettings:
    epochs: int = 180
    select: str = "auto"  # the weights a run ends with: last | best_val (needs data.val_split); auto: best_val when there is a val split
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    channels_last: str | bool = "auto"
    compile: bool = False
    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_every: int = 1
    progress: bool = True
    tensorboard: bool = True
    aux_loss_weight: float = 0.3  # auxiliary logits a model returns in training (GoogLeNet, Inception v3), each weighted so


@dataclass
class ExportConfig:
    verify: bool = True
    onnx: bool = True
    sparse: bool = True


@dataclass
class ReferenceConfig:
    """Published numbers that ``surgery sweep`` shows beside its own (results.md); nothing trains on them."""

    source: str | None = None  # where they come from, e.g. "ToST Table 2, ResNet-32 on CIFAR-10"
    results: list[dict[str, Any]] = field(default_factory=list)  # {grid fields of a cell..., accuracy: %, std: %}


@dataclass
class RunConfig:
    name: str = "run"
    output: str = "runs/{name}"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    recipe: Any = field(default_factory=lambda: recipe_passes(DEFAULT))  # the passes: a preset's, a file's or a mapping
    preset: str | None = DEFAULT  # the preset the recipe names (surgery.compiler.presets); None: passes given as such
    init: InitConfig = field(default_factory=InitConfig)
    lrsi: LRsIConfig = field(default_factory=LRsIConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    ghosts: GhostsConfig = field(default_factory=GhostsConfig)
    label_smoothing: LabelSmoothingConfig = field(default_factory=LabelSmoothingConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    export: ExportConfig = field(default_factory=ExportConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)

    # ------------------------------------------------------------ loading

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, base: Path | None = None) -> RunConfig:
        """A validated config. ``recipe`` names a preset (``surgery.compiler.presets``; missing: ``tost``), whose
        fields come first and the mapping's own fields over them; or it gives passes (a mapping, or a recipe
        YAML path relative to ``base``), which train alone. Raises one ``ConfigError`` listing every problem."""
        data = dict(data or {})
        problems: list[str] = []
        recipe = data.get("recipe", DEFAULT)
        if is_preset(recipe):
            data.setdefault("preset", recipe)
        elif not isinstance(recipe, Mapping) or "preset" not in data:
            data["preset"] = None
        data = _under(_layer(recipe), data)
        try:
            data["recipe"] = recipe_passes(recipe, base)
        except (ConfigError, RecipeError) as error:
            problems.append(str(error))
            del data["recipe"]
        config = _build(cls, data, "", problems)
        problems += config.problems()
        if problems:
            raise ConfigError(listed(problems))
        return config

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> RunConfig:
        """Load a config; relative file paths in it (mask file, weights) are relative to the YAML file."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist; see examples/configs/ for working ones.")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file '{path}' is not valid YAML: {error}") from error
        if not isinstance(data, Mapping):
            raise ConfigError(f"config file '{path}' must hold a mapping of sections, not {type(data).__name__}.")
        data = {key: value for key, value in data.items() if key != SWEEP_SECTION}  # `surgery sweep`'s grids
        if "recipe" not in data:  # a baseline must not train with ghosts because a line was left out
            raise ConfigError(
                f"config file '{path}' does not say which recipe trains: add 'recipe: tost' (the paper's four tweaks: "
                "ghost skips + PSwish removed before the first LR decay, LRsI, label smoothing 0.1), 'recipe: none' "
                "(plain sparse training, e.g. a baseline), another preset (" + ", ".join(PRESETS) + "), or a mapping "
                "of passes / a recipe file (those passes alone)."
            )
        config = cls.from_dict(data, base=path.parent)
        config.resolve_paths(path.parent)
        own = run_directory_of(path)
        if own is not None:  # a run's saved config acts on the directory it sits in, copied or not, from anywhere
            config.output = _literal(own)
        return config

    def absolute(self) -> RunConfig:
        """A copy whose paths (output, data, mask files, weights) are absolute, read from the working
        directory: what the pipeline runs, hashes and saves, so the run's config.yaml means the same anywhere."""
        config = copy.deepcopy(self)
        cwd = Path.cwd()
        config.resolve_paths(cwd)
        config.output = config.output if Path(config.output).is_absolute() else str(Path(_literal(cwd)) / config.output)
        config.data.root = _absolute(config.data.root, cwd)
        kind, sep, path = config.data.dataset.partition(":")
        if sep and kind in DATASETS_WITH_PATHS and path:
            config.data.dataset = f"{kind}:{_absolute(path, cwd)}"
        return config

    def resolve_paths(self, base: Path) -> None:
        def resolved(value: str | None) -> str | None:
            return _absolute(value, base)

        self.mask.file = resolved(self.mask.file)
        self.init.rewind = resolved(self.init.rewind)
        self.model.weights = resolved(self.model.weights)
        self.distill.weights = resolved(self.distill.weights)
        masks = self.recipe.get("masks")
        if isinstance(masks, str) and masks not in ("from_zeros", "from_prune"):
            self.recipe["masks"] = resolved(masks)

    def with_overrides(self, overrides: Sequence[str]) -> RunConfig:
        """A copy with ``section.field=value`` overrides applied (values parsed as YAML)."""
        return self.with_fields(parse_overrides(overrides))

    def with_fields(self, fields: Mapping[str, Any]) -> RunConfig:
        """A copy with fields set by dotted name, e.g. ``{"train.epochs": 3}``; unknown names are
        reported with the config's other problems. A new ``recipe`` comes first: the fields the old preset
        set go back to their defaults, the new one's are set, then the other fields given."""
        data = self.to_dict()
        fields = dict(fields)
        if "recipe" in fields:
            data = _switched(data, fields.pop("recipe"))
        for key, value in fields.items():
            _set_dotted(data, key, value)
        return RunConfig.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ------------------------------------------------------------ meaning

    @property
    def run_dir(self) -> Path:
        return Path(self.output.format(name=self.name))

    def recipe_object(self) -> Recipe:
        recipe = dict(self.recipe)
        if self.model.leaf_modules:
            recipe["trace"] = {"leaf_modules": list(self.model.leaf_modules)}
        return Recipe.from_dict(recipe)

    def lr_plan(self) -> LRSchedule:
        s = self.lr_schedule
        milestones = scaled_milestones(self.train.epochs) if s.milestones is None else s.milestones
        return LRSchedule(s.kind, tuple(int(m) for m in milestones), float(s.gamma), int(s.warmup_epochs), s.delta)

    def ghost_plan(self) -> GhostPlan:
        g = self.ghosts
        alpha = Schedule.parse(g.alpha, name="ghosts.alpha", default=Schedule("linear", 1.0, 0.0))
        beta = Schedule.parse(g.beta, name="ghosts.beta", default=Schedule("linear", 1.0, 50.0))
        remove_at = int(g.remove_at) if isinstance(g.remove_at, (int, float)) and not isinstance(g.remove_at, bool) else g.remove_at
        return GhostPlan(alpha, beta, g.per, remove_at, g.removal)

    def lrsi_eta(self) -> float:
        """LRsI's simulated step length: ``lrsi.eta``, else the run's learning rate."""
        return self.optimizer.lr if self.lrsi.eta is None else self.lrsi.eta

    def smoothing_plan(self) -> SmoothingPlan:
        s = self.label_smoothing
        end = s.start if s.end is None else s.end
        return SmoothingPlan(Schedule(s.kind, float(s.start), float(end), int(s.steps)), s.epochs, s.per)

    def validate(self) -> None:
        """Raise one ``ConfigError`` listing every problem ``problems()`` finds."""
        problems = self.problems()
        if problems:
            raise ConfigError(listed(problems))

    def problems(self) -> list[str]:
        """Everything wrong that can be seen before any model is built, one message per problem."""
        found = [message for check in self._checks() if (message := _problem(check))]
        return list(dict.fromkeys(found))  # a schedule's problem shows once, not once per check that reads it

    def _checks(self):
        """Each check raises a ``SurgeryError`` for one problem; later checks assume nothing of earlier ones."""
        yield self._check_preset
        yield self._check_recipe_is_yaml
        yield self._check_epochs
        yield lambda: _check_choice("optimizer", self.optimizer.name, OPTIMIZERS)
        yield lambda: _check_choice("train.select", self.train.select, SELECTIONS)
        yield self._check_selection
        yield lambda: _check_choice("train.amp", self.train.amp, AMP_MODES)
        yield lambda: _check_choice("label_smoothing.spread", self.label_smoothing.spread, SPREADS)
        yield self._check_numbers
        yield self._check_mask
        yield self._check_lrsi
        yield self.lr_plan
        yield self.ghost_plan
        yield self._check_schedules
        yield self.smoothing_plan
        yield self._check_distill
        yield self._check_reference

    def _check_preset(self) -> None:
        if self.preset is None:
            return
        preset(self.preset)
        data = self.to_dict()
        found = contradictions(self.preset, lambda dotted: _get_dotted(data, dotted))
        if found:
            raise ConfigError(listed(found))

    def _check_recipe_is_yaml(self) -> None:
        """A run writes its config to config.yaml and reads it back on --resume: the recipe holds no Python objects."""
        found = [f"recipe.{path} is {value!r}" for path, value in _python_objects(self.recipe)]
        if found:
            raise ConfigError(f"{'; '.join(found)}: a run's config is written to config.yaml and read back on --resume, "
                              "so it holds names, numbers and paths only. Give the option by name (e.g. "
                              "soft_activation.kind: pswish), or pass the Python object to surgery.compile / "
                              "surgery.ToST in your own training loop.")

    def _check_epochs(self) -> None:
        if self.train.epochs < 1:
            raise ConfigError(f"train.epochs is {self.train.epochs}; train for at least 1 epoch.")

    def _check_selection(self) -> None:
        if self.train.select == "best_val" and not self.data.val_split:
            raise ConfigError("train.select: best_val picks the epoch with the best validation accuracy, but there is no "
                              "validation split: set data.val_split (e.g. 0.1 holds out 5,000 of CIFAR-10's 50,000).")

    def _check_numbers(self) -> None:
        if self.optimizer.lr <= 0:
            raise ConfigError(f"optimizer.lr is {self.optimizer.lr}; it must be > 0 (ToST uses 0.1).")
        check_subset(self.data.subset)
        if self.data.batch_size < 1:
            raise ConfigError(f"data.batch_size is {self.data.batch_size}; it must be >= 1 (ToST uses 128).")
        if self.train.checkpoint_every < 0 or self.train.log_every < 1 or self.train.eval_every < 1:
            raise ConfigError("train.checkpoint_every must be >= 0 (0: only at the end), log_every and eval_every >= 1.")
        if not self.train.aux_loss_weight >= 0:
            raise ConfigError(f"train.aux_loss_weight is {self.train.aux_loss_weight}; it must be >= 0 (GoogLeNet's "
                              "paper weights its auxiliary classifiers' losses 0.3; 0 ignores them).")

    def _check_mask(self) -> None:
        if self.mask.file is None and not 0.0 <= self.mask.sparsity < 1.0:
            raise ConfigError(f"mask.sparsity {self.mask.sparsity} is outside [0, 1): give the fraction to prune, e.g. 0.9.")
        if self.mask.batches < 1:
            raise ConfigError(f"mask.batches is {self.mask.batches}; score on at least 1 batch.")
        if self.init.centroids and not self.mask.file:
            raise ConfigError("init.centroids starts from the centroids stored in a mask file; give mask.file (an ASNI mask).")
        if self.mask.allow_empty_layers and not self.mask.file:
            refuse_allow_empty_layers(self.mask.method, self.mask.scope)

    def _check_lrsi(self) -> None:
        if self.lrsi.enabled:
            lrsi = self.lrsi
            check_options(self.lrsi_eta(), lrsi.iterations, lrsi.scale_lr, lrsi.grad_norm_bound, lrsi.min_scale,
                          prefix="lrsi.")  # iterations: None is resolved by the pipeline, from the training loader

    def _check_schedules(self) -> None:
        epochs = max(self.train.epochs, 1)
        lr = self.lr_plan()
        lr.check(epochs)
        plan = self.ghost_plan()
        if any(n in ("ghost_skip", "soft_activation") for n, _ in self.recipe_object().passes):
            plan.removal_epoch(lr, epochs)

    def _check_distill(self) -> None:
        if self.distill.teacher is not None and self.distill.temperature <= 0:
            raise ConfigError(f"distill.temperature {self.distill.temperature} must be > 0 (Hinton et al. use 1-20, often 4).")

    def _check_reference(self) -> None:
        for entry in self.reference.results:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("accuracy"), (int, float)):
                raise ConfigError(f"reference.results entry {entry!r} needs the cell's fields and an accuracy in %, "
                                  "e.g. {mask.sparsity: 0.98, recipe: tost, accuracy: 88.20, std: 0.89}.")


def run_directory_of(path: Path) -> Path | None:
    """The run directory whose saved config ``path`` is (its config.yaml, beside the run's record or sweep cell),
    absolute; None for any other config file."""
    files = RunFiles(Path(path).parent.absolute())
    return files.root if files.config.name == Path(path).name and files.holds_run() else None


def _absolute(value: str | None, base: Path) -> str | None:
    """``value`` (a path; ``~`` expanded) relative to ``base`` unless it is absolute."""
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def _literal(path: Path) -> str:
    """``path`` as an ``output`` value: braces doubled, since ``output`` is a template (``runs/{name}``)."""
    return str(path).replace("{", "{{").replace("}", "}}")


def _check_choice(field_name: str, value: str, known: Sequence[str]) -> None:
    if value not in known:
        raise ConfigError(f"unknown {field_name} '{value}'." + did_you_mean(str(value), known) + f" Known: {list(known)}.")


def _problem(check) -> str | None:
    """The message of the problem ``check()`` raises, or None."""
    try:
        check()
    except SurgeryError as error:
        return str(error)
    return None


def listed(problems: Sequence[str]) -> str:
    """One problem as itself; several as a count and a list, so one run shows them all."""
    if len(problems) == 1:
        return problems[0]
    return f"the config has {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems)


# Fields that change what is computed: a resumed run must agree on all of them.
IGNORED_ON_RESUME = (
    "name", "output", "data.root", "data.download", "data.workers", "data.eval_batch_size",
    "train.checkpoint_every", "train.keep_checkpoints", "train.log_every", "train.eval_every",
    "train.progress", "train.tensorboard", "train.device", "train.compile", "export", "reference",
)


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "",
                       where: str = "in the checkpoint") -> list[str]:
    """``field: saved (where), current now`` for every field that differs and matters for resuming."""
    out = []
    for key in sorted(set(saved) | set(current)):
        dotted = f"{prefix}{key}"
        if dotted in IGNORED_ON_RESUME:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping) and dotted != "recipe":
            out += config_differences(a, b, dotted + ".", where)
        elif a != b:
            out.append(f"{dotted}: {a!r} {where}, {b!r} now")
    return out


def check_resumable(saved: Mapping[str, Any], current: RunConfig | Mapping[str, Any], source: Path) -> None:
    """Refuse to resume ``source`` (a checkpoint, or the run directory's config.yaml) with another config."""
    differences = config_differences(saved, current.to_dict() if isinstance(current, RunConfig) else current)
    if differences:
        raise CheckpointError(
            f"cannot resume from {source}: the config differs from the one it was trained with:\n  - "
            + "\n  - ".join(differences)
            + "\nResume with the original config (the run directory's config.yaml), or start a new run."
        )


# ------------------------------------------------------------------ generic dataclass building


TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "text", list: "a list",
              dict: "a mapping"}


def _build(cls: type, data: Any, where: str, problems: list[str]) -> Any:
    """``cls`` from ``data``; each unknown field or bad value is added to ``problems`` and left at its default."""
    if not isinstance(data, Mapping):
        problems.append(f"config section '{where or 'top level'}' must be a mapping, not {data!r}.")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in names:
            place = f"section '{where}'" if where else "the config"
            problems.append(f"{place} has no field '{key}'." + did_you_mean(str(key), names) + f" Fields: {names}.")
        elif dataclasses.is_dataclass(hints[key]):
            values[key] = _build(hints[key], value, dotted, problems)
        else:
            try:
                values[key] = _coerce(hints[key], value, dotted)
            except ConfigError as error:
                problems.append(str(error))
    return cls(**values)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """``value`` as the field's type (YAML reads 2e-4 as text, 3.0 may mean 3); a ConfigError naming the type."""
    if value is None:
        if _is_optional(hint) or hint is Any:
            return None
        raise ConfigError(f"{where} cannot be empty; give a value (see examples/configs/).")
    base = _non_none(hint)
    kind = typing.get_origin(base) or base
    if kind not in TYPE_NAMES:
        return value  # Any, or a union such as str | bool: the field's own check reads it
    converted = _converted(kind, value)
    if converted is None:
        raise ConfigError(f"{where} must be {TYPE_NAMES[kind]}, got {value!r}.")
    return converted


def _converted(kind: type, value: Any) -> Any:
    """``value`` as ``kind``, or None when it is not one."""
    if kind is bool or isinstance(value, bool):
        return value if kind is bool and isinstance(value, bool) else None
    if kind in (int, float):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        if kind is float:
            return number
        return int(number) if number.is_integer() else None
    if kind is dict:
        return dict(value) if isinstance(value, Mapping) else None
    return value if isinstance(value, kind) else None


def _is_optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _non_none(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else Any
    return hint


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["train.epochs=3", ...]`` as ``{"train.epochs": 3}`` (values parsed as YAML)."""
    fields = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form section.field=value, e.g. train.epochs=3.")
        try:
            fields[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"override '{item}': the value is not valid YAML ({error}).") from error
    return fields


def _get_dotted(data: Mapping[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data.get(part) if isinstance(data, Mapping) else None
    return data


def _layer(recipe: Any) -> dict[str, Any]:
    """The fields a recipe value sets before the config's own: a preset's, else the passes-only ones."""
    fields = PRESETS[recipe].fields if is_preset(recipe) else PASSES_ONLY
    layer: dict[str, Any] = {}
    for key, value in fields.items():
        if key != "recipe":
            _set_dotted(layer, key, copy.deepcopy(value))
    return layer


def _under(layer: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` over ``layer``, field by field within each section (a field's value, a schedule's mapping
    say, replaces the layer's whole)."""
    out = {key: dict(value) if isinstance(value, Mapping) else value for key, value in layer.items()}
    for key, value in data.items():
        out[key] = {**out[key], **value} if isinstance(out.get(key), dict) and isinstance(value, Mapping) else value
    return out


def _switched(data: dict[str, Any], recipe: Any) -> dict[str, Any]:
    """``data`` (a whole config) with ``recipe`` in place of its recipe: what the old preset set goes back to
    the defaults, then the new recipe's fields are set over everything."""
    defaults = RunConfig().to_dict()
    old = data.get("preset")
    for key in PRESETS[old].fields if old in PRESETS else ():
        _set_dotted(data, key, copy.deepcopy(_get_dotted(defaults, key)))
    for key, value in (PRESETS[recipe].fields if is_preset(recipe) else PASSES_ONLY).items():
        _set_dotted(data, key, copy.deepcopy(value))
    data["recipe"] = recipe_passes(recipe)  # passes, so that fields such as recipe.ghost_skip can follow
    data["preset"] = recipe if is_preset(recipe) else None
    return data


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in nested mappings, making missing levels; ``_build`` reports names the config lacks."""
    *sections, name = key.split(".")
    node = data
    for part in sections:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[name] = value


def _python_objects(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted path, value)`` of each value inside ``value`` that YAML cannot hold (a class, a function, a tensor)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _python_objects(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _python_objects(item, f"{path}[{i}]")
    elif not isinstance(value, (str, int, float, bool, type(None))):
        yield path, value
