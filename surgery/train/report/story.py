"""A run's record (result.json) in words: the one wording the summary.md and the CLI summary share.

Each function reads a section of the record as data and says it; none decides anything
from text.
"""

from __future__ import annotations

from typing import Any

from surgery.compiler.manifest import ghost_cost


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def megabytes(count: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count:.0f} B"


def describe_model(model: dict[str, Any] | str) -> str:
    """The network that trained (the record's ``model`` section): its spec or 'given in Python', class, parameters."""
    if isinstance(model, str):  # a record written before the section existed
        return model
    origin = model["spec"] if model["source"] == "spec" else "given in Python"
    parameters = "" if model["parameters"] is None else f", {model['parameters']:,} parameters"
    return f"{origin} ({model['class'] or 'not built'}{parameters})"


def describe_tweaks(tweaks: dict[str, Any]) -> str:
    """e.g. 'ghost skips: 16 (13 identity, 3 conv1x1), soft activations: 17 pswish, LRsI (390 iterations),
    label smoothing 0.1'; 'none' when the plain network trained with hard labels."""
    parts = []
    if tweaks.get("ghost_skips"):
        counts = sorted(tweaks.get("ghost_skip_projections", {}).items(), key=lambda item: (-item[1], item[0]))
        projections = ", ".join(f"{n} {p}" for p, n in counts)  # most common first, whatever the key order
        parts.append(f"ghost skips: {tweaks['ghost_skips']} ({projections})")
    if tweaks.get("soft_activations"):
        parts.append(f"soft activations: {tweaks['soft_activations']} {tweaks.get('soft_activation_kind')}")
    if tweaks.get("lrsi_iterations"):
        parts.append(f"LRsI ({tweaks['lrsi_iterations']} iterations)")
    if tweaks.get("label_smoothing"):
        start, end = tweaks["label_smoothing"]
        parts.append(f"label smoothing {start:g}" + (f" -> {end:g}" if end != start else ""))
    if tweaks.get("distillation_teacher"):
        parts.append(f"distillation from {tweaks['distillation_teacher']}")
    return ", ".join(parts) or "none (plain sparse training)"


def describe_accuracy(accuracy: dict[str, Any]) -> str:
    """The test accuracy of the weights the run keeps; with a validation split, which epoch they are
    from and the other candidate's."""
    test, best = accuracy.get("test"), accuracy.get("best_val")
    if best is None or best.get("test_acc") is None:
        return percent(test)
    if accuracy.get("selected") == "best_val":
        return (f"{percent(test)} (weights of the best-validation epoch {best['epoch']}, val "
                f"{percent(best['val_acc'])}); last epoch {percent(accuracy.get('test_last'))}")
    return f"{percent(test)} (last epoch); at the best-validation epoch {best['epoch']}: {percent(best['test_acc'])}"


def describe_ghosts(ghosts: dict[str, Any], epochs: int) -> str:
    """When the ghosts left (``removed_at``: after ``epoch`` of the run's ``epochs``, at ``step``)."""
    removed = ghosts.get("removed_at")
    if removed is not None:
        epoch, step = removed["epoch"], removed["step"]
        if epoch >= epochs:
            return f"removed after the last epoch (step {step:,})"
        trained = f"epoch {epochs}" if epoch + 1 == epochs else f"epochs {epoch + 1}-{epochs}"
        return f"removed before epoch {epoch + 1} (step {step:,}); {trained} trained as the original architecture"
    if ghosts.get("kept"):
        modules = f"{ghosts['kept_modules']} ghost modules " if ghosts.get("kept_modules") else ""
        return f"{modules}kept to the end (ghosts.remove_at: never): not the original architecture"
    return "none (the recipe adds no ghosts)"


def describe_ghost_cost(record: dict[str, Any]) -> str:
    """The ghosts' training-only parameters next to the weights the final mask keeps."""
    return ghost_cost(record["ghosts"]["parameters"], record.get("weights", {}).get("kept") or None,
                      kept=bool(record["ghosts"].get("kept")))


def describe_holdings(held: dict[str, Any]) -> str:
    """What the final model holds (``record.holdings``): kept mask weights, kept ghost parameters, all trainable
    parameters and the effective sparsity that counts the ghosts'."""
    ghosts = (f" + {held['ghosts']:,} dense ghost parameters kept" if held["ghosts"]
              else " (no ghost parameters left)")
    return (f"{held['kept']:,} of {held['prunable']:,} mask weights{ghosts}; {held['trainable']:,} trainable "
            f"parameters in all; effective sparsity {held['effective_sparsity']:.2%} (conv + linear + kept ghosts)")


def describe_verification(verification: dict[str, Any], *, bold: bool = False) -> str:
    """One line: passed (how many checks, the first), failed (the error's first line) or skipped (why);
    ``bold``: the status in markdown bold."""
    status = verification["status"]
    shown = f"**{status}**" if bold else status
    if status == "passed":
        checks = verification.get("checks") or []
        counted = f" ({len(checks)} checks)" if len(checks) > 1 else ""
        return f"{shown}{counted}: {checks[0]}" if checks else shown
    message = (verification.get("message") or "").strip()
    return f"{shown}: {message.splitlines()[0]}" if message else shown


def describe_onnx_size(export: dict[str, Any]) -> str:
    """e.g. '1.20 MB sparse, 4.00 MB dense (30% of dense); 12 of 40 initializers sparse'."""
    stored, dense = export["bytes"], export["dense_bytes"]
    if not export["sparse"]:
        return f"{megabytes(stored)} (every initializer dense)"
    ratio = f" ({stored / dense:.0%} of dense)" if dense else ""
    return (f"{megabytes(stored)} sparse, {megabytes(dense)} dense{ratio}; "
            f"{export['stored_sparse']} of {export['initializers']} initializers sparse")


def describe_onnx_parity(export: dict[str, Any]) -> str:
    return (f"max |diff| vs PyTorch {export['max_abs_error']:.2g}, relative {export['max_rel_error']:.2g} "
            "(onnxruntime)")


def describe_time(record: dict[str, Any]) -> str:
    """e.g. '28.7 s training, 12.4 s outside it (startup 4.1 s, export 3.0 s, ...)': the training time of
    every resumed part, then this invocation's other stages (result.json's ``stages``), the longest first."""
    training = f"{record['training']['seconds']:.1f} s training"
    outside = {stage: seconds for stage, seconds in (record.get("stages") or {}).items()
               if stage != "training" and seconds}  # startup null: called from Python
    if not outside:
        return training
    shown = sorted(outside.items(), key=lambda item: -item[1])
    parts = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in shown if seconds >= 0.05)
    return f"{training}, {sum(outside.values()):.1f} s outside it ({parts})"
