"""``surgery sweep``: a grid of a config's runs, and its results table."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape

from surgery.apps.cli.arguments import add_overrides, command_parser
from surgery.errors import SweepError
from surgery.train import sweeps
from surgery.train.sweeps.grid import grid_from_options


def add_parser(commands) -> None:
    p = command_parser(
        commands, "sweep",
        "Run a grid of a config's runs (fields x values x seeds), J at once, resumable; write results.csv, "
        "results.md (mean ± std over seeds, and each recipe minus `none` seed by seed with a 95% interval), "
        "accuracy-vs-sparsity.png and paired-differences.png.",
        "surgery sweep examples/configs/sweep-digits.yaml --grid mask.method=random,snip "
        "--grid mask.sparsity=0.95,0.98 --grid recipe=tost,none --seeds 3 --jobs 2\n"
        "  surgery sweep examples/configs/sweep-digits.yaml --jobs 2\n"
        "  surgery sweep --report sweeps/sweep-digits",
    )
    p.add_argument("config", nargs="?", metavar="CONFIG.yaml", help="the base run config (see examples/configs/)")
    p.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                   help="a config field and its values, read as YAML (repeatable: the grid is their product); "
                        "recipe takes a preset: tost, tost-official, none, official-jumps, or one tweak alone: gsk, gsw, lrsi, "
                        "ls; mask.sparsity also takes {match: RECIPE} (plain training as large as that arm)")
    p.add_argument("--seeds", metavar="N|S1,S2,...", help="N seeds (0..N-1), or the seeds to run (default 1, "
                   "or the config's sweep: section)")
    add_overrides(p, "a fixed override of the base config, e.g. --set train.epochs=30 (repeatable)")
    p.add_argument("--out", metavar="DIR", help="the sweep's directory (default sweeps/<config name>)")
    p.add_argument("--jobs", type=int, metavar="J", help="runs at once (default 1; with slurm: all). They share "
                   "one GPU, get their own with several, split the cores on CPU")
    p.add_argument("--nproc-per-run", type=int, default=1, metavar="P", help="each run a torchrun DDP job of P processes")
    p.add_argument("--launcher", default="local", choices=("local", "slurm"),
                   help="local processes (default) or one Slurm job per run (needs tost-surgery[slurm])")
    p.add_argument("--slurm-partition", metavar="NAME", help="Slurm partition")
    p.add_argument("--slurm-gpus-per-run", type=int, metavar="G", help="GPUs per Slurm job (default --nproc-per-run)")
    p.add_argument("--slurm-time", type=int, default=24 * 60, metavar="MIN", help="time limit per run in minutes")
    p.add_argument("--slurm-cpus-per-run", type=int, metavar="C", help="CPUs per Slurm job")
    p.add_argument("--dry-run", action="store_true", help="list the runs and what each would do; run nothing")
    p.add_argument("--report", metavar="DIR", help="only rebuild DIR's results table and plot from its runs")
    p.add_argument("--paired", action=argparse.BooleanOptionalAction, default=None,
                   help="refuse a report whose arms do not pair seed by seed with a `recipe: none` cell (same initial "
                        "weights, mask and data order); default: the config's sweep.paired")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    if args.report:
        if args.config or args.grid:
            raise SweepError("--report DIR rebuilds an existing sweep's table; give it without CONFIG and --grid.")
        sweeps.report(args.report, paired=args.paired, console=console)
        return 0
    if not args.config:
        raise SweepError("give the base config: surgery sweep CONFIG.yaml --grid FIELD=V1,V2 (or --report DIR).")
    slurm = {"partition": args.slurm_partition, "gpus_per_run": args.slurm_gpus_per_run,
             "time_min": args.slurm_time, "cpus_per_run": args.slurm_cpus_per_run}
    rows = sweeps.sweep(args.config, grid_from_options(args.grid) if args.grid else None, args.seeds, args.jobs,
                        overrides=args.overrides, out=args.out, nproc_per_run=args.nproc_per_run,
                        launcher=args.launcher, slurm=slurm if args.launcher == "slurm" else None,
                        paired=args.paired, dry_run=args.dry_run, console=console)
    if args.dry_run:
        for row in rows:
            console.print(f"{row['status']:>9}  {escape(row['run_dir'])}")
        console.print(f"{len(rows)} runs; nothing was run (--dry-run).")
    return 0
