"""What a specialized graph was traced for: each input's shape (the batch dimension possibly free) and dtype.

``Specialization`` is kept in a graph's trace options (so ``verify`` traces the original the same
way) and in the manifest; ``check_traced_input`` is the first node of such a graph for each input,
refusing another shape or dtype with a ``SpecializedInputError``. The tracing itself is
``surgery.fx.concrete``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from surgery.errors import SpecializedInputError

META = torch.device("meta")


@dataclass(frozen=True)
class InputSpec:
    """One tensor input's traced shape (None in a dimension: any size, the free batch) and dtype."""

    shape: tuple[int | None, ...]
    dtype: torch.dtype

    def describe(self) -> str:
        dims = ", ".join("*" if d is None else str(d) for d in self.shape)
        return f"[{dims}] {str(self.dtype).removeprefix('torch.')}"

    def example(self, batch: int) -> torch.Tensor:
        """A meta tensor of this shape (``batch`` in a free dimension) and dtype."""
        return torch.empty([batch if d is None else d for d in self.shape], dtype=self.dtype, device=META)


@dataclass(frozen=True)
class Specialization:
    """The shapes and dtypes a specialized graph was traced for: one ``InputSpec`` per positional input
    (None: not a tensor; the trace has no value for it). ``batch``: the size the free dimensions take."""

    inputs: tuple[InputSpec | None, ...]
    batch: int

    @classmethod
    def of(cls, example_inputs: Sequence[Any]) -> Specialization:
        """The example inputs' shapes and dtypes, every dimension fixed."""
        specs = tuple(InputSpec(tuple(x.shape), x.dtype) if torch.is_tensor(x) else None for x in example_inputs)
        return cls(specs, _shared_batch(specs) or 0)

    def batch_free(self) -> Specialization:
        """The same inputs with dimension 0 free (the batch), at the example's batch size."""
        return Specialization(tuple(InputSpec((None, *s.shape[1:]), s.dtype) if s else None for s in self.inputs),
                              self.batch)

    def at_batch(self, batch: int) -> Specialization:
        return Specialization(self.inputs, batch)

    def examples(self) -> list[Any]:
        return [spec.example(self.batch) if spec else None for spec in self.inputs]

    def describe(self) -> list[str]:
        """e.g. ['input 0: [*, 3, 32, 32] float32']"""
        return [f"input {i}: {spec.describe()}" for i, spec in enumerate(self.inputs) if spec]


def _shared_batch(specs: Sequence[InputSpec | None]) -> int | None:
    """Dimension 0 of the tensor inputs, where they all have one and agree on it."""
    sizes = {s.shape[0] if s.shape else None for s in specs if s}
    return next(iter(sizes)) if len(sizes) == 1 and None not in sizes else None


def check_traced_input(x: Any, index: int, shape: tuple[int | None, ...], dtype: torch.dtype) -> Any:
    """The graph's first node for each specialized input: ``x`` itself where it has the traced shape
    and dtype; otherwise a ``SpecializedInputError``, since the graph's numbers hold for that shape only."""
    if torch.is_tensor(x) and x.dtype == dtype and x.dim() == len(shape) and all(
        want is None or want == got for want, got in zip(shape, x.shape)
    ):
        return x
    traced = InputSpec(shape, dtype).describe()
    got = InputSpec(tuple(x.shape), x.dtype).describe() if torch.is_tensor(x) else type(x).__name__
    raise SpecializedInputError(
        f"input {index} is {got}, but this model's graph was traced specialized to input {index} of {traced} "
        "(its forward computes with the input's shape or dtype in Python, so the graph holds the branches and "
        "numbers of that shape; '*' is free). Fix: compile (or trace) with an example input of the shape and "
        "dtype you will train and run on."
    )
