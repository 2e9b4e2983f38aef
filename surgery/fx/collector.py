"""Python's cyclic garbage collector held off while surgery builds and checks graphs.

A compile, a de-ghost or a verify makes tens of thousands of short-lived objects (fx nodes, the
snapshots of a model's Python state that each trace keeps). Each few hundred allocations the
collector runs, and every so often it walks every object the process holds (torch, the model,
transformers): on the zoo's larger models that was a fifth to a third of compile + verify. What
the work leaves for the collector is collected at its next run after this returns.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def collector_paused(function: F) -> F:
    """``function`` with the collector off while it runs (left off where the caller had it off)."""

    @functools.wraps(function)
    def paused(*args: Any, **kwargs: Any) -> Any:
        was_on = gc.isenabled()
        gc.disable()
        try:
            return function(*args, **kwargs)
        finally:
            if was_on:
                gc.enable()

    return paused  # type: ignore[return-value]
