"""The original is the oracle: check a de-ghosted module against the model it came from.

(a) labelled-graph isomorphism (networkx) between a fresh trace of the original and
    the de-ghosted graph; labels carry op, module path and class (with its
    ``extra_repr``, e.g. ``inplace=True``) or function, and the constant arguments;
    edges carry the argument slot. A model whose forward branches on ``self.training``
    has one graph per mode (``surgery.fx.modes``): each is checked against the original
    traced in that mode;
(b) ``load_state_dict(clean.state_dict(), strict=True)`` into an instance of the
    user's own class;
(c) equal outputs of that instance and the de-ghosted module, in eval mode and in train
    mode (the same random seed for both; buffers a train-mode forward updates are put back);
(d) given the ghosted module: with alpha = 0 and its activations restored, its
    outputs equal the de-ghosted module's.
Each check is also a function of its own; ``verify`` runs them in order and raises
``VerificationError`` with the differences in plain words. For a model compiled with
``submodule=``, (a) runs per compiled submodule against the original's submodule at the
same path, while (b), (c) and (d) take the whole model (outputs may be nested: every
tensor in them is compared, e.g. a detector's boxes, labels and scores).
"""

from __future__ import annotations

import contextlib
import copy
import operator
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import networkx as nx
import torch
from torch import fx, nn

from surgery.fx.collector import collector_paused
from surgery.errors import VerificationError
from surgery.compiler.ghosts import SoftActivation, ghosts, set_ghost_strength
from surgery.fx.graph import (
    as_tuple,
    deepcopy_module,
    detached_attributes,
    device_of,
    inputs_on,
)
from surgery.fx.graph import in_mode as switched  # by flag; verify's in_mode takes a mode name
from surgery.compiler.manifest import compiled_submodules
from surgery.compiler.masks import masked_parameters
from surgery.fx.modes import EVAL, MODES, TRAIN, graphs_by_mode, programs_by_mode
from surgery.compiler.passes.deghost import strip_ghosts
from surgery.fx.tracing import trace_options_of

ATOL = 1e-5


@dataclass
class VerifyReport:
    """What ``verify`` checked and measured. Every check that ran passed: a failure raises instead."""

    nodes: int  # (a): nodes of the original's trace(s), isomorphic to the de-ghosted graph(s)
    outputs_max_abs_diff: float | None = None  # (c) in eval mode; None: not checked (meta device or no inputs)
    train_outputs_max_abs_diff: float | None = None  # (c) in train mode; None: not checked
    train_outputs_unchecked: str = ""  # why (c) did not run in train mode although (c) ran in eval mode
    mode_graphs: int = 1  # 2: the model has one graph per mode and (a) checked both
    ghost_parity_max_abs_diff: float | None = None  # (d); None: no ghosted model given
    atol: float = ATOL
    submodules: list[str] = field(default_factory=list)  # (a) ran on these; empty: on the whole model
    seconds: dict[str, float] = field(default_factory=dict, compare=False)  # wall time per check, by checks()' name

    def checks(self) -> list[dict[str, Any]]:
        """One entry per check that ran: its name, its line of text and its number, if it has one."""
        graphs = f"graphs of {', '.join(self.submodules)}" if self.submodules else "graph"
        modes = " in train and in eval mode" if self.mode_graphs == 2 else ""
        found = [
            {"check": "graph", "text": f"(a) {graphs} isomorphic to the original trace{modes} ({self.nodes} nodes)",
             "nodes": self.nodes},
            {"check": "strict_load", "text": "(b) state_dict loads strictly into the original class"},
        ]
        if self.outputs_max_abs_diff is not None:
            found.append({
                "check": "outputs", "max_abs_diff": self.outputs_max_abs_diff, "atol": self.atol,
                "text": f"(c) outputs equal in eval mode: max |diff| = {self.outputs_max_abs_diff:.3g} <= {self.atol:g}",
            })
        if self.train_outputs_max_abs_diff is not None:
            found.append({
                "check": "train_outputs", "max_abs_diff": self.train_outputs_max_abs_diff, "atol": self.atol,
                "text": f"(c) outputs equal in train mode: max |diff| = {self.train_outputs_max_abs_diff:.3g} "
                        f"<= {self.atol:g}",
            })
        elif self.train_outputs_unchecked:
            found.append({"check": "train_outputs", "text": f"(c) train mode not checked: {self.train_outputs_unchecked}"})
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


@collector_paused
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
    seconds: dict[str, float] = {}
    with _timed(seconds, "graph"):
        nodes = sum(check_part(model, path, part, leaf_modules, concrete_args) for path, part in parts.items())
    with _timed(seconds, "strict_load"):
        fresh = load_into_original(model, clean)
    modes = max(len(graphs_by_mode(part)) for part in parts.values())
    report = VerifyReport(nodes=nodes, atol=atol, submodules=[path for path in parts if path], mode_graphs=modes,
                          seconds=seconds)
    if example_inputs is None or device_of(clean).type == "meta":
        return report
    inputs = as_tuple(example_inputs)
    names = ("the original class", "the de-ghosted module")
    with _timed(seconds, "outputs"):
        report.outputs_max_abs_diff = check_outputs(fresh, clean, inputs, atol, *names)
    with _timed(seconds, "train_outputs"):
        why_not = runs_in_train_mode(fresh, inputs)
        if why_not:
            report.train_outputs_unchecked = why_not
        else:
            report.train_outputs_max_abs_diff = check_outputs(fresh, clean, inputs, atol, *names, mode=TRAIN)
    if ghosted is not None:
        with _timed(seconds, "ghost_parity"):
            report.ghost_parity_max_abs_diff = check_ghost_parity(ghosted, clean, inputs, atol)
    return report


@contextlib.contextmanager
def _timed(seconds: dict[str, float], check: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    seconds[check] = round(time.perf_counter() - started, 4)


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
) -> dict[str, fx.GraphModule]:
    """Trace the original ``model`` in each mode (``surgery.fx.modes.programs_by_mode``) with the options
    ``clean`` was compiled with."""
    options = trace_options_of(clean)
    return programs_by_mode(
        model,
        leaf_modules=options.leaf_modules if leaf_modules is None else leaf_modules,
        concrete_args=options.concrete_args if concrete_args is None else concrete_args,
        autowrap_functions=options.autowrap_functions,
        num_inputs=options.num_inputs,
        specialized_to=options.specialized_to,
    )


def require_clean(clean: nn.Module) -> None:
    held, masked = ghosts(clean), masked_parameters(clean)
    if held or masked:
        raise VerificationError(
            f"the module to verify still holds {len(held)} ghosts and {len(masked)} masks "
            f"(e.g. {[n for n, _ in held[:2]] + list(masked)[:2]}); call surgery.deghost(ghosted) first."
        )


# ----------------------------------------------------------------- (a) the graph


def check_graph(reference: fx.GraphModule | dict[str, fx.GraphModule], clean: fx.GraphModule) -> int:
    """Raise unless the original's trace (or its traces by mode: ``trace_reference``) and the de-ghosted
    graph are isomorphic as labelled graphs; returns the node count.

    Where either has one graph per mode (``surgery.fx.modes``), each mode's graph is checked against
    the other's graph of that mode, and the count is the two modes' nodes together."""
    if isinstance(reference, dict):
        ours = {mode: (gm, gm.graph) for mode, gm in reference.items()}
    else:
        ours = {mode: (reference, graph) for mode, graph in graphs_by_mode(reference).items()}
    theirs = graphs_by_mode(clean)
    if "" in ours and "" in theirs:
        return _check_one(*ours[""], clean, theirs[""], "")
    return sum(_check_one(*ours.get(mode, ours.get("")), clean, theirs.get(mode, theirs.get("")), mode)
               for mode in MODES)


def _check_one(reference: fx.GraphModule, ours: fx.Graph, clean: fx.GraphModule, theirs: fx.Graph, mode: str) -> int:
    a = to_networkx(reference, "the original's fresh trace", ours)
    b = to_networkx(clean, "the de-ghosted graph", theirs)
    if _labels(a) == _labels(b) and a.number_of_edges() == b.number_of_edges() and _isomorphic(a, b):
        return a.number_of_nodes()
    which = f"the de-ghosted graph's {mode}-mode program differs from the original's in {mode} mode" if mode else \
        "the de-ghosted graph differs from the original"
    raise VerificationError(f"{which}:\n" + explain_difference(a, b))


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
    rounds = _refinement_rounds(a, b)
    stable = next(rounds)
    for stable in rounds:  # the last round yielded is the stable colouring
        pass
    return stable


def _refinement_rounds(a: nx.DiGraph, b: nx.DiGraph) -> Iterator[tuple[dict, dict]]:
    """The colours of both graphs by their labels, then after each round of 1-WL until stable."""
    palette: dict[Any, int] = {}
    colours = [{n: palette.setdefault(label, len(palette)) for n, label in g.nodes(data="label")} for g in (a, b)]
    yield colours[0], colours[1]
    # each node's (slot, neighbour) pairs, read from networkx once: its edge views cost more than a round
    ins = [{n: [(edge["slot"], u) for u, edge in g.pred[n].items()] for n in g} for g in (a, b)]
    outs = [{n: [(edge["slot"], v) for v, edge in g.succ[n].items()] for n in g} for g in (a, b)]
    distinct = len(palette)
    while True:
        palette = {}
        colours = [
            {
                n: palette.setdefault(
                    (
                        c[n],
                        tuple(sorted((slot, c[u]) for slot, u in ins_g[n])),
                        tuple(sorted((slot, c[v]) for slot, v in outs_g[n])),
                    ),
                    len(palette),
                )
                for n in c
            }
            for c, ins_g, outs_g in zip(colours, ins, outs)
        ]
        if len(palette) == distinct:
            return
        yield colours[0], colours[1]
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


def to_networkx(gm: fx.GraphModule, which: str = "the graph", program: fx.Graph | None = None) -> nx.DiGraph:
    """Nodes labelled by what they compute; edges by the argument slot they feed. ``program``: a
    graph over ``gm``'s modules other than ``gm.graph`` (one mode's, ``surgery.fx.modes.mode_graph``)."""
    program = gm.graph if program is None else program
    _require_own_nodes(program, which)
    graph = nx.DiGraph()
    for node in program.nodes:
        graph.add_node(node.name, label=node_label(gm, node))
    for node in program.nodes:
        for slot, source in enumerate(node.all_input_nodes):
            graph.add_edge(source.name, node.name, slot=slot)
    return graph


def _require_own_nodes(program: fx.Graph, which: str) -> None:
    """A node fed by a node of another graph computes from a value recorded in an earlier trace:
    a model that caches a value computed in forward (timm's LeViT keeps its attention biases
    in a dict in eval mode) hands its second trace the first trace's proxy."""
    for node in program.nodes:
        for source in node.all_input_nodes:
            if source.graph is not program:
                raise VerificationError(
                    f"{which} feeds `{node.name}` from `{source.name}`, a node of another trace: the model keeps a "
                    "value computed in forward from one call to the next (a cache attribute), so tracing it again "
                    "records the earlier trace's value instead of how it is computed. Empty that cache before each "
                    "trace, compile and verify alike (timm's LeViT: model.train() then model.eval()), or compile and "
                    "verify the model in train mode."
                )


# Labels: (op, module path, class, extra_repr, arguments) for call_module; (op, function, arguments)
# for call_function; (op, method name, arguments) for call_method; (op, target, arguments) for
# get_attr and placeholder; (op, "tensor constant", shape, dtype) for fx's tensor constants;
# (op, arguments) for the output. Arguments are (slot, repr) pairs: slot is the position of a
# positional argument or the name of a keyword; nodes are '%'.


def node_label(gm: fx.GraphModule, node: fx.Node) -> tuple:
    arguments = _arguments(node)
    if node.op == "call_module":
        module = _attribute(gm, node.target)
        if not isinstance(module, nn.Module):
            return (node.op, node.target, _NO_MODULE, "", arguments)
        return (node.op, node.target, type(module).__qualname__, module.extra_repr(), arguments)
    if node.op == "call_function":
        return (node.op, _function_name(node.target), arguments)
    value = _attribute(gm, node.target) if node.op == "get_attr" else None
    if torch.is_tensor(value) and node.target.startswith("_tensor_constant"):  # name is fx's counter
        return (node.op, "tensor constant", tuple(value.shape), str(value.dtype).removeprefix("torch."))
    if node.op in ("call_method", "get_attr", "placeholder"):
        return (node.op, str(node.target), arguments)
    return (node.op, arguments)


_NO_MODULE = "which the graph module does not hold"


def _arguments(node: fx.Node) -> tuple[tuple[int | str, str], ...]:
    """Every argument as (slot, repr), input nodes as '%': constants compare, inputs are edges."""
    args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda _: _NODE)
    return tuple(enumerate(map(repr, args))) + tuple((key, repr(value)) for key, value in kwargs.items())


class _NodeMarker:
    def __repr__(self) -> str:
        return "%"


_NODE = _NodeMarker()


def _attribute(root: nn.Module, target: str) -> Any:
    """The attribute at the dotted path ``target`` of ``root``; None where there is none."""
    value: Any = root
    for name in str(target).split("."):
        value = getattr(value, name, None)
    return value


def _function_name(fn: Any) -> str:
    """Where users call it from: torch.add (not torch._C._VariableFunctions.add), operator.add."""
    short = getattr(fn, "__name__", None)
    for home in (torch, operator):
        if short and getattr(home, short, None) is fn:
            return f"{home.__name__}.{short}"
    module = getattr(fn, "__module__", None) or type(fn).__module__
    return f"{module}.{getattr(fn, '__qualname__', None) or short or repr(fn)}"


def explain_difference(original: nx.DiGraph, clean: nx.DiGraph, limit: int = 12) -> str:
    """Plain words naming the nodes that differ: changed, missing, extra or wired differently;
    where no single node does, where the graphs first diverge as a whole."""
    lines = _label_differences(original, clean) or _wiring_differences(original, clean)
    if not lines:
        lines = [_first_divergence(original, clean)]
    extra = f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + extra


def _labels(graph: nx.DiGraph) -> Counter:
    return Counter(label for _, label in graph.nodes(data="label"))


def _label_differences(original: nx.DiGraph, clean: nx.DiGraph) -> list[str]:
    """Labels on one side only. A node whose name both graphs hold with a label of each kind is
    most likely one node changed in place (names survive the passes), so it is told as a change."""
    missing, extra = _labels(original) - _labels(clean), _labels(clean) - _labels(original)
    lines = []
    for name, old in original.nodes(data="label"):
        new = clean.nodes[name]["label"] if name in clean else None
        if missing[old] > 0 and extra[new] > 0:
            lines.append(f"  ~ `{name}` changed: {_change(old, new)}")
            missing[old] -= 1
            extra[new] -= 1
    for label, count in (+missing).items():
        lines.append(f"  - missing after de-ghosting: {describe(label)}{_at(original, clean, label, count)}")
    for label, count in (+extra).items():
        lines.append(f"  + only in the de-ghosted graph: {describe(label)}{_at(clean, original, label, count)}")
    return lines


def _change(old: tuple, new: tuple) -> str:
    """What changed between two labels of one node."""
    if _shape(old) == _shape(new) and _shape(old) in _WITH_ARGUMENTS and old[:-1] == new[:-1]:
        return f"{describe(old)}: {_changed_arguments(old[-1], new[-1])}"
    return f"{describe(old)} in the original, {describe(new)} after de-ghosting"


def _changed_arguments(old: tuple, new: tuple) -> str:
    """'argument 2 from 1 to 2, `dim` from 1 to 0', arguments dropped or added included."""
    before, after = dict(old), dict(new)
    changes = []
    for slot in list(before) + [s for s in after if s not in before]:
        name = f"argument {slot + 1}" if isinstance(slot, int) else f"`{slot}`"
        if slot not in after:
            changes.append(f"{name} ({before[slot]}) dropped")
        elif slot not in before:
            changes.append(f"{name} ({after[slot]}) added")
        elif before[slot] != after[slot]:
            changes.append(f"{name} from {before[slot]} to {after[slot]}")
    return ", ".join(changes) + " after de-ghosting"


def _at(graph: nx.DiGraph, other: nx.DiGraph, label: tuple, count: int) -> str:
    """' at `relu`' (or ' (x2: `a`, `b`)'): the nodes of ``graph`` with ``label``, those whose
    name ``other`` does not hold with that label first (the likely extra ones)."""
    names = [n for n, lab in graph.nodes(data="label") if lab == label]
    names.sort(key=lambda n: n in other and other.nodes[n]["label"] == label)
    listed = ", ".join(f"`{n}`" for n in names[:count])
    return f" at {listed}" if count == 1 else f" (x{count}: {listed})"


def _wiring_differences(original: nx.DiGraph, clean: nx.DiGraph) -> list[str]:
    """Same nodes, different inputs: which node takes which inputs in each graph."""
    before, after = _signatures(original), _signatures(clean)
    only_before = Counter(before.values()) - Counter(after.values())
    only_after = Counter(after.values()) - Counter(before.values())
    lines = []
    for label in dict.fromkeys(label for label, _ in only_before):
        old = [inputs for lab, inputs in only_before.elements() if lab == label]
        new = [inputs for lab, inputs in only_after.elements() if lab == label]
        names = [n for n, signature in before.items() if signature in only_before and signature[0] == label]
        lines += [
            f"  ~ `{name}` ({describe(label)}) takes inputs [{', '.join(a)}] in the original, "
            f"[{', '.join(b)}] after de-ghosting"
            for name, a, b in zip(names, old, new)
        ]
    return lines


def _signatures(graph: nx.DiGraph) -> dict[str, tuple]:
    """Each node's label and its inputs' short labels in slot order."""
    return {n: (label, tuple(_inputs(graph, n))) for n, label in graph.nodes(data="label")}


def _inputs(graph: nx.DiGraph, name: str) -> list[str]:
    """The short labels of the nodes ``name`` takes, in slot order."""
    edges = sorted(graph.in_edges(name, data="slot"), key=lambda edge: edge[2])
    return [_short(graph.nodes[source]["label"]) for source, _, _ in edges]


def _first_divergence(original: nx.DiGraph, clean: nx.DiGraph) -> str:
    """Same nodes with the same inputs, yet not isomorphic: name the first node (in graph order)
    whose neighbourhood has no counterpart, at the first round of colour refinement that tells."""
    intro = "  the graphs hold the same nodes with the same kinds of inputs but differ as a whole"
    for colours_a, colours_b in _refinement_rounds(original, clean):
        counts_a, counts_b = Counter(colours_a.values()), Counter(colours_b.values())
        for name in original:
            if counts_a[colours_a[name]] != counts_b[colours_a[name]]:
                return (
                    f"{intro}; they first diverge at `{name}` ({describe(original.nodes[name]['label'])}): "
                    f"{_wiring(original, name)} in the original, no node is wired like it after de-ghosting"
                )
    tied = [f"`{name}`" for name, colour in colours_a.items() if counts_a[colour] > 1]
    return f"{intro}: nodes alike in every neighbourhood ({', '.join(tied[:6])}) are joined differently"


def _wiring(graph: nx.DiGraph, name: str) -> str:
    """'it takes [conv] and feeds [torch.add (argument 2)]'."""
    feeds = [
        f"{_short(graph.nodes[user]['label'])} (argument {slot + 1})"
        for _, user, slot in graph.out_edges(name, data="slot")
    ]
    return f"it takes [{', '.join(_inputs(graph, name))}] and feeds [{', '.join(feeds)}]"


def describe(label: Any) -> str:
    """Plain words for every label ``node_label`` makes; anything else as its repr."""
    words = _DESCRIPTIONS.get(_shape(label))
    return words(*label[1:]) if words else repr(label)


def _shape(label: Any) -> tuple[str, int] | None:
    """(op, length): which kind of label this is."""
    if isinstance(label, tuple) and label and isinstance(label[0], str):
        return label[0], len(label)
    return None


def _call(arguments: tuple) -> str:
    """'(%, 1, dim=0)'."""
    return "(" + ", ".join(value if isinstance(slot, int) else f"{slot}={value}" for slot, value in arguments) + ")"


def _method_call(name: str, arguments: tuple) -> str:
    """'%.view(1, -1)': the first argument is the object the method is called on."""
    if not arguments:
        return f".{name}()"
    return f"{arguments[0][1]}.{name}{_call(arguments[1:])}"


def _placeholder(target: str, arguments: tuple) -> str:
    """'input `x`', with its default where it has one."""
    return f"input `{target}`" + (f" (default {arguments[0][1]})" if arguments else "")


def _module(path: str, cls: str, extra: str, arguments: tuple) -> str:
    if cls == _NO_MODULE:
        return f"module `{path}` ({cls})"
    return f"module `{path}` ({cls}({extra}))"


_DESCRIPTIONS = {
    ("placeholder", 3): _placeholder,
    ("get_attr", 3): lambda target, _: f"attribute `{target}`",
    ("get_attr", 4): lambda _, shape, dtype: f"tensor constant of shape {shape} ({dtype})",
    ("call_function", 3): lambda function, arguments: f"call {function}{_call(arguments)}",
    ("call_method", 3): lambda name, arguments: f"method {_method_call(name, arguments)}",
    ("call_module", 5): _module,
    ("output", 2): lambda arguments: "the output " + (arguments[0][1] if arguments else "()"),
}
_WITH_ARGUMENTS = {shape for shape in _DESCRIPTIONS if shape != ("get_attr", 4)}


def _short(label: Any) -> str:
    """A label in a word or two, for lists of inputs."""
    shape = _shape(label)
    if shape == ("get_attr", 4):
        return f"tensor constant {label[2]}"
    if shape in _DESCRIPTIONS:
        return str(label[1]) if shape[1] > 2 else label[0]
    return repr(label)


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
def check_outputs(
    a: nn.Module, b: nn.Module, inputs: Sequence[Any], atol: float = ATOL, a_name="a", b_name="b", mode: str = EVAL
) -> float:
    """Max |a(x) - b(x)| in ``mode`` over every output tensor; raises beyond ``atol``. In train mode
    both run from the same random seed, and the buffers the forwards update (BatchNorm's running
    statistics, which ``a`` and ``b`` may share) are put back afterwards."""
    x = inputs_on(device_of(b), inputs)
    with in_mode(mode, a, b), buffers_kept(a, b):
        out_a, out_b = _tensors(seeded(a, x)), _tensors(seeded(b, x))
    if [p for p, _ in out_a] != [p for p, _ in out_b]:
        raise VerificationError(
            f"in {mode} mode {a_name} and {b_name} return differently structured outputs: "
            f"{[p or 'one tensor' for p, _ in out_a]} vs {[p or 'one tensor' for p, _ in out_b]}."
        )
    worst = 0.0
    for (path, ta), (_, tb) in zip(out_a, out_b):
        if ta.shape != tb.shape:
            raise VerificationError(f"output{path} in {mode} mode: shape {tuple(ta.shape)} from {a_name}, "
                                    f"{tuple(tb.shape)} from {b_name}")
        diff = _max_abs_diff(ta, tb)
        if not diff <= atol:  # NaN fails too
            raise VerificationError(
                f"output{path} of {a_name} and {b_name} differ in {mode} mode: max |diff| = {diff:.3g} > {atol:g}"
            )
        worst = max(worst, diff)
    return worst


@torch.no_grad()
def runs_in_train_mode(model: nn.Module, inputs: Sequence[Any]) -> str:
    """'' when ``model`` runs in train mode on ``inputs``, else why not (a BatchNorm given one value
    per channel): the original failing there leaves nothing to compare."""
    try:
        with in_mode(TRAIN, model), buffers_kept(model):
            seeded(model, inputs_on(device_of(model), inputs))
    except Exception as error:  # the user's own model, on the user's inputs
        return f"the original raises {type(error).__name__} in train mode on these inputs ({str(error).splitlines()[0]})"
    return ""


def in_mode(mode: str, *modules: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Temporarily ``.train()`` or ``.eval()`` the modules, each submodule's own flag put back afterwards."""
    return switched(mode == TRAIN, *modules)


@contextlib.contextmanager
def buffers_kept(*modules: nn.Module) -> Iterator[None]:
    saved = {id(b): (b, b.clone()) for module in modules for b in module.buffers()}
    try:
        yield
    finally:
        for buffer, value in saved.values():
            buffer.copy_(value)


def seeded(model: nn.Module, inputs: tuple, seed: int = 0) -> Any:
    """``model(*inputs)`` with every random generator it may draw from (dropout) seeded alike."""
    device = device_of(model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
        torch.manual_seed(seed)
        return model(*inputs)


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
