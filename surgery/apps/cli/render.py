"""What commands print, as rich tables: an inspection report, the mask methods, a mask file's layers, a run's
outcome (read from its record, like the report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from surgery.apps.prune import PruneResult, layer_rows, metadata_summary
from surgery.pruning import Method
from surgery.train.config import RunConfig
from surgery.train.pipeline import RunResult
from surgery.train.record import recorded_holdings
from surgery.train.report.story import (
    describe_accuracy,
    describe_ghost_cost,
    describe_ghosts,
    describe_holdings,
    describe_model,
    describe_onnx_size,
    describe_time,
    describe_tweaks,
    describe_verification,
)
from surgery.train.run_files import RunFiles


def print_inspection(console: Console, report: dict[str, Any]) -> None:
    table = Table(title=f"{report['model']}  ({report['class']})", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for label, value in _inspection_rows(report):
        table.add_row(label, value)
    console.print(table)
    _print_listing(console, "Leaf modules (opaque to every pass)", report["leaf_modules"], ("module", "class"))
    unreached_columns = ("module", "class", "inside", "what")
    _print_listing(console, "Out of reach inside leaf modules", report["unreached"], unreached_columns)
    _print_listing(console, "Sites left without a ghost", report["skipped"], ("site", "why"))
    branch_columns = ("module", "where", "code", "modes")
    _print_listing(console, "Where the forward branches on self.training (one graph per mode)",
                   report["mode_branches"], branch_columns)


def _inspection_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    projections = ", ".join(f"{n} {p}" for p, n in report["projections"].items()) or "none"
    originals = ", ".join(f"{n} x {o}" for o, n in report["activations_by_original"].items()) or "none"
    rows = [
        ("input", f"{report['inputs']} on {report['device']} ({report['task'].replace('_', ' ')})"),
        ("compiled", _compiled_text(report)),
        ("passes", ", ".join(report["passes"]) or "none"),
        ("modes", _modes_text(report)),
        ("parameters", f"{report['parameters']:,} (+{report['ghost_parameters']:,} in ghosts, training only)"),
        ("ghost cost", _ghost_cost_text(report)),
        ("convs covered", _convs_covered_text(report)),
        ("skip projections", projections),
        ("activations swapped", f"{report['activations_swapped']} ({originals})"),
        ("weights maskable", f"{report['maskable_weights']} ({report['maskable_parameters']:,} parameters)"),
        ("weights masked", _masked_text(report)),
        ("leaf modules", str(len(report["leaf_modules"]))),
        ("out of reach in leaves", f"{report['convs_unreached']} convs, {report['activations_unreached']} activations"),
    ]
    if report["linears_covered"]:
        rows.insert(4, ("linears covered", str(report["linears_covered"])))
    if report["specialized_to"]:  # the forward computes with its inputs' shapes in Python: the graph holds one shape
        rows.insert(4, ("traced for", "; ".join(report["specialized_to"]) + " only (other shapes are refused)"))
    return rows


def _compiled_text(report: dict[str, Any]) -> str:
    if not report["submodules"]:
        return f"the whole model ({report['parameters_compiled']:,} parameters)"
    outside = ", ".join(report["left_outside"]) or "nothing else"
    return (f"{', '.join(report['submodules'])} ({report['parameters_compiled']:,} parameters); left outside, "
            f"unchanged: {outside} ({report['parameters_outside']:,} parameters)")


def _modes_text(report: dict[str, Any]) -> str:
    if report["mode_graphs"] == 1:
        return "one graph for train and eval mode"
    places = len(report["mode_branches"])
    return (f"two graphs, one per mode: the forward branches on self.training in {places} place"
            f"{'s' if places != 1 else ''} (listed below); .train() / .eval() pick the graph, one state_dict")


def _convs_covered_text(report: dict[str, Any]) -> str:
    text = f"{report['convs_covered']} of {report['convs_found']} found"
    left_out = report["convs_not_targeted"]
    if left_out:
        kinds = ", ".join(f"{n} {kind}" for kind, n in left_out.items())
        text += f" (not targeted: {kinds}; add a kind to ghost_skip.targets to wrap it)"
    return text


def _masked_text(report: dict[str, Any]) -> str:
    """Masks attached by the recipe; ``--sparsity`` only sizes the ghost-cost comparison, so say so."""
    if report["weights_masked"] or report.get("sparsity") is None:
        return str(report["weights_masked"])
    return f"0 (--sparsity {report['sparsity']:g} only sizes the ghost-cost comparison; masks come from the recipe)"


def _ghost_cost_text(report: dict[str, Any]) -> str:
    if report["kept_weights"] is not None or not report["ghost_parameters"] or not report["maskable_parameters"]:
        return report["ghost_cost"]
    share = report["ghost_parameters"] / report["maskable_parameters"]
    return (f"{report['ghost_cost']} ({share:.1%} of the {report['maskable_parameters']:,} maskable weights; "
            "--sparsity S compares with what a mask keeps)")


def _print_listing(console: Console, title: str, rows: list[dict], columns: tuple[str, ...], limit: int = 20) -> None:
    if not rows:
        return
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")  # paths stay whole, wrapped
    for row in rows[:limit]:
        table.add_row(*(str(row[c]) for c in columns))
    if len(rows) > limit:
        table.caption = f"... and {len(rows) - limit} more (--json lists all)"
    console.print(table)


def print_methods(console: Console, methods: dict[str, Method]) -> None:
    table = Table(title="mask methods", title_justify="left")
    for column in ("method", "needs", "budget", "what it does"):
        table.add_column(column, overflow="fold")  # paths stay whole, wrapped
    for name, m in sorted(methods.items()):
        needs = "training" if m.training else "data" if m.data else "trained weights" if m.trained else "nothing"
        table.add_row(name, needs, f"{m.scope}" + (f", {m.distribution}" if m.distribution != "uniform" else ""), m.about)
    console.print(table)


def print_mask_table(console: Console, result: PruneResult, out: Path) -> None:
    table = Table(title=f"{out}: {metadata_summary(result.metadata)}", title_justify="left")
    for column, justify in (("layer", "left"), ("shape", "left"), ("kept", "right"), ("of", "right"), ("sparsity", "right")):
        table.add_column(column, justify=justify)
    rows = layer_rows(result)
    for name, shape, kept, total, sparsity in rows:
        table.add_row(name, shape, f"{kept:,}", f"{total:,}", f"{sparsity:.1%}")
    kept = sum(r[2] for r in rows)
    total = sum(r[3] for r in rows)
    table.add_row("all", "", f"{kept:,}", f"{total:,}", f"{1 - kept / max(total, 1):.2%}", style="bold")
    console.print(table)
    if result.run_dir is not None:
        files = RunFiles(result.run_dir)
        written = (files.summary, files.metrics, files.rounds_csv, files.start_weights, files.result)
        console.print(f"training run: {files.root} ({', '.join(p.name for p in written if p.exists())})")
        if files.start_weights.exists():
            console.print(f"train the mask from its starting weights: surgery run CONFIG --set mask.file={out} "
                          f"--set init.rewind={files.start_weights}")


def print_run_summary(console: Console, config: RunConfig, result: RunResult) -> None:
    """The run's outcome, read from its record (result.json) like the report."""
    record, files = result.record, RunFiles(result.run_dir)
    table = Table(title=f"surgery: {escape(config.name)}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("model", escape(f"{describe_model(record['model'])} on {config.data.dataset}"))
    table.add_row("recipe", escape(config.preset or "passes given as such (recipe mapping or file)"))
    if record.get("ghosts", {}).get("kept"):
        table.add_row("architecture", f"[bold red]{escape(record['architecture'])}[/]")
    if record["accuracy"]["test"] is not None:
        table.add_row("test accuracy", describe_accuracy(record["accuracy"]))
    table.add_row("sparsity", f"{record['sparsity']:.1%} of conv/linear weights are zero")
    held = recorded_holdings(record)
    if held is not None:
        table.add_row("final model", escape(describe_holdings(held)))
    table.add_row("tweaks", escape(describe_tweaks(record["tweaks"])))
    table.add_row("ghosts", escape(describe_ghosts(record["ghosts"], record["training"]["epochs"])))
    if record["ghosts"]["parameters"]:
        table.add_row("ghost cost", describe_ghost_cost(record))
    verification = record["verification"]
    if verification is not None:
        passed = verification["status"] == "passed"
        table.add_row("verification", escape("\n".join(verification["checks"]) if passed
                                             else describe_verification(verification)))
    if record["export"] is not None:
        table.add_row("ONNX", escape(f"{record['export']['path']} ({describe_onnx_size(record['export'])})"))
    table.add_row("report", escape(str(files.summary)))
    table.add_row("record", escape(str(files.result)))
    table.add_row("time", describe_time(record))
    console.print(table)
