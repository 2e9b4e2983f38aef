"""``sweep()``: plan a grid, run what is not done yet, and write the sweep's table and plot; ``report()``
writes them again from the run directories alone."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape

from surgery.errors import ConfigError, SweepError
from surgery.train.atomic import write_text_atomic
from surgery.train.config import SWEEP_SECTION, RunConfig
from surgery.train.progress import TaskProgress
from surgery.train.record import COMPLETED, FAILED, completed_record
from surgery.train.report.story import percent
from surgery.train.run_files import RunFiles
from surgery.train.sweeps import grid as grids_
from surgery.train.sweeps import launch, state, table
from surgery.train.sweeps import paired as paired_
from surgery.train.sweeps.plot import differs_in_effect, plot_accuracy, plot_differences

RESULTS_CSV, RESULTS_MD, PLOT = "results.csv", "results.md", "accuracy-vs-sparsity.png"
DIFFERENCES_PLOT = "paired-differences.png"
EFFECTIVE_PLOT = "accuracy-vs-effective-sparsity.png"  # when some arm keeps ghost parameters to the end
GridSpec = Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Sequence[Any]]]


def sweep(
    config: RunConfig | str | Path,
    grid: GridSpec | None = None,
    seeds: int | str | Sequence[int] | None = None,
    jobs: int | None = None,
    *,
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    nproc_per_run: int = 1,
    launcher: str = "local",
    slurm: Mapping[str, Any] | None = None,
    paired: bool | None = None,
    dry_run: bool = False,
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Run every cell of ``grid`` (a mapping of config field to values, or a list of such grids) with every
    seed, ``jobs`` runs at once, and return one row per run (as ``results.csv`` holds them).

    ``config``: a RunConfig or a YAML file, whose ``sweep:`` section (``grids`` or ``grid``, ``seeds``) is
    used where ``grid`` / ``seeds`` are not given. Runs that completed are skipped, interrupted ones
    resume from their checkpoints. ``out`` defaults to ``sweeps/<config name>``. ``launcher="slurm"``
    submits each run through submitit; ``slurm`` holds its options (partition, gpus_per_run, time_min,
    cpus_per_run, cluster). ``paired`` (default: the section's ``paired``, else False): the report refuses
    arms that do not pair seed by seed with a ``recipe: none`` cell. ``dry_run``: plan and return the rows
    without running anything.
    """
    console = console or Console(stderr=True, highlight=False)
    base, source, section = load_base(config, overrides)
    grid_list = normalized_grids(grid if grid is not None else section.get("grids", section.get("grid")))
    seed_list = grids_.parse_seeds(seeds if seeds is not None else section.get("seeds", 1))
    out = Path(out) if out is not None else Path("sweeps") / base.name
    runs = grids_.plan(base, grid_list, seed_list, out)
    for text in dict.fromkeys(f"{grids_.cell_text(run.cell)}: {run.matched.explanation()}" for run in runs if run.matched):
        console.print(escape(text))
    jobs = (1 if launcher == "local" else len(runs)) if jobs is None else jobs
    launch.check_jobs(jobs, nproc_per_run, launcher)
    if dry_run:
        return [planned_row(run) for run in runs]
    paired = bool(section.get("paired", False)) if paired is None else paired
    state.claim(out, base, grid_list, seed_list, source, paired=paired)
    todo = [prepare(run) for run in runs]
    todo = [job for job in todo if job is not None]
    done = len(runs) - len(todo)
    console.print(f"sweep {escape(str(out))}: {len(runs)} runs ({done} already complete, {len(todo)} to run, "
                  f"{jobs} at a time)")
    if todo:
        run_jobs(todo, make_launcher(launcher, out, jobs, nproc_per_run, base, slurm), console, done, len(runs), out)
    report(out, paired=paired, console=console)
    return table.collect(out, [run.name for run in runs])


def load_base(config: RunConfig | str | Path, overrides: Sequence[str]) -> tuple[RunConfig, str | None, dict[str, Any]]:
    """The base config with ``overrides`` applied, its file (if any) and its ``sweep:`` section."""
    if isinstance(config, RunConfig):
        return config.with_overrides(overrides), None, {}
    path = Path(config)
    base = RunConfig.from_yaml(path).with_overrides(overrides)
    data = yaml.safe_load(path.read_text()) or {}
    section = data.get(SWEEP_SECTION) or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{path}: the '{SWEEP_SECTION}' section must be a mapping like "
                          "{seeds: 3, grids: [{mask.sparsity: [0.95, 0.98], recipe: [tost, none]}]}.")
    unknown = set(section) - {"grid", "grids", "seeds", "paired"}
    if unknown:
        raise ConfigError(f"{path}: the '{SWEEP_SECTION}' section has no field(s) {sorted(unknown)}; "
                          "it takes grids (or grid), seeds and paired.")
    if not isinstance(section.get("paired", False), bool):
        raise ConfigError(f"{path}: {SWEEP_SECTION}.paired is {section['paired']!r}; give true (the report must pair "
                          "every arm with a `recipe: none` cell seed by seed) or false.")
    return base, str(path), dict(section)


def normalized_grids(value: GridSpec | None) -> list[dict[str, list[Any]]]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        value = [value]
    return [{str(k): list(v) if isinstance(v, (list, tuple)) else v for k, v in g.items()}
            if isinstance(g, Mapping) else g for g in value]


RESUME = "resume"


def run_state(run: grids_.PlannedRun) -> str:
    """What a run needs: nothing (it completed with this config), to resume from its checkpoint, or to start."""
    if completed_record(run.config) is not None:
        return COMPLETED
    return RESUME if RunFiles(run.run_dir).holds_checkpoint() else table.PENDING


def planned_row(run: grids_.PlannedRun) -> dict[str, Any]:
    return {**run.cell, "seed": run.seed, "status": run_state(run), "run_dir": str(RunFiles(run.run_dir).root)}


def prepare(run: grids_.PlannedRun) -> launch.Job | None:
    """The job that runs ``run`` (None when it already completed with this config): its directory, its
    config.yaml and cell.json written; resuming when the directory holds a checkpoint."""
    state = run_state(run)
    if state == COMPLETED:
        return None
    files = RunFiles(run.run_dir)
    files.root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run.config.to_yaml(), files.config)
    write_text_atomic(json.dumps({"cell": run.cell, "seed": run.seed}, indent=1) + "\n", files.sweep_cell)
    return launch.Job(run, resume=state == RESUME)


def make_launcher(kind: str, out: Path, jobs: int, nproc_per_run: int, base: RunConfig,
                  slurm: Mapping[str, Any] | None) -> launch.Launcher:
    if kind == "slurm":
        return launch.SlurmLauncher(out / "slurm", jobs=jobs, nproc_per_run=nproc_per_run, **dict(slurm or {}))
    return launch.LocalLauncher(jobs, nproc_per_run=nproc_per_run, gpus=launch.visible_gpus(base.train.device))


def run_jobs(jobs: Sequence[launch.Job], launcher: launch.Launcher, console: Console, done: int, total: int,
             out: Path) -> None:
    """Run the jobs with one line per finished run and an overall bar (runs done / total, ETA)."""
    counts = {"done": done, "completed": done}
    with TaskProgress(console, "sweep", total, done) as bar:

        def on_end(job: launch.Job, code: int) -> None:
            counts["done"] += 1
            row = table.row_of(RunFiles(job.run.run_dir), {"cell": job.run.cell, "seed": job.run.seed})
            if code != 0 and row["status"] == COMPLETED:
                row["status"] = FAILED
            counts["completed"] += row["status"] == COMPLETED
            console.print(f"[{counts['done']}/{total}] {escape(job.run.name)}: {escape(run_line(row, code))}")
            bar.advance(counts["done"])

        def on_stop(signum: int, stopped: int) -> str:
            report(out, console=console)
            return (f"sweep stopped: {stopped} running run(s) asked to checkpoint; {counts['completed']} of {total} "
                    "runs completed; run the same command again to resume the rest.")

        launch.execute(jobs, launcher, on_end, on_stop)


def run_line(row: Mapping[str, Any], code: int) -> str:
    if row["status"] == COMPLETED:
        which = "best-val epoch" if row.get("test_acc_best_val") is not None else "last epoch"
        accuracy = row["test_acc_best_val"] if row.get("test_acc_best_val") is not None else row["test_acc_last"]
        return (f"completed: test {percent(accuracy)} ({which}), {percent(row['sparsity'])} sparse, "
                f"{row['seconds']:.0f} s")
    error = row.get("error") or f"exit code {code}"
    return f"{row['status']} (exit code {code}): {error}"


def report(out: str | Path, *, paired: bool | None = None, console: Console | None = None) -> list[dict[str, Any]]:
    """Write ``results.csv``, ``results.md``, ``accuracy-vs-sparsity.png`` and (with ``recipe: none`` cells)
    ``paired-differences.png`` of the sweep in ``out`` from its run directories alone; returns the rows.

    ``paired`` (default: what the sweep recorded, ``sweep.paired``) refuses, before writing anything, an arm
    whose runs do not pair with a ``none`` cell's seed by seed (``paired.require_pairs``)."""
    out = Path(out)
    rows = table.collect(out)
    if not rows:
        raise SweepError(f"{out} holds no sweep runs (no {grids_.RUNS_DIR}/*/cell.json): give the --out directory "
                         "of a `surgery sweep`, or run one there first.")
    saved = state.read_state(out) or {}
    order = state.grid_order(saved)
    fields = list(dict.fromkeys(f for row in rows for f in cell_fields(row)))
    rows.sort(key=lambda row: (*(_rank(order.get(f, []), row.get(f)) for f in fields), row["seed"]))
    base = saved.get("base") or {}
    kind, _, path = str(base.get("data", {}).get("dataset", "")).partition(":")
    dataset = f"{kind}:{Path(path).name}" if path else kind  # the file's name: a full path would crowd the titles
    title = f"{base.get('name', out.name)}: {base.get('model', {}).get('spec', '')} on {dataset}"
    cells = table.summarize(rows, fields)
    comparisons = paired_.compare(rows, fields, table.headline(cells))
    if saved.get("paired", False) if paired is None else paired:
        paired_.require_pairs(comparisons)
    table.write_csv(rows, fields, out / RESULTS_CSV)
    text = table.markdown(cells, fields, title=title, reference=base.get("reference"), base=base, rows=rows,
                          comparisons=comparisons)
    write_text_atomic(text, out / RESULTS_MD)
    effective = (plot_accuracy(cells, fields, table.headline(cells), out / EFFECTIVE_PLOT, title,
                               x_axis="effective_sparsity") if differs_in_effect(cells) else None)
    plots = (plot_accuracy(cells, fields, table.headline(cells), out / PLOT, title), effective,
             plot_differences(comparisons, fields, table.headline(cells), out / DIFFERENCES_PLOT, title))
    if console is not None:
        written = ", ".join(str(p) for p in (out / RESULTS_CSV, out / RESULTS_MD, *plots) if p is not None)
        finished = sum(1 for r in rows if r["status"] == COMPLETED)
        console.print(f"{finished} of {len(rows)} runs completed; wrote {escape(written)}")
    return rows


def _rank(values: list[Any], value: Any) -> tuple[int, str]:
    """Where ``value`` comes in its field's grid order: a cell that does not name the field (the base config's
    value) first, then the grids' order, then values the grids do not list, by text."""
    if value is None:
        return -1, ""
    return (values.index(value), "") if value in values else (len(values), str(value))


def cell_fields(row: Mapping[str, Any]) -> list[str]:
    return [k for k in row if k not in table.COLUMNS]
