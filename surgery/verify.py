"""The original is the oracle: check a de-ghosted module against the model it came from.

(a) labelled-graph isomorphism (networkx) between a fresh trace of the original and
    the de-ghosted graph; labels carry op, module path and class (with its
    ``extra_repr``, e.g. ``inplace=True``) or function, and the constant arguments;
    edges carry the argument slot;
(b) ``load_state_dict(clean.state_dict(), strict=True)`` into an instance of the
    user's own class;
(c) equal outputs of that instance and the de-ghosted module (eval mode);
(d) given the ghosted module: with alpha = 0 and its activations restored, its
    outputs equal the de-ghosted module's.
Each check is also a function of its own; ``verify`` runs them in order and raises
``VerificationError`` with the differences in plain words. For a model compiled with
``submodule=``, (a) runs per compiled submodule against the original's submodule at the
same path, while (b), (c) and (d) take the whole model (outputs may be nested: every
tensor in them is compared, e.g. a detector's boxes, labels and scores).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import networkx as nx
import torch
from torch import fx, nn

from surgery.errors import VerificationError
from surgery.ghosts import SoftActivation, ghosts, set_ghost_strength
from surgery.graph import (
    as_tuple,
    deepcopy_module,
    detached_attributes,
    device_of,
    eval_mode,
    inputs_on,
)
from surgery.manifest import compiled_submodules
from surgery.masks import masked_parameters
from surgery.passes.deghost import strip_ghosts
from surgery.tracing import trace, trace_options_of

ATOL = 1e-5


@dataclass
class VerifyReport:
    """What ``verify`` checked and measured. Every check that ran passed: a failure raises instead."""

    nodes: int  # (a): nodes of the original's trace, isomorphic to the de-ghosted graph
    outputs_max_abs_diff: float | None = None  # (c); None: not checked (meta device or no inputs)
    ghost_parity_max_abs_diff: float | None = None  # (d); None: no ghosted model given
    atol: float = ATOL
    submodules: list[str] = field(default_factory=list)  # (a) ran on these; empty: on the whole model

    def checks(self) -> list[dict[str, Any]]:
        """One entry per check that ran: its name, its line of text and its number, if it has one."""
        graphs = f"graphs of {', '.join(self.submodules)}" if self.submodules else "graph"
        found = [
            {"check": "graph", "text": f"(a) {graphs} isomorphic to the original trace ({self.nodes} nodes)",
             "nodes": self.nodes},
            {"check": "strict_load", "text": "(b) state_dict loads strictly into the original class"},
        ]
        if self.outputs_max_abs_diff is not None:
            found.append({
                "check": "outputs", "max_abs_diff": self.outputs_max_abs_diff, "atol": self.atol,
                "text": f"(c) outputs equal: max |diff| = {self.outputs_max_abs_diff:.3g} <= {self.atol:g}",
            })
        if self.ghost_parity_max_abs_diff is not None:
            found.append({
                "check": "ghost_parity", "max_abs_diff": self.ghost_parity_max_abs_diff, "atol": self.atol,
                "text": "(d) ghosted at alpha=0 with activations restored equals it: max |diff| = "
                        f"{self.ghost_parity_max_abs_diff:.3g}",
            })
        return found

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``passed`` (always True: a failed check raises), the numbers and every check's text."""
        return {"passed": True, **asdict(self), "checks": self.checks()}

    def __str__(self) -> str:
        return "\n".join(check["text"] for check in self.checks())


def verify(
    model: nn.Module,
    clean: nn.Module,
    example_inputs: Any = None,
    *,
    ghosted: nn.Module | None = None,
    atol: float = ATOL,
    leaf_modules: Sequence[Any] | None = None,
    concrete_args: dict[str, Any] | None = None,
) -> VerifyReport:
    """Check ``clean`` against ``model``; returns a report or raises ``VerificationError``.

    The original is traced with the options ``clean`` was compiled with (override with
    ``leaf_modules`` / ``concrete_args``). Numeric checks need ``example_inputs`` and a
    model that is not on the meta device.

    ``clean`` may be the user's model with compiled submodules (``surgery.compile(...,
    submodule=...)`` then ``surgery.deghost``): each is checked against ``model``'s submodule
    at its path, and the whole model's state_dict and outputs against ``model``'s.
    """
    require_clean(clean)
    parts = compiled_submodules(clean)
    if not parts:
        raise VerificationError(f"{type(clean).__name__} holds no module made by surgery.compile: nothing to verify.")
    nodes = sum(check_part(model, path, part, leaf_modules, concrete_args) for path, part in parts.items())
    fresh = load_into_original(model, clean)
    report = VerifyReport(nodes=nodes, atol=atol, submodules=[path for path in parts if path])
    if example_inputs is None or device_of(clean).type == "meta":
        return report
    inputs = as_tuple(example_inputs)
    report.outputs_max_abs_diff = check_outputs(fresh, clean, inputs, atol, "the original class", "the de-ghosted module")
    if ghosted is not None:
        report.ghost_parity_max_abs_diff = check_ghost_parity(ghosted, clean, inputs, atol)
    return report


def check_part(
    model: nn.Module,
    path: str,
    clean: fx.GraphModule,
    leaf_modules: Sequence[Any] | None = None,
    concrete_args: dict[str, Any] | None = None,
) -> int:
    """(a) for the compiled part at ``path`` ('' is the whole model); returns its node count."""
    if not path:
        return check_graph(trace_reference(model, clean, leaf_modules, concrete_args), clean)
    try:
        original = model.get_submodule(path)
    except AttributeError:
        raise VerificationError(f"the original {type(model).__name__} has no submodule '{path}', which the "
                                "de-ghosted model compiled: was it made from another model?") from None
    try:
        return check_graph(trace_reference(original, clean, leaf_modules, concrete_args), clean)
    except VerificationError as error:
        raise VerificationError(f"submodule '{path}': {error}") from error


def trace_reference(
    model: nn.Module,
    clean: fx.GraphModule,
    leaf_modules: Sequence[Any] | None = None,
    concrete_args: dict[str, Any] | None = None,
) -> fx.GraphModule:
    """Trace the original ``model`` with the options ``clean`` was compiled with."""
    options = trace_options_of(clean)
    return trace(
        model,
        options.leaf_modules if leaf_modules is None else leaf_modules,
        options.concrete_args if concrete_args is None else concrete_args,
        options.autowrap_functions,
        options.num_inputs,
    )


def require_clean(clean: nn.Module) -> None:
    held, masked = ghosts(clean), masked_parameters(clean)
    if held or masked:
        raise VerificationError(
            f"the module to verify still holds {len(held)} ghosts and {len(masked)} masks "
            f"(e.g. {[n for n, _ in held[:2]] + list(masked)[:2]}); call surgery.deghost(ghosted) first."
        )


# ----------------------------------------------------------------- (a) the graph


def check_graph(reference: fx.GraphModule, clean: fx.GraphModule) -> int:
    """Raise unless the two graphs are isomorphic as labelled graphs; returns the node count."""
    a, b = to_networkx(reference), to_networkx(clean)
    if _labels(a) == _labels(b) and a.number_of_edges() == b.number_of_edges() and _isomorphic(a, b):
        return a.number_of_nodes()
    raise VerificationError("the de-ghosted graph differs from the original:\n" + explain_difference(a, b))


def _isomorphic(a: nx.DiGraph, b: nx.DiGraph) -> bool:
    """Colour refinement first: unique module paths anchor nearly every node of a network, so
    the colours usually fix the only possible mapping and checking its edges decides. Only
    classes of truly interchangeable nodes go to VF2++ (which alone can backtrack for ages)."""
    colours_a, colours_b = _refined_colours(a, b)
    if Counter(colours_a.values()) != Counter(colours_b.values()):
        return False
    if len(set(colours_a.values())) == a.number_of_nodes():
        mapping = {colour: node for node, colour in colours_b.items()}
        return all(
            b.has_edge(mapping[colours_a[u]], mapping[colours_a[v]])
            and b.edges[mapping[colours_a[u]], mapping[colours_a[v]]]["slot"] == slot
            for u, v, slot in a.edges(data="slot")
        )
    split_a, split_b = _edges_as_nodes(a, colours_a), _edges_as_nodes(b, colours_b)
    return nx.vf2pp_is_isomorphic(split_a, split_b, node_label="label")


def _refined_colours(a: nx.DiGraph, b: nx.DiGraph) -> tuple[dict, dict]:
    """1-WL refinement of both graphs together (so colours compare across them), edges by slot."""
    palette: dict[Any, int] = {}
    colours = [{n: palette.setdefault(label, len(palette)) for n, label in g.nodes(data="label")} for g in (a, b)]
    distinct = len(palette)
    while True:
        palette = {}
        colours = [
            {
                n: palette.setdefault(
                    (
                        c[n],
                        tuple(sorted((slot, c[u]) for u, _, slot in g.in_edges(n, data="slot"))),
                        tuple(sorted((slot, c[v]) for _, v, slot in g.out_edges(n, data="slot"))),
                    ),
                    len(palette),
                )
                for n in g.nodes
            }
            for g, c in zip((a, b), colours)
        ]
        if len(palette) == distinct:
            return colours[0], colours[1]
        distinct = len(palette)


def _edges_as_nodes(graph: nx.DiGraph, colours: dict) -> nx.DiGraph:
    """Nodes labelled by colour, each edge subdivided by a node labelled with its slot:
    edge-labelled isomorphism becomes node-labelled, which VF2++ decides."""
    split = nx.DiGraph()
    split.add_nodes_from((n, {"label": ("node", colours[n])}) for n in graph.nodes)
    for source, target, slot in graph.edges(data="slot"):
        middle = (source, target)
        split.add_node(middle, label=("slot", slot))
        split.add_edge(source, middle)
        split.add_edge(middle, target)
    return split


def to_networkx(gm: fx.GraphModule) -> nx.DiGraph:
    """Nodes labelled by what they compute; edges by the argument slot they feed."""
    graph = nx.DiGraph()
    for node in gm.graph.nodes:
        graph.add_node(node.name, label=node_label(gm, node))
    for node in gm.graph.nodes:
        for slot, source in enumerate(node.all_input_nodes):
            graph.add_edge(source.name, node.name, slot=slot)
    return graph


def node_label(gm: fx.GraphModule, node: fx.Node) -> tuple:
    constants = repr(fx.node.map_arg((node.args, node.kwargs), lambda _: _NODE))
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        return (node.op, node.target, type(module).__qualname__, module.extra_repr(), constants)
    if node.op == "call_function":
        return (node.op, _function_name(node.target), constants)
    if node.op == "get_attr" and node.target.startswith("_tensor_constant"):  # name is fx's counter
        value = getattr(gm, node.target)
        return (node.op, "tensor constant", tuple(value.shape), str(value.dtype))
    if node.op in ("call_method", "get_attr", "placeholder"):
        return (node.op, node.target, constants)
    return (node.op, constants)


class _NodeMarker:
    def __repr__(self) -> str:
        return "%"


_NODE = _NodeMarker()


def _function_name(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or type(fn).__module__
    return f"{module}.{getattr(fn, '__qualname__', getattr(fn, '__name__', repr(fn)))}"


def explain_difference(original: nx.DiGraph, clean: nx.DiGraph, limit: int = 12) -> str:
    """Plain-words list of nodes present on one side only, or wired differently."""
    lines: list[str] = []
    ref, cln = _labels(original), _labels(clean)
    for label, count in (ref - cln).items():
        lines.append(f"  - missing after de-ghosting: {describe(label)}" + (f" (x{count})" if count > 1 else ""))
    for label, count in (cln - ref).items():
        lines.append(f"  + only in the de-ghosted graph: {describe(label)}" + (f" (x{count})" if count > 1 else ""))
    if not lines:
        ref_sig, cln_sig = _signatures(original), _signatures(clean)
        for label, inputs in ref_sig - cln_sig:
            lines.append(f"  ~ {describe(label)} takes inputs [{', '.join(inputs)}] in the original")
        for label, inputs in cln_sig - ref_sig:
            lines.append(f"  ~ {describe(label)} takes inputs [{', '.join(inputs)}] after de-ghosting")
    if not lines:
        lines.append("  the graphs hold the same nodes and wiring locally but are not isomorphic as a whole")
    extra = f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + extra


def _labels(graph: nx.DiGraph) -> Counter:
    return Counter(label for _, label in graph.nodes(data="label"))


def _signatures(graph: nx.DiGraph) -> Counter:
    def inputs(n):
        edges = sorted(graph.in_edges(n, data="slot"), key=lambda e: e[2])
        return tuple(_short(graph.nodes[src]["label"]) for src, _, _ in edges)

    return Counter((label, inputs(n)) for n, label in graph.nodes(data="label"))


def describe(label: tuple) -> str:
    op = label[0]
    if op == "call_module":
        _, target, cls, extra, _ = label
        return f"module `{target}` ({cls}{'(' + extra + ')' if extra else ''})"
    if op == "call_function":
        return f"call {label[1]}{label[2]}"
    if op == "call_method":
        return f"method .{label[1]}{label[2]}"
    if op == "get_attr":
        return f"attribute `{label[1]}`"
    if op == "placeholder":
        return f"input `{label[1]}`"
    return "the output " + label[-1]


def _short(label: tuple) -> str:
    return label[1] if len(label) > 2 else label[0]


# ------------------------------------------------------- (b) strict state_dict load


def load_into_original(model: nn.Module, clean: nn.Module) -> nn.Module:
    """An instance of ``model``'s own class holding ``clean``'s weights, loaded with strict=True.

    The instance is a structural copy of ``model`` whose tensors are then assigned from
    ``clean`` (no weight is copied twice, the user's model is untouched).
    """
    fresh = _structural_copy(model)
    try:
        fresh.load_state_dict(clean.state_dict(), strict=True, assign=True)
    except RuntimeError as error:
        raise VerificationError(
            f"the de-ghosted state_dict does not load strictly into {type(model).__qualname__}:\n{error}"
        ) from error
    return fresh


def _structural_copy(model: nn.Module) -> nn.Module:
    """deepcopy with every state_dict tensor replaced by an empty meta tensor of its shape."""
    memo: dict[int, Any] = detached_attributes(model)
    for module in model.modules():
        for param in module._parameters.values():
            if param is not None and id(param) not in memo:
                memo[id(param)] = nn.Parameter(torch.empty_like(param, device="meta"), param.requires_grad)
        for name, buf in module._buffers.items():
            if buf is not None and id(buf) not in memo:
                persistent = name not in module._non_persistent_buffers_set
                memo[id(buf)] = torch.empty_like(buf, device="meta") if persistent else buf
    return copy.deepcopy(model, memo)


# ------------------------------------------------------------- (c), (d) numerics


@torch.no_grad()
def check_outputs(a: nn.Module, b: nn.Module, inputs: Sequence[Any], atol: float = ATOL, a_name="a", b_name="b") -> float:
    """Max |a(x) - b(x)| in eval mode over every output tensor; raises beyond ``atol``."""
    x = inputs_on(device_of(b), inputs)
    with eval_mode(a, b):
        out_a, out_b = _tensors(a(*x)), _tensors(b(*x))
    if [p for p, _ in out_a] != [p for p, _ in out_b]:
        raise VerificationError(
            f"in eval mode {a_name} and {b_name} return differently structured outputs: "
            f"{[p or 'one tensor' for p, _ in out_a]} vs {[p or 'one tensor' for p, _ in out_b]}. "
            "A model whose Python code branches on self.training (aux heads: GoogLeNet, Inception) "
            "keeps the branch of the mode it was traced in; compile it in eval mode (model.eval()) "
            "for a graph with its inference outputs."
        )
    worst = 0.0
    for (path, ta), (_, tb) in zip(out_a, out_b):
        if ta.shape != tb.shape:
            raise VerificationError(f"output{path}: shape {tuple(ta.shape)} from {a_name}, {tuple(tb.shape)} from {b_name}")
        diff = _max_abs_diff(ta, tb)
        if not diff <= atol:  # NaN fails too
            raise VerificationError(
                f"output{path} of {a_name} and {b_name} differ: max |diff| = {diff:.3g} > {atol:g}"
            )
        worst = max(worst, diff)
    return worst


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max |a - b|, where equal non-finite values (same NaN / inf positions) count as equal."""
    a, b = a.double(), b.double()
    same = (a == b) | (a.isnan() & b.isnan())
    if bool(same.all()):
        return 0.0
    return (a - b).abs().masked_fill(same, 0).max().item()


def _tensors(output: Any, path: str = "") -> list[tuple[str, torch.Tensor]]:
    if torch.is_tensor(output):
        return [(path, output)]
    if isinstance(output, dict):
        return [t for k in output for t in _tensors(output[k], f"{path}[{k!r}]")]
    if isinstance(output, (tuple, list)):
        return [t for i, o in enumerate(output) for t in _tensors(o, f"{path}[{i}]")]
    return []


def check_ghost_parity(ghosted: nn.Module, clean: nn.Module, inputs: Sequence[Any], atol: float = ATOL) -> float:
    """(d): a copy of ``ghosted`` at alpha = 0 with activations restored must equal ``clean``."""
    probe = deepcopy_module(ghosted)
    if ghosts(probe):  # a masks-only compile has none: nothing to fade
        set_ghost_strength(probe, alpha=0.0)
    for part in compiled_submodules(probe).values():
        strip_ghosts(part, SoftActivation)
    return check_outputs(probe, clean, inputs, atol, "the ghosted module (alpha=0, activations restored)", "the de-ghosted module")
