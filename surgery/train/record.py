"""``result.json``: a run's outcome as data, written atomically at every end.

The pipeline fills a ``RunRecord`` stage by stage and writes it when the run starts
(``running``: a record still saying so means the process died without a word), when it
completes, when a signal interrupts it and when an error fails it (with the error's
class, first line and the stage it reached). The report, the CLI summary and
``--resume`` read this file; nothing reads ``verify.txt`` or a message to decide.

Its keys: ``format``, ``kind`` (``run``: a training run; ``mask rounds``: ``surgery prune``
running a ``before`` mask method's rounds alone), ``status`` (running / completed / interrupted / failed),
``reason`` (null, or ``{error | signal, message, stage}``), ``config`` (``name`` and
``hash``), ``model`` (the network that trained: ``class``, its qualified name; ``source``: spec | python,
given to ``run(config, model=...)``; ``spec`` or null; ``parameters``; class and parameters null until it is
built), ``dataset`` (the spec), ``data`` (``splits``: images per split; ``subset``: null or {images, seed}),
``pairing`` (digests of what the arms of one seed share: ``init``, ``mask``, ``data``; ``surgery.train.pairing``),
``mask`` (``method``, target ``sparsity``, ``file``), ``rounds``
(a ``before`` method's: sparsity and accuracy per round), ``num_classes``, ``device``, ``accuracy`` (``test``
of the weights the run keeps, ``test_last``, ``selected``: last | best_val,
``best_val``: {epoch, val_acc, test_acc}), ``sparsity`` (of conv + linear weights), ``effective_sparsity`` (counting kept ghosts'
parameters as dense weights), ``weights`` (what the final model holds, ``holdings``: ``prunable``, ``kept``
(mask weights), ``ghosts`` (dense ghost parameters left at the end), ``trainable`` (every parameter but the
mask's zeros), ``empty_layers``), ``tweaks`` (``tweaks_of``), ``lrsi`` (null, or what LRsI did: ``iterations``,
``constrained_iterations`` (on the gradient-norm bound), ``seconds``, ``scales``, ``loss_before``,
``loss_after``; written as soon as it ends, carried on by a resume), ``ghosts`` (``parameters``, ``removed_at``:
{step, epoch} or null, ``kept``), ``training`` (``epochs``, ``steps``, ``seconds``),
``preprocessing`` (how the data fed the model, for deployment: ``surgery.Preprocessing.to_dict()``,
input size, channel order, scaling, mean/std, resize rule, class names; also in the ONNX file's metadata),
``verification`` (``status``: passed / failed / skipped, ``checks``, ``report``:
``VerifyReport.to_dict()``, or ``message``), ``export`` (``path``, ``bytes``,
``dense_bytes``, ``sparse``, ...), ``timings`` (this invocation's start, end and seconds;
``training.seconds`` adds up every resumed part), ``stages`` (this invocation's wall seconds per stage,
``STAGES``: ``startup`` from the process's start to ``run()``, null when Python called ``run()``; ``data``,
``model``, ``mask``, ``compile``, ``lrsi``, ``training`` (the trainer built, then its loop), ``deghost`` (masks
baked, clean weights and final masks saved), ``verify`` (its checks' own seconds are in
``verification.report.seconds``), ``export`` (ONNX and its onnxruntime parity) and ``report``; 0 for a stage
that did not run) and ``versions``. Mask rounds record ``mask``, ``rounds``, ``sparsity``, ``mask_file`` (the
file they wrote) and ``timings``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from surgery.zoo.models import GIVEN_IN_PYTHON, qualified_name
from surgery.train.atomic import write_json_atomic
from surgery.train.config import IGNORED_ON_RESUME, RunConfig
from surgery.train.run_files import RunFiles
from surgery.train.interrupt import Interrupted
from surgery.version import __version__

RESULT_FORMAT = 1
RUN, MASK_ROUNDS = "run", "mask rounds"
RUNNING, COMPLETED, INTERRUPTED, FAILED = "running", "completed", "interrupted", "failed"
SOFTWARE = ("torch", "torchvision", "timm", "onnx", "onnxruntime")
# A run's stages in the order they run: result.json's ``stages``, the CLI's time line and the benchmark read it.
STAGES = ("startup", "data", "model", "mask", "compile", "lrsi", "training", "deghost", "verify", "export", "report")
_COMMAND_LINE: ContextVar[bool] = ContextVar("surgery_command_line", default=False)


class RunRecord:
    """The record of one run in the making; ``write(status)`` puts it in result.json (rank 0 only)."""

    def __init__(self, config: RunConfig, files: RunFiles | None = None, *, kind: str = RUN, enabled: bool = True):
        self.files = files or RunFiles(config.run_dir)
        self.enabled = enabled
        self.stage = "setup"  # where the run is: setup, training, finish (a failure names it)
        self.started = datetime.now(timezone.utc)
        self.written = False  # until this run writes result.json, the file there (if any) is an earlier run's
        self.data: dict[str, Any] = {
            "format": RESULT_FORMAT,
            "kind": kind,
            "config": {"name": config.name, "hash": config_hash(config)},
            "model": model_section(config.model.spec),
            "dataset": config.data.dataset,
            "mask": {"method": config.mask.method, "sparsity": config.mask.sparsity, "file": config.mask.file},
            "versions": software_versions(),
        }
        if kind == RUN:
            self.data["lrsi"] = None  # until LRsI runs (lrsi_section)
            self.data["stages"] = {**dict.fromkeys(STAGES, 0.0), "startup": startup_seconds()}

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the block's wall seconds to ``stages[stage]`` (one of ``STAGES``), however the block ends; a mask
        method's rounds alone (kind MASK_ROUNDS) keep no stages."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; the stages are {', '.join(STAGES)}")
        if "stages" not in self.data:
            yield
            return
        started = time.perf_counter()
        try:
            yield
        finally:
            stages = self.data["stages"]
            stages[stage] = round(stages[stage] + time.perf_counter() - started, 3)

    def update(self, **fields: Any) -> None:
        self.data.update(fields)

    def write(self, status: str, reason: dict[str, Any] | None = None) -> Path | None:
        if not self.enabled:
            return None
        ended = datetime.now(timezone.utc)
        self.data.update(status=status, reason=reason, timings={
            "started": self.started.isoformat(timespec="seconds"), "ended": ended.isoformat(timespec="seconds"),
            "seconds": round((ended - self.started).total_seconds(), 3)})
        write_json_atomic(self.data, self.files.result)
        self.written = True
        return self.files.result

    def end(self, error: BaseException) -> Path | None:
        """Record how the run ended early: interrupted by a signal, or failed with ``error``."""
        return self.write(*self.outcome(error))

    def outcome(self, error: BaseException) -> tuple[str, dict[str, Any]]:
        message = first_line(error)
        if isinstance(error, Interrupted):
            return INTERRUPTED, {"signal": signal.Signals(error.signum).name, "message": message, "stage": self.stage}
        if isinstance(error, KeyboardInterrupt):
            return INTERRUPTED, {"signal": "SIGINT", "message": message or "KeyboardInterrupt", "stage": self.stage}
        return FAILED, {"error": type(error).__name__, "message": message, "stage": self.stage}


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """Within: this process was started to run one command line, so a run's record times its start-up
    (``startup_seconds``). ``surgery`` sets it for its own argv, not for ``main([...])`` called from Python."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def startup_seconds() -> float | None:
    """Seconds from this process's start (interpreter, imports, parsing) to now, when a command line started
    it; None when Python code called the run (its process began for something else) or /proc is unreadable."""
    if not _COMMAND_LINE.get():
        return None
    try:  # field 22 of /proc/self/stat, after the parenthesised name: start time in clock ticks since boot
        ticks = int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19])
        return round(time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, IndexError, AttributeError):  # not Linux
        return None


def first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), "")


def config_hash(config: RunConfig) -> str:
    """sha256 of the resolved config's fields that change what is computed (not its name, directory,
    device or progress bars: the fields a resume may change, ``IGNORED_ON_RESUME``)."""
    data = _without(config.absolute().to_dict(), IGNORED_ON_RESUME)  # a relative path hashes as what it names
    text = json.dumps(data, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _without(data: dict[str, Any], dotted: tuple[str, ...], prefix: str = "") -> dict[str, Any]:
    kept = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if name in dotted:
            continue
        kept[key] = _without(value, dotted, name + ".") if isinstance(value, dict) and name != "recipe" else value
    return kept


def software_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": sys.version.split()[0], "surgery": __version__}
    for name in SOFTWARE:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def read_record(files: RunFiles) -> dict[str, Any] | None:
    """result.json's content; None when the run directory has none (or an unreadable one: no decision rests on it)."""
    try:
        data = json.loads(files.result.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def completed_record(config: RunConfig) -> dict[str, Any] | None:
    """The record of ``config``'s training run when it completed with this very config (same hash), else None."""
    record = read_record(RunFiles(config.run_dir))
    if record is None or record.get("status") != COMPLETED or record.get("kind") != RUN:
        return None
    return record if record.get("config", {}).get("hash") == config_hash(config) else None


# ------------------------------------------------------------------ sections


def model_section(spec: str, model: Any = None) -> dict[str, Any]:
    """What trained: the class and parameter count of ``model`` (None: not built yet), and where it came from,
    the spec or Python (``models.python_spec``: the config of a run given its model records its class so)."""
    source, _, name = spec.partition(":")
    given = source == GIVEN_IN_PYTHON
    return {
        "class": qualified_name(model) if model is not None else name if given else None,
        "source": "python" if given else "spec",
        "spec": None if given else spec,
        "parameters": None if model is None else sum(p.numel() for p in model.parameters()),
    }


def holdings(*, parameters: int, prunable: int, kept: int, ghosts: int) -> dict[str, Any]:
    """What a final model holds, by count: ``kept`` mask weights, dense ``ghosts`` parameters left at the end (0
    when the ghosts were removed), ``trainable`` (every parameter of the final model, ``parameters`` counting the
    ghosts', except the weights its mask holds at zero) and ``effective_sparsity`` (over conv + linear + the kept
    ghosts' parameters, which are dense). A kept-ghost arm and a plain one are the same size when their
    ``trainable`` counts are equal."""
    return {"prunable": prunable, "kept": kept, "ghosts": ghosts, "trainable": parameters - (prunable - kept),
            "effective_sparsity": 1 - (kept + ghosts) / (prunable + ghosts) if prunable + ghosts else 0.0}


def recorded_holdings(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """``holdings`` of a completed run's record; records written before they carried it (``weights.trainable``)
    are counted from what they hold: the original's parameters, the mask's counts and the kept ghosts'."""
    weights, ghosts = record.get("weights") or {}, record.get("ghosts") or {}
    if "trainable" in weights:
        return {key: weights[key] for key in ("prunable", "kept", "ghosts", "trainable")} | {
            "effective_sparsity": record.get("effective_sparsity")}
    original = (record.get("model") or {}).get("parameters")
    if original is None or weights.get("kept") is None:
        return None
    kept_ghosts = ghosts.get("parameters", 0) if ghosts.get("kept") else 0
    return holdings(parameters=original + kept_ghosts, prunable=weights["prunable"], kept=weights["kept"],
                    ghosts=kept_ghosts)


def data_section(config: RunConfig, dataset: Any) -> dict[str, Any]:
    """The images a run saw: each split's size, and the training subset (its size and fixed draw) if any."""
    d = config.data
    return {"splits": {name: len(split) for name, split in dataset.splits.items()},
            "subset": None if d.subset is None else {"images": d.subset, "seed": d.subset_seed}}


def verification_passed(report: Any) -> dict[str, Any]:
    return {"status": "passed", "checks": str(report).splitlines(), "report": report.to_dict()}


def verification_failed(error: BaseException) -> dict[str, Any]:
    return {"status": "failed", "error": type(error).__name__, "message": str(error)}


def verification_skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "message": reason}


def lrsi_section(result: Any) -> dict[str, Any]:
    """What ``lrsi`` did (its ``LRsIResult``): iterations run, how many sat on the gradient-norm bound, wall time."""
    return {
        "iterations": result.iterations, "constrained_iterations": result.constrained_iterations,
        "seconds": round(result.seconds, 3), "scales": len(result.scales),
        "loss_before": result.loss_before, "loss_after": result.loss_after,
    }


def export_section(info: Any) -> dict[str, Any]:
    """What ``export_onnx`` wrote: the file, its bytes (sparse and as if dense), its parity with PyTorch."""
    totals = info.totals
    return {
        "path": str(info.path), "bytes": info.sparse_bytes, "dense_bytes": info.dense_bytes,
        "sparse": totals["stored_sparse"] > 0, "initializers": totals["initializers"],
        "stored_sparse": totals["stored_sparse"], "max_abs_error": info.max_abs_error,
        "max_rel_error": info.max_rel_error, "opset": info.opset, "architecture": info.architecture,
    }
