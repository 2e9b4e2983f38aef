"""Where a forward branches on ``self.training``: the module and the source line, for a union graph.

The nodes only one mode runs were recorded with the frames of the model's code that made them
(``surgery.fx.tracer.FRAMES_KEY``). Walking each one's frames
from the outermost in, the first line inside an ``if`` or conditional expression whose test reads
``.training`` is the branch; a node with no such line (the difference comes from a call, not an
``if``) is reported at its innermost line in the model's code, unless it reads another node of
its mode: everything after a branch that rejoins the shared code differs only by its inputs, and
is no branch of its own. The module is the innermost one, on the node's module stack, whose class
defines the function of that frame.
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import fx, nn

from surgery.fx.tracer import FRAMES_KEY



@dataclass(frozen=True)
class Branch:
    module: str  # module path ('' for the model itself)
    cls: str
    where: str  # "file.py:42"
    code: str  # the line, e.g. "if self.aux1 is not None and self.training:"
    modes: tuple[str, ...]  # the modes whose own nodes start there

    def describe(self) -> str:
        module = f"`{self.module}`" if self.module else "the model itself"
        return f"{module} ({self.cls}) at {self.where}: `{self.code}` ({' and '.join(self.modes)} mode only)"


def branches(mode_only: Iterable[tuple[fx.Node, str]], model: nn.Module) -> list[Branch]:
    """One ``Branch`` per source line where a union graph's modes part ways.

    ``mode_only`` is the union's nodes that one mode alone runs, each with its mode, in graph order.
    """
    found: dict[tuple[str, str], tuple[str, str, str, set[str]]] = {}
    accounted: set[fx.Node] = set()  # mode-only nodes located at a branch, or reading one that is accounted for
    for node, mode in mode_only:
        follows = any(i in accounted for i in node.all_input_nodes)
        located = _locate(node, model, follows)
        if located is not None or follows:
            accounted.add(node)
        if located is None:
            continue
        module, where, code = located
        found.setdefault((module, where), (module, where, code, set()))[3].add(mode)
    return [
        Branch(module, _class_name(model, module), where, code, tuple(sorted(modes, reverse=True)))
        for module, where, code, modes in found.values()
    ]


def _locate(node: fx.Node, model: nn.Module, follows: bool) -> tuple[str, str, str] | None:
    """(module, "file:line", code) of the branch ``node`` is in; None where it has none in the model's
    code, or none but the line it runs on while it ``follows`` (reads) a node already accounted for."""
    frames = node.meta.get(FRAMES_KEY)
    if not frames:
        return None
    chosen = next((f for f in frames if _branch_line(f[0], f[1]) is not None), None)
    if chosen is None and follows:
        return None
    file, line, function = chosen or frames[-1]
    line = _branch_line(file, line) or line
    return _module_running(node, model, file, function), f"{_short_path(file)}:{line}", _source_line(file, line)


def _branch_line(file: str, line: int) -> int | None:
    """The line of the innermost ``if`` / conditional expression around ``line`` whose test reads
    ``.training``, when ``line`` is in one of its branches (not its test)."""
    inside = [start for start, end in _training_branches(file) if start <= line <= end]
    return max(inside) if inside else None


def _reads_training(test: ast.AST) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == "training" for n in ast.walk(test))


@functools.lru_cache(maxsize=256)
def _training_branches(file: str) -> tuple[tuple[int, int], ...]:
    """(first, last) line of every ``if`` / conditional expression / ``while`` in ``file`` whose test reads
    ``.training``: one walk of the file's syntax tree, however many frames point into it."""
    try:
        with open(file, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
    except (OSError, SyntaxError, ValueError):
        return ()
    return tuple((node.lineno, node.end_lineno or node.lineno) for node in ast.walk(tree)
                 if isinstance(node, (ast.If, ast.IfExp, ast.While)) and _reads_training(node.test))


def _short_path(file: str) -> str:
    """The path as imported (``torchvision/models/googlenet.py``) or relative to the working directory."""
    file = os.path.abspath(file)
    roots = [os.getcwd(), *(os.path.abspath(p) for p in sys.path if p)]
    inside = [root for root in roots if file.startswith(root.rstrip(os.sep) + os.sep)]
    return os.path.relpath(file, max(inside, key=len)) if inside else file


def _source_line(file: str, line: int) -> str:
    import linecache

    return linecache.getline(file, line).strip()


def _module_running(node: fx.Node, model: nn.Module, file: str, function: str) -> str:
    """The innermost module on the node's stack whose class defines ``function`` in ``file``."""
    stack = [path for path, _ in (node.meta.get("nn_module_stack") or {}).values()]
    for path in reversed(["", *stack]):
        try:
            cls = type(model.get_submodule(path))
        except AttributeError:
            continue
        if any(_defined_in(klass, function, file) for klass in cls.__mro__):
            return path
    return ""


def _defined_in(klass: type, function: str, file: str) -> bool:
    method: Any = klass.__dict__.get(function)
    if method is None:
        return False
    try:
        return os.path.samefile(inspect.getsourcefile(method) or "", file)
    except (TypeError, OSError):
        return False


def _class_name(model: nn.Module, path: str) -> str:
    cls = type(model.get_submodule(path)) if path else type(model)
    return f"{cls.__module__}.{cls.__qualname__}"
