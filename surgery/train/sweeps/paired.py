"""Each arm against plain sparse training, seed by seed: the mean paired difference and its 95% interval.

Two runs of one seed form a pair when their records' ``pairing`` digests agree (``surgery.train.pairing``:
the same starting weights, mask and data), so the recipe is the one thing that differs. Differences of
pairs cancel what a seed does to both arms (the mask's luck, the init's); their mean gets a Student t
interval with n - 1 degrees of freedom, and the verdict says whether that interval excludes 0.

An arm's baseline is the ``recipe: none`` cell that agrees with it on every field both name (a field
only the arm names, such as ``ghosts.remove_at``, is the arm's own); the most specific such cell when
several do.

An arm whose final model holds more trainable parameters than its baseline's (ghosts kept to the end) is also
compared with the ``none`` cell of the same final size (``trainable_parameters`` equal to within ``SIZE_TOLERANCE``,
e.g. a ``mask.sparsity: {match: ...}`` cell, ``capacity``): its mask differs by design, so those pairs share the
starting weights and the data only.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from surgery.errors import SweepError
from surgery.compiler.presets import BASELINE
from surgery.train.pairing import PARTS
from surgery.train.record import COMPLETED

CONFIDENCE = 0.95
RECIPE = "recipe"
PAIRING_COLUMNS = tuple(f"pair_{part}" for part in PARTS)  # results.csv: each run's digests
TRAINABLE, SPARSITY = "trainable_parameters", "mask.sparsity"
SIZE_TOLERANCE = 0.01  # "the same final size": a layer-wise budget rounds each layer's count on its own
BASELINE_KIND, EQUAL_SIZE = "baseline", "equal size"  # what an arm is compared with


@dataclass
class Comparison:
    """One arm's cell against its baseline cell."""

    values: dict[str, Any]  # the arm's cell
    baseline: dict[str, Any] | None  # its baseline's cell (None: the sweep has none that fits)
    differences: dict[int, float] = field(default_factory=dict)  # seed -> arm minus baseline, percentage points
    unpaired: dict[int, list[str]] = field(default_factory=dict)  # seed -> what differs (init, mask, data)
    unmatched: list[int] = field(default_factory=list)  # seeds one of the two cells never planned
    unrecorded: int = 0  # pairs whose records carry no digests (made before they were recorded): taken by seed
    kind: str = BASELINE_KIND  # against the baseline (same mask) or plain training of the same final size
    sizes: tuple[float, float] | None = None  # equal size: the arm's and the plain cell's trainable parameters

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.differences.values()) if self.differences else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """The 95% Student t interval of the mean difference; None below two pairs."""
        if self.n < 2:
            return None
        from scipy import stats  # here: scipy.stats takes a second to import, which every `surgery` command paid

        t = float(stats.t.ppf(0.5 + CONFIDENCE / 2, self.n - 1))
        half = t * statistics.stdev(self.differences.values()) / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    @property
    def verdict(self) -> str:
        interval = self.interval
        if interval is None:
            return "needs 2+ pairs"
        if interval[0] > 0:
            return "better"
        if interval[1] < 0:
            return "worse"
        return "inconclusive"

    @property
    def problem(self) -> str | None:
        """Why this arm is not a paired comparison, or None."""
        if self.baseline is None:
            if self.kind == EQUAL_SIZE:
                return (f"no `recipe: {BASELINE}` cell of its final size; add one with mask.sparsity: "
                        "{match: ARM} (surgery.train.sweeps.capacity)")
            return f"no `recipe: {BASELINE}` cell with its other values"
        found = [f"seed {seed}: {', '.join(parts)} differ" for seed, parts in sorted(self.unpaired.items())]
        if self.unmatched:
            found.append(f"seeds {', '.join(map(str, self.unmatched))} run in only one of the two cells")
        return "; ".join(found) or None


def compare(rows: Sequence[Mapping[str, Any]], fields: Sequence[str], metric: str) -> list[Comparison]:
    """Every non-baseline cell of ``rows`` against its baseline, pair by pair on ``metric``."""
    if RECIPE not in fields:
        return []
    cells: dict[tuple, dict[str, Any]] = {}
    runs: dict[tuple, dict[int, Mapping[str, Any]]] = {}
    for row in rows:
        key = tuple((f, row.get(f)) for f in fields if row.get(f) is not None)
        cells.setdefault(key, dict(key))
        runs.setdefault(key, {})[row["seed"]] = row
    baselines = [values for values in cells.values() if values.get(RECIPE) == BASELINE]
    if not baselines:
        return []
    comparisons, larger = [], []
    for key, values in cells.items():
        if values.get(RECIPE) == BASELINE:
            continue
        plain = baseline_of(values, baselines)
        comparison = Comparison(values, plain)
        if plain is not None:
            pair_up(comparison, runs[key], runs[tuple(plain.items())], metric)
            if _size(runs[key]) > _size(runs[tuple(plain.items())]) * (1 + SIZE_TOLERANCE):
                larger.append(key)
        comparisons.append(comparison)
    for key in larger:
        comparisons.append(equal_size(cells[key], runs, cells, baselines, metric))
    return comparisons


def equal_size(values: dict[str, Any], runs: Mapping[tuple, Mapping[int, Mapping[str, Any]]],
               cells: Mapping[tuple, dict[str, Any]], baselines: Sequence[Mapping[str, Any]], metric: str) -> Comparison:
    """``values``' cell against the ``none`` cell whose final models hold as many trainable parameters (the
    one closest in size within ``SIZE_TOLERANCE``), pairs sharing starting weights and data."""
    size = _size(runs[tuple(values.items())])
    fitting = [b for b in baselines if all(f in (RECIPE, SPARSITY) or values.get(f) == v for f, v in b.items())
               and abs(_size(runs[tuple(b.items())]) - size) <= SIZE_TOLERANCE * size]
    plain = min(fitting, key=lambda b: abs(_size(runs[tuple(b.items())]) - size), default=None)
    comparison = Comparison(values, None if plain is None else dict(plain), kind=EQUAL_SIZE)
    if plain is not None:
        comparison.sizes = (size, _size(runs[tuple(plain.items())]))
        pair_up(comparison, runs[tuple(values.items())], runs[tuple(plain.items())], metric, parts=("init", "data"))
    return comparison


def _size(seeds: Mapping[int, Mapping[str, Any]]) -> float:
    """A cell's mean trainable parameters over its completed runs (0 when none recorded them)."""
    counts = [float(row[TRAINABLE]) for row in seeds.values() if row.get(TRAINABLE) not in (None, "")]
    return statistics.fmean(counts) if counts else 0.0


def baseline_of(values: Mapping[str, Any], baselines: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The baseline cell that names nothing the arm contradicts or lacks; the one naming most fields."""
    fitting = [b for b in baselines if all(f == RECIPE or values.get(f) == v for f, v in b.items())]
    return dict(max(fitting, key=len)) if fitting else None


def pair_up(comparison: Comparison, ours: Mapping[int, Mapping[str, Any]], theirs: Mapping[int, Mapping[str, Any]],
            metric: str, parts: Sequence[str] = PARTS) -> None:
    """Each seed both cells ran: their difference on ``metric`` when the records' digests of ``parts`` agree."""
    columns = [f"pair_{part}" for part in parts]
    comparison.unmatched = sorted(set(ours) ^ set(theirs))
    for seed in sorted(set(ours) & set(theirs)):
        a, b = ours[seed], theirs[seed]
        if a["status"] != COMPLETED or b["status"] != COMPLETED or a.get(metric) is None or b.get(metric) is None:
            continue  # a failed or unfinished run: the table above counts it; the pair is left out
        recorded = [c for c in columns if a.get(c) and b.get(c)]
        differing = [c.removeprefix("pair_") for c in recorded if a[c] != b[c]]
        if differing:
            comparison.unpaired[seed] = differing
            continue
        comparison.unrecorded += len(recorded) < len(columns)
        comparison.differences[seed] = (float(a[metric]) - float(b[metric])) * 100


def require_pairs(comparisons: Sequence[Comparison]) -> None:
    """A paired report that is asked for refuses arms that are not paired, naming each."""
    problems = [f"{cell_text(c.values)}: {c.problem}" for c in comparisons
                if c.problem and not (c.kind == EQUAL_SIZE and c.baseline is None)]  # no such cell: said, not refused
    if problems:
        raise SweepError(
            "a paired report needs every arm to share its seeds with a plain-training cell (same initial weights, "
            "mask and data order), and these do not:\n  - " + "\n  - ".join(problems)
            + f"\nRun the missing seeds (surgery sweep with the same config and --seeds), add the `recipe: {BASELINE}` "
            "cells, or drop --paired / sweep.paired for an unpaired table."
        )


def cell_text(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{f}={v}" for f, v in values.items())


def markdown(comparisons: Sequence[Comparison], fields: Sequence[str], metric: str) -> list[str]:
    """The paired tables: against the baseline (the same mask), then, for arms that keep more parameters, against
    plain training of the same final size; one row per arm with at least one pair or a reason it has none."""
    if not comparisons:
        return []
    what = "best-validation epoch" if metric == "test_acc_best_val" else "last epoch"
    lines = _table(f"## Paired against plain sparse training (`recipe: {BASELINE}`), test accuracy of the {what}",
                   [c for c in comparisons if c.kind == BASELINE_KIND], fields)
    lines += ["", f"Each pair: the arm's run minus the `{BASELINE}` run of the same seed, whose records show the same "
              f"starting weights, mask and data (`pairing` in result.json). Interval: Student t, n - 1 degrees of "
              f"freedom; better / worse when it excludes 0, else inconclusive."]
    sized = [c for c in comparisons if c.kind == EQUAL_SIZE]
    if sized:
        lines += ["", *_table(f"## Paired against plain sparse training of the same final size, test accuracy of the "
                              f"{what}", sized, fields, sizes=True),
                  "", f"These arms end holding more trainable parameters than their `{BASELINE}` baseline (ghosts "
                  f"kept to the end). Each pair: the arm's run minus the run of the same seed of the `{BASELINE}` "
                  f"cell whose final model is as large (within {SIZE_TOLERANCE:.0%}), with the same starting weights "
                  "and data; the masks differ by design (a lower sparsity)."]
    unrecorded = sum(c.unrecorded for c in comparisons)
    if unrecorded:
        lines.append(f"{unrecorded} pairs come from runs that recorded no pairing digests: paired by seed alone.")
    return lines


def _table(title: str, comparisons: Sequence[Comparison], fields: Sequence[str], *, sizes: bool = False) -> list[str]:
    against = ["plain cell", "trainable parameters (arm / plain)"] if sizes else []
    header = [*fields, *against, "pairs", f"minus `{BASELINE}`, mean (points)", f"{CONFIDENCE:.0%} interval", "verdict"]
    lines = [title, "", "| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
    for c in comparisons:
        interval = c.interval
        shown = [_show(c.values.get(f)) for f in fields]
        if sizes:
            plain = "—" if c.baseline is None else _show(cell_text({f: v for f, v in c.baseline.items() if f != RECIPE}))
            shown += [plain, "—" if c.sizes is None else f"{c.sizes[0]:,.0f} / {c.sizes[1]:,.0f}"]
        mean = "—" if c.mean is None else f"{c.mean:+.2f}"
        bounds = "—" if interval is None else f"[{interval[0]:+.2f}, {interval[1]:+.2f}]"
        verdict = c.verdict if c.n else "no pairs"
        if c.problem:
            verdict += f" ({c.problem})"
        lines.append("| " + " | ".join([*shown, str(c.n), mean, bounds, verdict]) + " |")
    return lines


def _show(value: Any) -> str:
    return "" if value is None else str(value).replace("|", "\\|")
