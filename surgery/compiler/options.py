"""Validation helpers for pass options: every bad value becomes a RecipeError naming pass and option.
And ``dotted_name``: how an option given as a Python object is written down (YAML, records)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from surgery.errors import RecipeError, did_you_mean


def check_choice(pass_name: str, option: str, value: Any, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise RecipeError(
            f"{pass_name}.{option} = {value!r} is not one of {list(choices)}."
            + did_you_mean(str(value), choices)
        )


def check_subset(pass_name: str, option: str, values: Any, choices: Iterable[str]) -> tuple[str, ...]:
    """``values`` (a name or a list of names) as a tuple, each checked against ``choices``."""
    choices = tuple(choices)
    if not isinstance(values, (str, list, tuple)):
        raise RecipeError(f"{pass_name}.{option} = {values!r} must be a name or a list of names from {list(choices)}.")
    items = (values,) if isinstance(values, str) else tuple(values)
    if not items:
        raise RecipeError(f"{pass_name}.{option} is empty; give at least one of {list(choices)}.")
    for item in items:
        check_choice(pass_name, option, item, choices)
    return items


def check_patterns(pass_name: str, option: str, values: Any) -> tuple[str, ...]:
    """``values`` (an fnmatch pattern or a list of them) as a tuple of strings."""
    items = (values,) if isinstance(values, str) else values
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise RecipeError(
            f"{pass_name}.{option} = {values!r} must be a pattern or a list of patterns, e.g. ['layer4.*']."
        )
    return tuple(items)


def check_number(pass_name: str, option: str, value: Any, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecipeError(f"{pass_name}.{option} = {value!r} must be a number.")
    if not math.isfinite(value):
        raise RecipeError(f"{pass_name}.{option} = {value!r} must be a finite number.")
    if minimum is not None and value < minimum:
        raise RecipeError(f"{pass_name}.{option} = {value!r} must be >= {minimum}.")
    return float(value)


def dotted_name(value: Any) -> Any:
    """What a YAML file or a record holds for an option value: a class or function given in Python as its
    dotted name (``torch.nn.modules.activation.SiLU``); a name, number or anything else as it is."""
    if isinstance(value, str) or not callable(value):
        return value
    name = getattr(value, "__qualname__", None)
    return f"{value.__module__}.{name}" if name and getattr(value, "__module__", None) else repr(value)
