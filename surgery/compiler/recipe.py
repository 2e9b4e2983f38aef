"""Recipe: which passes run, in which order, with which options. From Python, a dict or YAML.

    ghost_skip:      {projection: conv1x1}       # parameter_free | none; targets: [conv, stem, pointwise, pooled, linear]
    soft_activation: {kind: pswish, beta: 1.0}   # swish | mish; targets: [relu, gelu, ...]
    masks:           path/to/mask.safetensors    # or {source: ..., prunable: [conv, linear]}
    trace:           {leaf_modules: [MyBlock, features.3]}

Passes run in the order the sections are written. A section set to ``false`` or
``null`` is off. Every unknown pass or option is a ``RecipeError`` naming it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from surgery.errors import RecipeError, did_you_mean
from surgery.compiler.options import dotted_name
from surgery.compiler.passes import REGISTRY
from surgery.compiler.passes.attach_masks import SOURCES_FROM_MODEL
from surgery.compiler.presets import DEFAULT, PRESETS, preset

TRACE_SECTION = "trace"
# The graph part of each preset (surgery.compiler.presets): what `compile(model, x, "tost")` inserts. ToST's is
# ghost skips around the body's spatial convs (conv1x1-projected where shapes change) and PSwish for every ReLU.
RECIPE_PRESETS: dict[str, dict[str, Any]] = {name: p.passes for name, p in PRESETS.items()}
TOST_RECIPE: dict[str, Any] = RECIPE_PRESETS[DEFAULT]
TRACE_OPTIONS = ("leaf_modules",)


class Recipe:
    """An ordered list of ``(pass_name, options)`` plus tracing options."""

    def __init__(self, **sections: Any):
        self.passes: list[tuple[str, Any]] = []
        self.leaf_modules: tuple[Any, ...] = ()
        for name, value in sections.items():
            if name == TRACE_SECTION:
                self.leaf_modules = _trace_section(value)
            elif name not in REGISTRY:
                raise RecipeError(
                    f"recipe names an unknown pass '{name}'." + did_you_mean(name, REGISTRY)
                    + f" Known passes: {sorted(REGISTRY)} (and the '{TRACE_SECTION}' section)."
                )
            elif value is not None and value is not False:
                self.passes.append((name, _options(name, value)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        if not isinstance(data, Mapping):
            raise RecipeError(f"a recipe is a mapping of pass name to options, not {type(data).__name__}.")
        return cls(**dict(data))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> Recipe:
        """Load a YAML recipe; relative mask paths are relative to the YAML file."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe file '{path}' does not exist.")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise RecipeError(f"recipe file '{path}' is not valid YAML: {error}") from error
        return cls.from_dict(_relative_to(data, path.parent))

    @classmethod
    def coerce(cls, recipe: Recipe | Mapping[str, Any] | str | os.PathLike | None) -> Recipe:
        """A recipe from any recipe value (``recipe_passes``); None is the empty recipe."""
        if recipe is None:
            return cls()
        if isinstance(recipe, Recipe):
            return recipe
        return cls.from_dict(recipe_passes(recipe))

    def replace(self, **sections: Any) -> Recipe:
        """A copy with these sections set: a new pass runs last, an existing one keeps its place,
        ``None`` / ``False`` removes one. ``recipe.replace(masks=masks)`` adds masks to a YAML recipe."""
        merged: dict[str, Any] = {TRACE_SECTION: {"leaf_modules": list(self.leaf_modules)}, **dict(self.passes)}
        merged.update(sections)
        return Recipe(**merged)

    def options(self, name: str) -> Any | None:
        return next((o for n, o in self.passes if n == name), None)

    def to_dict(self) -> dict[str, Any]:
        """A YAML-able view (a mask dict appears as a count, a class as its dotted name): what reports and
        configs record."""
        out: dict[str, Any] = {}
        if self.leaf_modules:
            out[TRACE_SECTION] = {"leaf_modules": [_name_of(x) for x in self.leaf_modules]}
        for name, options in self.passes:
            fields = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(options)
            if isinstance(fields.get("source"), Mapping):
                fields["source"] = f"<{len(fields['source'])} masks given in Python>"
            out[name] = {k: list(v) if isinstance(v, tuple) else dotted_name(v) for k, v in fields.items()}
        return out

    def __repr__(self) -> str:
        return f"Recipe({self.to_dict()})"


def recipe_passes(value: Mapping[str, Any] | str | os.PathLike,
                  base: str | os.PathLike | None = None) -> dict[str, Any]:
    """What a recipe value says, as ``{section: options}``: a mapping's passes as written, a preset's by name
    (``RECIPE_PRESETS``), or a recipe YAML file's, checked (a path, relative to ``base`` when given; mask paths in
    it relative to the file). An unknown preset name is a ``ConfigError`` naming the closest; a value of no
    recipe form, a ``RecipeError``."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str) and value in RECIPE_PRESETS:
        return copy.deepcopy(RECIPE_PRESETS[value])
    refuse_unknown_preset(value)
    if isinstance(value, (str, os.PathLike)):
        return Recipe.from_yaml(Path(base or "") / value).to_dict()
    raise RecipeError(
        f"recipe {value!r} is not a recipe; give one of {list(RECIPE_PRESETS)}, a recipe YAML file, "
        "or a mapping of passes such as {ghost_skip: {projection: conv1x1}}."
    )


def refuse_unknown_preset(value: Any) -> None:
    """A string that names neither a preset nor a recipe file is a mistyped preset: a ``ConfigError`` naming the
    closest presets. Every reader of recipe values (configs, ``surgery.ToST``, a sweep's grid) asks here."""
    if isinstance(value, str) and value not in RECIPE_PRESETS and not names_a_file(value):
        preset(value)


def names_a_file(text: str) -> bool:
    """``text`` reads as a recipe file (a YAML suffix, a path, or an existing file) rather than a preset name."""
    return text.endswith((".yaml", ".yml")) or os.sep in text or "/" in text or Path(text).exists()


def _options(name: str, value: Any) -> Any:
    _, options_class = REGISTRY[name]
    if isinstance(value, options_class):
        return value
    if value is True:
        value = {}
    if name == "masks" and not _is_masks_options(value):
        value = {"source": value}
    if not isinstance(value, Mapping):
        raise RecipeError(f"recipe section '{name}' must be a mapping of options, not {value!r}.")
    known = [f.name for f in dataclasses.fields(options_class)]
    for option in value:
        if option not in known:
            raise RecipeError(
                f"{name} has no option '{option}'." + did_you_mean(str(option), known) + f" Options: {known}."
            )
    return options_class(**value)


def _is_masks_options(value: Any) -> bool:
    """A masks section given as options, rather than as the masks themselves."""
    if not isinstance(value, Mapping):
        return False
    return not value or not all(torch.is_tensor(v) or hasattr(v, "__array__") for v in value.values())


def _trace_section(value: Any) -> tuple[Any, ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise RecipeError(f"recipe section '{TRACE_SECTION}' must be a mapping like {{leaf_modules: [...]}}.")
    for option in value:
        if option not in TRACE_OPTIONS:
            raise RecipeError(f"{TRACE_SECTION} has no option '{option}'. Options: {list(TRACE_OPTIONS)}.")
    leaves = value.get("leaf_modules") or ()
    return (leaves,) if isinstance(leaves, str) else tuple(leaves)


def _relative_to(data: Any, base: Path) -> Any:
    masks = data.get("masks") if isinstance(data, Mapping) else None
    source = masks.get("source") if isinstance(masks, Mapping) else masks
    if isinstance(source, str) and source not in SOURCES_FROM_MODEL and not Path(source).is_absolute():
        resolved = str(base / source)
        data = dict(data)
        data["masks"] = {**masks, "source": resolved} if isinstance(masks, Mapping) else resolved
    return data


def _name_of(x: Any) -> str:
    return x if isinstance(x, str) else getattr(x, "__qualname__", repr(x))
