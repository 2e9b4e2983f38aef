"""A sweep's grid: config fields x values x seeds, one run config per cell and seed.

A grid maps dotted config fields to the values they take (``{"mask.sparsity": [0.95, 0.98]}``);
its cells are their product. Several grids make one sweep whose cells are the union (the
ToST table and its ablation in one directory). A value of ``recipe`` may name one of
a preset (``surgery.compiler.presets``): ToST as the paper's text or the authors' code says, none of it, or
one tweak alone, each a set of fields.
Every problem of a grid (unknown field, empty list, a value of the wrong type, a cell the
config refuses) is found before anything runs and reported in one ``SweepError``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from surgery.errors import ConfigError, SweepError, did_you_mean
from surgery.compiler.presets import PRESETS
from surgery.compiler.recipe import refuse_unknown_preset
from surgery.train.config import RunConfig, listed
from surgery.train.sweeps import capacity

RECIPES = PRESETS  # a grid's recipe values by name: ToST (both readings), none, and each tweak alone
SEED_FIELD = "train.seed"
SET_BY_SWEEP = ("name", "output", SEED_FIELD)  # what the sweep itself sets for each run

Grid = dict[str, list[Any]]


@dataclass
class PlannedRun:
    """One run of a sweep: a cell of the grid (its values as the table shows them) and a seed."""

    name: str
    cell: dict[str, Any]  # field -> label: a recipe preset's name, else the value itself
    seed: int
    config: RunConfig
    matched: capacity.Matched | None = None  # a capacity-matched mask.sparsity: the number and why

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir


# ------------------------------------------------------------------ parsing the command line


def parse_grid_option(text: str) -> tuple[str, list[Any]]:
    """``FIELD=V1,V2,...`` as ``(field, [values])``, each value read as YAML: ``[15,23],[10,20]`` is two lists."""
    field, sep, values = text.partition("=")
    if not sep or not field.strip():
        raise SweepError(f"--grid '{text}' is not of the form FIELD=V1,V2,..., e.g. --grid mask.sparsity=0.95,0.98.")
    try:
        parsed = yaml.safe_load(f"[{values}]")
    except yaml.YAMLError as error:
        raise SweepError(f"--grid '{text}': the values are not valid YAML ({error}).") from error
    return field.strip(), parsed


def grid_from_options(texts: Sequence[str]) -> Grid:
    grid: Grid = {}
    for text in texts:
        field, values = parse_grid_option(text)
        if field in grid:
            raise SweepError(f"--grid {field} is given twice; give all its values once: --grid {field}=V1,V2,...")
        grid[field] = values
    return grid


def parse_seeds(value: int | str | Sequence[int]) -> list[int]:
    """``3`` (or ``"3"``): seeds 0, 1, 2; ``"0,3,7"`` or ``[0, 3, 7]``: those seeds; ``"7,"``: seed 7 alone."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        try:
            numbers = [int(p) for p in parts if p]
        except ValueError:
            raise SweepError(f"--seeds '{value}' is not a count (3: seeds 0, 1, 2) or a list of seeds (0,3,7).") from None
        value = numbers if "," in value else numbers[0] if numbers else 0
    if isinstance(value, bool):
        raise SweepError(f"seeds must be a count or a list of integers, not {value!r}.")
    if isinstance(value, int):
        if value < 1:
            raise SweepError(f"seeds is {value}: run at least one seed (3: seeds 0, 1, 2; one given seed: '7,').")
        return list(range(value))
    seeds = list(value)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise SweepError(f"seeds {seeds!r} must be a non-empty list of integers >= 0.")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"seeds {seeds} repeat a seed; each seed runs once per cell.")
    return seeds


# ------------------------------------------------------------------ checking and planning


def config_fields(config: RunConfig) -> list[str]:
    """Every dotted field of a config a grid may set (a mapping-valued field such as ``recipe`` is one field)."""

    def walk(obj: Any, prefix: str) -> Iterable[str]:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                yield from walk(value, f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}"

    return list(walk(config, ""))


def fields_of(field: str, value: Any) -> dict[str, Any]:
    """The config fields one grid value sets (a recipe preset's own fields follow from ``recipe`` itself:
    ``RunConfig.with_fields``)."""
    return {field: value}


def label(field: str, value: Any) -> Any:
    """How tables show a grid value: scalars (a recipe preset's name) as they are, a list or mapping as
    YAML text, or by a digest when that text is long."""
    if not isinstance(value, (Mapping, list)):
        return value
    text = _text(value)
    return text if len(text) <= LABEL_CHARACTERS else f"{field.rsplit('.', 1)[-1]}-{_digest(value)}"


LABEL_CHARACTERS = 64


def check_grids(base: RunConfig, grids: Sequence[Mapping[str, Sequence[Any]]]) -> None:
    """Raise one ``SweepError`` naming every problem of ``grids`` against ``base``."""
    problems: list[str] = []
    known = config_fields(base)
    if not grids:
        problems.append("the sweep has no grid: give --grid FIELD=V1,V2,... (e.g. --grid mask.sparsity=0.95,0.98).")
    for grid in grids:
        if not isinstance(grid, Mapping) or not grid:
            problems.append(f"a grid must map config fields to lists of values, not {grid!r}.")
            continue
        for field, values in grid.items():
            problems += _field_problems(base, known, str(field), values, grid)
    if problems:
        raise SweepError(listed(list(dict.fromkeys(problems))))


def _field_problems(base: RunConfig, known: list[str], field: str, values: Any, grid: Mapping[str, Any]) -> list[str]:
    if field == SEED_FIELD:
        return [f"--grid {field}: give the seeds with --seeds (3: seeds 0, 1, 2; or 0,3,7), not as a grid field."]
    if field in SET_BY_SWEEP:
        return [f"--grid {field}: the sweep names each run and its directory itself (under --out)."]
    if field not in known:
        hint = did_you_mean(field, known) or f" Fields look like mask.sparsity, optimizer.lr, recipe (all: {len(known)})."
        return [f"--grid {field}: the config has no field '{field}'." + hint]
    if not isinstance(values, (list, tuple)) or not values:
        return [f"--grid {field} has no values; give at least one: --grid {field}=V1,V2,..."]
    problems = []
    for value in values:
        if capacity.is_target(field, value):  # computed from the model when the sweep is planned
            problem = capacity.target_problem(value)
            problems += [f"--grid {field}={_text(value)}: {problem}"] if problem else []
            continue
        if field == "recipe":
            try:
                refuse_unknown_preset(value)
            except ConfigError as error:
                problems.append(f"--grid recipe={value}: {error}")
                continue
        error = _refused_everywhere(base, field, value, grid, known)
        if error is not None:
            problems.append(f"--grid {field}={_text(value)}: {error}")
    labels = [label(field, v) for v in values]
    if len(set(map(_text, labels))) != len(labels):
        problems.append(f"--grid {field} repeats a value: {', '.join(map(_text, values))}.")
    return problems


def _refused_everywhere(base: RunConfig, field: str, value: Any, grid: Mapping[str, Any],
                        known: Sequence[str]) -> ConfigError | None:
    """The config's refusal of ``field=value`` when no cell of ``grid`` accepts it (a value may need its cell's
    other fields: ``mask.allow_empty_layers`` beside a method that can empty a layer), else None."""
    others = {f: [v for v in values if _accepted(base, fields_of(f, v))] for f, values in grid.items()
              if f != field and f in known and isinstance(values, (list, tuple))}
    others = {f: values for f, values in others.items() if values}  # a value refused alone is reported for itself
    first = None
    for combination in itertools.product(*others.values()):
        fields = fields_of(field, value)
        for other, other_value in zip(others, combination):
            fields.update(fields_of(other, other_value))
        try:
            base.with_fields(fields)
            return None
        except ConfigError as error:
            first = first or error
    return first


def _accepted(base: RunConfig, fields: dict[str, Any]) -> bool:
    try:
        base.with_fields(fields)
    except ConfigError:
        return False
    return True


def plan(base: RunConfig, grids: Sequence[Mapping[str, Sequence[Any]]], seeds: Sequence[int], out: Path
         ) -> list[PlannedRun]:
    """Every run of the sweep in order (the grids' cells, each with every seed), its config ready;
    one ``SweepError`` lists every grid or cell problem."""
    check_grids(base, grids)
    cells = [dict(zip(grid, values)) for grid in grids for values in itertools.product(*grid.values())]
    runs: dict[str, PlannedRun] = {}
    problems: list[str] = []
    for cell in cells:
        try:
            matched = _matched(base, cell, cells)
        except (ConfigError, SweepError) as error:
            problems.append(f"the cell {cell_text(cell)}: {error}")
            continue
        for seed in seeds:
            name = run_name(cell, seed)
            if name in runs:
                continue
            try:
                runs[name] = _planned(base, cell, seed, name, out, matched)
            except ConfigError as error:
                problems.append(f"the cell {cell_text(cell)} (seed {seed}): {error}")
    if problems:
        raise SweepError(listed(list(dict.fromkeys(problems))))
    return list(runs.values())


def _matched(base: RunConfig, cell: dict[str, Any], cells: Sequence[dict[str, Any]]) -> capacity.Matched | None:
    """The capacity-matched sparsity a cell's ``mask.sparsity`` asks for (``capacity``); None for a number."""
    target = cell.get(capacity.FIELD)
    if not capacity.is_target(capacity.FIELD, target):
        return None
    plain = base.with_fields({f: v for f, v in cell.items() if f != capacity.FIELD})
    if "parameters" in target:
        return capacity.matched_sparsity(plain, target)
    wanted = capacity.arm_fields(cell, target)
    if not any(_same_cell(wanted, other) for other in cells):
        arms = "; ".join(cell_text(c) for c in cells if not any(capacity.is_target(f, v) for f, v in c.items()))
        raise SweepError(f"{capacity.FIELD}={_text(target)} names an arm this sweep does not run ({cell_text(wanted)}); "
                         f"its arms: {arms}. Add that arm to a grid, or match one of these.")
    return capacity.matched_sparsity(plain, target, arm=base.with_fields(wanted))


def _same_cell(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a.keys() == b.keys() and all(_text(label(f, a[f])) == _text(label(f, b[f])) for f in a)


def _planned(base: RunConfig, cell: dict[str, Any], seed: int, name: str, out: Path,
             matched: capacity.Matched | None = None) -> PlannedRun:
    fields: dict[str, Any] = {}
    for field, value in cell.items():
        fields.update(fields_of(field, value))
    if matched is not None:
        fields[capacity.FIELD] = matched.sparsity
    fields.update({"name": f"{base.name}-{name}", "output": str((out / RUNS_DIR / name).absolute()), SEED_FIELD: seed})
    config = base.with_fields(fields)
    config.resolve_paths(Path.cwd())  # the run's config.yaml sits in its own directory: its paths must not depend on it
    return PlannedRun(name, {field: label(field, value) for field, value in cell.items()}, seed, config, matched)


RUNS_DIR = "runs"


def run_name(cell: Mapping[str, Any], seed: int) -> str:
    """A directory name that says the cell: ``method-random_sparsity-0.98_recipe-tost_seed-0``."""
    shorts = [field.rsplit(".", 1)[-1] for field in cell]
    parts = [f"{field if shorts.count(short) > 1 else short}-{_slug(label(field, value))}"
             for (field, value), short in zip(cell.items(), shorts)]
    return "_".join([*parts, f"seed-{seed}"])


def _slug(value: Any) -> str:
    text = re.sub(r"[^A-Za-z0-9.+-]+", "-", _text(value)).strip("-")
    return text if len(text) <= 40 else text[:31] + "-" + _digest(text)


def _digest(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def cell_text(cell: Mapping[str, Any]) -> str:
    return ", ".join(f"{field}={_text(label(field, value))}" for field, value in cell.items())
