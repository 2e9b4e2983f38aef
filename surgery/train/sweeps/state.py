"""``DIR/sweep.yaml``: which config a sweep directory belongs to, and every grid run into it.

The first ``surgery sweep`` into a directory records its base config (the config file with
``--set`` applied); a later one with the same base config may change the grid or the seeds
(only the new runs run), one with another base config is refused with the fields that
differ. The grids accumulate, so ``--report`` knows every field a cell was made of.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from surgery.errors import SweepError
from surgery.train.atomic import write_text_atomic
from surgery.train.config import RunConfig, config_differences
from surgery.train.sweeps.grid import label

SWEEP_FILE = "sweep.yaml"
FORMAT = 1


def sweep_file(out: Path) -> Path:
    return Path(out) / SWEEP_FILE


def read_state(out: Path) -> dict[str, Any] | None:
    """The directory's sweep record, or None when it holds no sweep."""
    path = sweep_file(out)
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SweepError(f"{path} is not valid YAML ({error}); it records the sweep of this directory: restore it, "
                         "or start a new sweep with another --out.") from error
    if not isinstance(data, Mapping) or not isinstance(data.get("base"), Mapping):
        raise SweepError(f"{path} is not a sweep record; start the sweep in another directory with --out.")
    return dict(data)


def claim(out: Path, base: RunConfig, grids: Sequence[Mapping[str, Sequence[Any]]], seeds: Sequence[int],
          source: str | None, *, paired: bool = False) -> None:
    """Record this sweep in ``out``; refuse a directory that holds a sweep of another base config. ``paired``:
    whether its report must pair every arm with plain training (the latest sweep into ``out`` says)."""
    state = read_state(out)
    if state is not None:
        differences = config_differences(state["base"], base.to_dict(), where=f"in {sweep_file(out)}")
        if differences:
            raise SweepError(
                f"{out} holds a sweep of a different config:\n  - " + "\n  - ".join(differences)
                + f"\nRun the same config again to continue that sweep, or start a new one with another --out "
                f"(e.g. --out {Path(out).name}-2)."
            )
    known = [dict(g) for g in (state or {}).get("grids", [])]
    new = [dict(g) for g in grids if dict(g) not in known]
    record = {"format": FORMAT, "config": source, "base": base.to_dict(), "grids": known + new,
              "seeds": sorted(set((state or {}).get("seeds", [])) | set(seeds)), "paired": paired}
    Path(out).mkdir(parents=True, exist_ok=True)
    write_text_atomic(yaml.safe_dump(record, sort_keys=False), sweep_file(out))


def grid_fields(state: Mapping[str, Any] | None) -> list[str]:
    """Every field any grid of the sweep varied, in the order they were first given."""
    return list(grid_order(state))


def grid_order(state: Mapping[str, Any] | None) -> dict[str, list[Any]]:
    """Each grid field's values as tables show them, in the order the grids give them."""
    order: dict[str, list[Any]] = {}
    for grid in (state or {}).get("grids", []):
        for field, values in grid.items():
            known = order.setdefault(field, [])
            known += [v for v in map(lambda value: label(field, value), values) if v not in known]
    return order
