"""How a fix is spelled for whoever hit the error: the Python API, or the CLI command being run.

Errors raised deep inside tracing advise a fix (keep a module a leaf, compile a part only, use
a real device). The CLI sets the running command's own options (``for_command``), so the
advice names a flag that command has, or else the config field or the command that offers
it; decided on the command's flags, never on the words of a message. Outside the CLI the
advice names the Python argument, with the CLI flag beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CommandOptions:
    """A CLI command and the option strings it accepts."""

    command: str
    flags: frozenset[str]

    @classmethod
    def of(cls, command: str, parser: argparse.ArgumentParser) -> CommandOptions:
        return cls(command, frozenset(s for action in parser._actions for s in action.option_strings))

    def has(self, flag: str) -> bool:
        return flag in self.flags


_COMMAND: contextvars.ContextVar[CommandOptions | None] = contextvars.ContextVar("surgery_command", default=None)


@contextlib.contextmanager
def for_command(options: CommandOptions | None) -> Iterator[None]:
    """Errors raised inside spell their fixes with ``options``' flags."""
    token = _COMMAND.set(options)
    try:
        yield
    finally:
        _COMMAND.reset(token)


def leaf(path: str | None = None) -> str:
    """How to keep ``path`` (None: some module) opaque as a leaf, e.g. 'leaf_modules=["a"], CLI: --leaf a'."""
    shown = f'"{path}"' if path else "..."
    python = f"leaf_modules=[{shown}]"
    flag = f"--leaf {path}" if path else "--leaf PATH"
    command = _COMMAND.get()
    if command is None:
        return f"{python}, CLI: {flag}"
    if command.has("--leaf"):
        return f"surgery {command.command}: {flag}"
    config = f"model.leaf_modules: [{path or 'PATH'}] in the run config"
    if command.has("--set"):
        return f"surgery {command.command}: --set model.leaf_modules=[{path or 'PATH'}], or {config}"
    return config


def leaf_setting() -> str:
    """Where the leaves are given: 'leaf_modules (CLI: --leaf)', the command's --leaf, or the config field."""
    command = _COMMAND.get()
    if command is None:
        return "leaf_modules (CLI: --leaf)"
    return f"surgery {command.command}'s --leaf" if command.has("--leaf") else "model.leaf_modules in the run config"


def part_setting() -> str:
    """Where a part is chosen: 'submodule= (CLI: --submodule)', the command's --submodule, or your own loop."""
    command = _COMMAND.get()
    if command is None:
        return "submodule= (CLI: --submodule)"
    if command.has("--submodule"):
        return f"surgery {command.command}'s --submodule"
    return f"surgery.compile(..., submodule=) in your own loop (surgery {command.command} trains the whole model)"


def compile_parts(paths: Sequence[str]) -> str:
    """A sentence saying how to compile only ``paths``, the rest of the model running unchanged."""
    value = f'"{paths[0]}"' if len(paths) == 1 else str(list(paths)).replace("'", '"')
    python = f"surgery.compile(model, example_inputs, recipe, submodule={value})"
    flags = " ".join(f"--submodule {p}" for p in paths)
    command = _COMMAND.get()
    if command is None:
        return f"Compile those only, the rest of the model running unchanged: {python} (CLI: {flags})."
    if command.has("--submodule"):
        return f"Compile those only, the rest of the model running unchanged: surgery {command.command} ... {flags}."
    # the training pipeline compiles the whole model; a part trains in the user's own loop
    return (f"surgery {command.command} trains the whole model and has no --submodule: to train only those parts, "
            f"use your own loop with {python} and surgery.ToST (check them first: surgery inspect MODEL {flags}).")


def real_device() -> str:
    """How to run on a real device instead of the meta device."""
    command = _COMMAND.get()
    if command is None:
        return 'move the model to a real device before compiling (model.to("cpu")), CLI: --device cpu'
    if command.has("--device"):
        return f"surgery {command.command} ... --device cpu"
    return f"build the model on a real device: surgery {command.command} has no --device option, so compile it in Python after model.to(\"cpu\")"
