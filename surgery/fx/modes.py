"""One graph per mode: a forward that branches on ``self.training`` in Python.

fx records the branch the forward took while traced, so a model whose Python code reads
``self.training`` (GoogLeNet's and Inception v3's aux heads, a user's ``if self.training:``)
traces into a different graph in train and in eval mode. ``trace_modes`` traces both. Where
they are the same program, it returns the one trace, unchanged. Where they differ, it returns
a ``ModeGraphModule``: one *union* graph holding both programs, each node they share once and
every other node tagged with the mode it belongs to (``node.meta[MODE_KEY]``). The passes run
on the union once, so a site both modes reach gets one ghost and every mask, ghost and weight
is one object, with one state_dict. The module generates one forward per mode
(``mode_graph``) and runs the one that matches ``.train()`` / ``.eval()``; ``surgery.verify``
checks each against the original traced in that mode.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import linecache
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import fx, nn

from surgery import advice
from surgery.errors import ModeError, SurgeryError, TraceError
from surgery.fx.graph import deepcopy_module
from surgery.fx.python_state import first_few
from surgery.fx.branches import branches
from surgery.fx.specialization import Specialization
from surgery.fx.tracer import FRAMES_KEY
from surgery.fx.tracing import TRACE_OPTIONS_KEY, mirror_module_tree, needs_concrete_values, trace

TRAIN, EVAL = "train", "eval"
MODES = (TRAIN, EVAL)
MODE_KEY = "surgery.mode"  # node.meta: the one mode a node runs in; absent: both
BRANCHES_KEY = "surgery.mode_branches"  # gm.meta: where the forward branches (surgery.fx.branches.Branch)
SWITCHES_KEY = "surgery.mode_switches"  # gm.meta: submodules whose own forward branches, by path


def mode_of(training: bool) -> str:
    return TRAIN if training else EVAL


def trace_modes(
    model: nn.Module,
    leaf_modules: Sequence[Any] = (),
    concrete_args: dict[str, Any] | None = None,
    autowrap_functions: Sequence[Any] = (),
    num_inputs: int | None = None,
    specialized_to: Specialization | None = None,
    example_inputs: Sequence[Any] | None = None,
) -> fx.GraphModule:
    """``surgery.trace`` in both modes: the trace when both modes run one program, else a
    ``ModeGraphModule`` holding both. Raises ``TraceError`` when the two traces hold different
    parameters or buffers (a module whose ``train()`` rebuilds it): one state_dict cannot serve both.

    Given ``example_inputs``, a model fx cannot trace because its Python code needs a concrete value
    (``int(x.shape[-1])``, ``if x.dtype != ...``) is traced again specialized to their shapes and
    dtypes (``surgery.fx.concrete``); ``specialized_to`` traces that way from the start."""
    options = dict(leaf_modules=leaf_modules, concrete_args=concrete_args, autowrap_functions=autowrap_functions,
                   num_inputs=num_inputs, specialized_to=specialized_to)
    switched = switched_models(model)
    try:
        return _trace_modes(model, switched, options)
    except TraceError as error:
        if example_inputs is None or specialized_to is not None or not needs_concrete_values(error):
            raise
    options["specialized_to"], traces = specialized_traces(switched, example_inputs, options)
    return _trace_modes(model, switched, options, traces)


def specialized_traces(
    switched: dict[str, nn.Module], example_inputs: Sequence[Any], options: dict[str, Any]
) -> tuple[Specialization, dict[str, fx.GraphModule] | None]:
    """The example inputs' shapes and dtypes, with the batch free where a trace at another batch size is
    the same program in both modes (the forward only hands the batch size on to the graph), and then
    the traces in each mode (None where the batch is fixed: they are to be traced)."""
    fixed = Specialization.of(example_inputs)
    if not fixed.batch:
        return fixed, None
    free = fixed.batch_free()
    traces = {}
    for mode in MODES:
        traces[mode] = _trace_switched(switched, mode, record_frames=True, **{**options, "specialized_to": free})
        try:
            other = _trace_switched(switched, mode, **{**options, "specialized_to": free.at_batch(free.batch + 1)})
        except TraceError:
            return fixed, None
        if not same_program(traces[mode], other):
            return fixed, None
    return free, traces


def _trace_modes(model: nn.Module, switched: dict[str, nn.Module], options: dict[str, Any],
                 traces: dict[str, fx.GraphModule] | None = None) -> fx.GraphModule:
    # each node keeps the frames it was made in: where the modes part ways, they locate the branch
    traces = traces or {mode: _trace_switched(switched, mode, record_frames=True, **options) for mode in MODES}
    if same_program(traces[TRAIN], traces[EVAL]):
        return _without_frames(traces[mode_of(model.training)])
    require_same_state(traces, model)
    gm = union(traces[TRAIN], traces[EVAL], model)
    mode_only = [(node, node.meta[MODE_KEY]) for node in whole_graph(gm).nodes if MODE_KEY in node.meta]
    gm.meta[BRANCHES_KEY] = branches(mode_only, model)
    gm.meta[SWITCHES_KEY] = sorted({b.module for b in gm.meta[BRANCHES_KEY] if b.module})
    return _without_frames(gm)


def _without_frames(gm: fx.GraphModule) -> fx.GraphModule:
    for node in whole_graph(gm).nodes:
        node.meta.pop(FRAMES_KEY, None)
    return gm


def programs_by_mode(model: nn.Module, **options: Any) -> dict[str, fx.GraphModule]:
    """The model traced in each mode, ``{mode: trace}``, or ``{"": trace}`` where both modes run one
    program: what ``verify`` compares against, without the union (and the branch search) the passes need."""
    switched = switched_models(model)
    traces = {mode: _trace_switched(switched, mode, **options) for mode in MODES}
    if same_program(traces[TRAIN], traces[EVAL]):
        return {"": traces[mode_of(model.training)]}
    return traces


def switched_models(model: nn.Module, modes: Sequence[str] = MODES) -> dict[str, nn.Module]:
    """``{mode: what to trace for it}``: the model itself, whose flags are set while it is traced and put back;
    where a module overrides ``train()`` (which may do more than set flags) and the model is not already in
    that mode, a copy switched by ``.train(mode)``, made once per mode however many traces follow."""
    overrides = any(type(m).train is not nn.Module.train for m in model.modules())
    return {mode: deepcopy_module(model).train(mode == TRAIN)
            if overrides and any(m.training != (mode == TRAIN) for m in model.modules()) else model
            for mode in modes}


def _trace_switched(switched: dict[str, nn.Module], mode: str, **options: Any) -> fx.GraphModule:
    with _flags(switched[mode], mode == TRAIN):
        return trace(switched[mode], **options)


@contextlib.contextmanager
def _flags(model: nn.Module, training: bool) -> Iterator[None]:
    saved = [(m, m.training) for m in model.modules()]
    try:
        for m, _ in saved:
            m.training = training
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def same_program(a: fx.GraphModule, b: fx.GraphModule) -> bool:
    """Same generated code and the same values in the tensors tracing made up (fx's constants)."""
    if a.code != b.code:
        return False
    return all(_same_value(_made_by_trace(a, t), _made_by_trace(b, t)) for t in _trace_made_targets(a))


def require_same_state(traces: dict[str, fx.GraphModule], model: nn.Module) -> None:
    shapes = {mode: _state_shapes(gm) for mode, gm in traces.items()}
    differ = sorted(
        name for name in set(shapes[TRAIN]) | set(shapes[EVAL]) if shapes[TRAIN].get(name) != shapes[EVAL].get(name)
    )
    if not differ:
        return
    described = [f"{name} ({_shape_text(shapes[TRAIN].get(name))} in train mode, "
                 f"{_shape_text(shapes[EVAL].get(name))} in eval mode)" for name in differ]
    raise TraceError(
        f"the train- and eval-mode traces of {type(model).__qualname__} hold different parameters or buffers: "
        f"{first_few(described, '; ')}. One state_dict cannot serve both modes, so surgery cannot compile it.\n"
        "Fix: a module's train()/eval() must not add, remove or reshape its parameters; fuse or re-parameterize "
        "explicitly after training (e.g. model.fuse()), and compile the unfused model."
    )


def _state_shapes(gm: fx.GraphModule) -> dict[str, tuple]:
    return {name: (tuple(t.shape), t.dtype) for name, t in gm.state_dict(keep_vars=True).items() if torch.is_tensor(t)}


def _shape_text(entry: tuple | None) -> str:
    if entry is None:
        return "absent"
    shape, dtype = entry
    return f"{list(shape)} {str(dtype).removeprefix('torch.')}"


# ------------------------------------------------------------------ the union of the two programs


def union(train: fx.GraphModule, evals: fx.GraphModule, model: nn.Module) -> ModeGraphModule:
    """One graph running both programs: ``train``'s nodes in order, then each node of ``evals``
    matched to the first unmatched train node after the previous match that computes the same
    thing from the same inputs (a node both modes run), or inserted after it (eval only). Each
    mode's nodes keep their order. The output node returns ``(train output, eval output)``."""
    own = mode_of(model.training)
    traces = {TRAIN: train, EVAL: evals}
    root = traces[own]  # the model's own objects: the trace of its current mode
    other = EVAL if own == TRAIN else TRAIN
    renamed = {other: _adopt_made_by_trace(traces[other], root, other), own: {}}
    graph = fx.Graph(tracer_cls=train.graph._tracer_cls)
    outputs: dict[str, Any] = {}
    env: dict[fx.Node, fx.Node] = {}
    order: dict[fx.Node, int] = {}
    candidates: dict[tuple, list[fx.Node]] = defaultdict(list)
    for node in train.graph.nodes:
        if node.op == "output":
            outputs[TRAIN] = fx.map_arg(node.args[0], env.__getitem__)
            continue
        copied = env[node] = graph.node_copy(node, env.__getitem__)
        copied.target = renamed[TRAIN].get(node.target, node.target)
        copied.meta[MODE_KEY] = TRAIN
        order[copied] = len(order)
        candidates[_key(copied.op, copied.target, copied.args, copied.kwargs)].append(copied)
    env, position, last = {}, -1, None
    for node in evals.graph.nodes:
        if node.op == "output":
            outputs[EVAL] = fx.map_arg(node.args[0], env.__getitem__)
            continue
        target = renamed[EVAL].get(node.target, node.target)
        args, kwargs = fx.map_arg((node.args, node.kwargs), env.__getitem__)
        match = next((c for c in candidates[_key(node.op, target, args, kwargs)]
                      if order[c] > position and c.meta.get(MODE_KEY) == TRAIN), None)
        if match is not None:
            del match.meta[MODE_KEY]
            position, last = order[match], match
        else:
            where = graph.inserting_after(last) if last is not None else graph.inserting_before(next(iter(graph.nodes)))
            with where:
                match = graph.create_node(node.op, target, args, kwargs, node.name, node.type)
            match.meta = {**node.meta, MODE_KEY: EVAL}
            last = match
        env[node] = match
    graph.output((outputs[TRAIN], outputs[EVAL]))
    gm = ModeGraphModule(root, graph, type(model).__name__)
    mirror_module_tree(gm, model)
    gm._non_persistent_buffers_set.update(n for n in root._non_persistent_buffers_set if hasattr(gm, n))
    gm.meta[TRACE_OPTIONS_KEY] = root.meta[TRACE_OPTIONS_KEY]
    return gm


def _key(op: str, target: Any, args: Any, kwargs: Any) -> tuple:
    """What a node computes, from which nodes: its inputs by name, its constants by repr."""
    try:
        hash(target)
    except TypeError:
        target = id(target)
    return (op, target, repr(args), repr(kwargs))


def _trace_made_targets(gm: fx.GraphModule) -> list[str]:
    """Attributes the graph reads that tracing made up on its root (fx's tensor constants, the modules
    functional dropouts became), not the model's own: those two traces may name alike yet differ."""
    made = set(gm._non_persistent_buffers_set) | {name for name, _ in gm.named_children() if name.startswith("_functional")}
    return sorted({str(n.target) for n in gm.graph.nodes
                   if n.op in ("get_attr", "call_module") and str(n.target).split(".")[0] in made})


def _made_by_trace(gm: fx.GraphModule, target: str) -> Any:
    value: Any = gm
    for name in target.split("."):
        value = getattr(value, name, None)
    return value


def _same_value(a: Any, b: Any) -> bool:
    if torch.is_tensor(a) and torch.is_tensor(b):
        if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
            return False
        return a.is_meta or bool(torch.equal(a, b))  # a meta model's constants have no values to differ in
    if isinstance(a, nn.Module) and isinstance(b, nn.Module):
        return type(a) is type(b) and a.extra_repr() == b.extra_repr()
    return a is b


def _adopt_made_by_trace(source: fx.GraphModule, root: fx.GraphModule, mode: str) -> dict[str, str]:
    """Put the attributes ``source``'s tracing made up onto ``root``, under new names where ``root``
    holds something else by that name; returns {old target: new target} for those renamed."""
    renamed: dict[str, str] = {}
    for target in _trace_made_targets(source):
        value = _made_by_trace(source, target)
        if _same_value(value, _made_by_trace(root, target)):
            continue
        new, i = target, 1
        while _made_by_trace(root, new) is not None:
            new, i = f"{target}_{mode}{i}".replace(".", "_"), i + 1
        if isinstance(value, nn.Module):
            root.add_submodule(new, value)
        else:
            root.register_buffer(new, value, persistent=False)
        renamed[target] = new
    return renamed


# ------------------------------------------------------------------ each mode's program


def node_modes(graph: fx.Graph) -> dict[fx.Node, frozenset[str]]:
    """The modes each node runs in: its tag; for a node a pass added, the modes all its inputs run in."""
    modes: dict[fx.Node, frozenset[str]] = {}
    every = frozenset(MODES)
    for node in graph.nodes:
        tag = node.meta.get(MODE_KEY)
        if tag is not None:
            modes[node] = frozenset((tag,))
        else:
            modes[node] = every.intersection(*(modes[i] for i in node.all_input_nodes)) if node.all_input_nodes else every
    return modes


def mode_graph(graph: fx.Graph, mode: str) -> fx.Graph:
    """The program ``mode`` runs: the union's nodes of that mode, in order, and its output."""
    part = fx.Graph(tracer_cls=graph._tracer_cls)
    part._codegen = copy.deepcopy(graph._codegen)
    modes = node_modes(graph)
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if node.op == "output":
            part.output(fx.map_arg(node.args[0][MODES.index(mode)], env.__getitem__))
        elif mode in modes[node]:
            env[node] = part.node_copy(node, env.__getitem__)
    return part


def graphs_by_mode(gm: fx.GraphModule) -> dict[str, fx.Graph]:
    """``{mode: graph}``: both modes for a ``ModeGraphModule``, else ``{"": gm.graph}`` (one program)."""
    if isinstance(gm, ModeGraphModule):
        return {mode: mode_graph(gm.union, mode) for mode in MODES}
    return {"": gm.graph}


def whole_graph(gm: fx.GraphModule) -> fx.Graph:
    """Every node: the union of a ``ModeGraphModule``, else the graph."""
    return gm.union if isinstance(gm, ModeGraphModule) else gm.graph


@contextlib.contextmanager
def editing(*modules: nn.Module) -> Iterator[None]:
    """While surgery edits them (passes, de-ghosting), each ``ModeGraphModule``'s ``graph`` is the union."""
    held = [m for module in modules for m in module.modules() if isinstance(m, ModeGraphModule)]
    saved = [m._union_exposed for m in held]
    try:
        for m in held:
            m._union_exposed = True
        yield
    finally:
        for m, flag in zip(held, saved):
            m._union_exposed = flag


class ModeGraphModule(fx.GraphModule):
    """A GraphModule over a union graph (see the module docstring): its forward runs the train-mode
    program under ``.train()`` and the eval-mode one under ``.eval()``.

    ``graph`` is the program of the module's current mode: what runs, and what tools that interpret a
    GraphModule's graph (torch.export, fx.Interpreter) read. ``union`` holds both; surgery's passes and
    de-ghosting edit it (``editing``), and ``code`` shows both programs."""

    _union_exposed = False

    @property
    def graph(self) -> fx.Graph:
        if self._union_exposed or "_mode_graphs" not in self.__dict__:
            return self._graph
        return self._mode_graphs[mode_of(self.training)]

    @graph.setter
    def graph(self, graph: fx.Graph) -> None:
        fx.GraphModule.graph.fset(self, graph)

    @property
    def union(self) -> fx.Graph:
        return self._graph

    def program_mode(self) -> str:
        """The mode whose program runs: the module's. A submodule whose own forward branches on
        ``self.training`` in another mode (``model.block.eval()`` in a training model) is a mix the two
        programs do not hold: refused rather than run as the model's mode."""
        mode = mode_of(self.training)
        for path in self.meta.get(SWITCHES_KEY, ()):
            if self.get_submodule(path).training != self.training:
                raise ModeError(
                    f"module `{path}` is in {mode_of(not self.training)} mode while the compiled model is in {mode} "
                    f"mode; its forward branches on self.training, and the compiled model holds one program per "
                    f"mode, so it cannot run `{path}`'s {mode_of(not self.training)}-mode branch inside the "
                    f"{mode}-mode program. Fix: switch the whole model (model.train() / model.eval()), or compile "
                    f"with `{path}` kept opaque as a leaf ({advice.leaf(path)}), so it "
                    "follows its own flag."
                )
        return mode

    def recompile(self):
        python_code = super().recompile()  # the union's own code; fx's bookkeeping (__call__, _code)
        self._mode_graphs = {mode: mode_graph(self._graph, mode) for mode in MODES}
        for graph in self._mode_graphs.values():
            graph.owning_module = self
        cls = type(self)
        cls._mode_code = {mode: graph.python_code(root_module="self") for mode, graph in self._mode_graphs.items()}
        cls._mode_forward = {mode: _function(code, mode) for mode, code in cls._mode_code.items()}
        cls.forward = _forward_in_mode_of(cls._mode_forward[TRAIN])
        return python_code

    @property
    def code(self) -> str:
        return "\n".join(f"# {mode} mode ({'.train()' if mode == TRAIN else '.eval()'}){code.src}"
                         for mode, code in self._mode_code.items())

    def __copy__(self) -> ModeGraphModule:
        res = ModeGraphModule(self, self.union)
        res.meta = getattr(self, "meta", {})
        return res

    def __reduce__(self):
        raise SurgeryError(
            "this compiled module runs one program per mode (its forward branches on self.training), and fx "
            "pickles a GraphModule as one program, so it cannot be pickled whole. Save its state: torch.save(model.state_dict(), path), and rebuild it with "
            "surgery.compile(model, example_inputs, recipe) before load_state_dict."
        )


def _forward_in_mode_of(program: Any) -> Any:
    """The forward that runs the program of the module's mode, with the programs' signature (both modes
    take the same inputs), which torch.export and torch.onnx read to match inputs to dynamic shapes."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._mode_forward[self.program_mode()](self, *args, **kwargs)

    forward.__signature__ = inspect.signature(program)
    return forward


def _function(code: Any, mode: str) -> Any:
    """The ``forward`` function of fx's generated source, with the source registered for tracebacks."""
    digest = hashlib.sha1(code.src.encode()).hexdigest()[:12]
    filename = f"<surgery {mode}-mode forward {digest}>"
    linecache.cache[filename] = (len(code.src), None, code.src.splitlines(keepends=True), filename)
    namespace = dict(code.globals)
    exec(compile(code.src, filename, "exec"), namespace)  # noqa: S102: fx's own generated code
    return namespace["forward"]
