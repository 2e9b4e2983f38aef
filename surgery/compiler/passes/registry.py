"""The recipe's passes by section name: each pass file registers itself with ``@register``.

    @register("my_pass", MyPassOptions)
    def my_pass(gm: fx.GraphModule, options: MyPassOptions) -> fx.GraphModule: ...

A file under ``surgery/compiler/passes/`` is imported with the package, so its decorator
has run by the time a recipe names the pass. ``reported_in`` gives a failing pass's error
its context, as ``torch.fx.passes.PassManager`` does: which pass failed, after which others.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

from torch import fx

from surgery.errors import SurgeryError


class Pass(NamedTuple):
    run: Callable[[fx.GraphModule, Any], fx.GraphModule]
    options: type  # a frozen dataclass: the recipe section's options, checked when built


REGISTRY: dict[str, Pass] = {}


def register(name: str, options: type) -> Callable:
    """Decorator: make ``fn(gm, options) -> gm`` the recipe section ``name``, configured by ``options``."""

    def add(run: Callable[[fx.GraphModule, Any], fx.GraphModule]) -> Callable:
        REGISTRY[name] = Pass(run, options)
        return run

    return add


@contextlib.contextmanager
def reported_in(name: str, before: Sequence[str]) -> Iterator[None]:
    """Name the pass ``name`` (run after ``before``) in an error it raises. A ``SurgeryError`` keeps its
    class and gets the context in its message; any other exception (a bug) keeps its message and gets it
    as a note on its traceback."""
    context = f"(in recipe pass '{name}', run after {_listed(before)})"
    try:
        yield
    except SurgeryError as error:
        if error.args and isinstance(error.args[0], str):
            error.args = (f"{error.args[0]}\n{context}", *error.args[1:])
        raise
    except Exception as error:
        if hasattr(error, "add_note"):  # Python 3.11+; on 3.10 the traceback alone says where
            error.add_note(context)
        raise


def _listed(names: Sequence[str]) -> str:
    return "passes " + ", ".join(f"'{n}'" for n in names) if names else "no other pass"
