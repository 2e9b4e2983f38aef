"""The fx core: tracing any model to an fx graph, and what a graph needs to be edited safely.

``tracer`` (the tracer: leaves, Proxies that say where Python needs a value), ``tracing``
(``trace``: the model left as it was, failures explained), ``specialization`` / ``concrete``
(a trace with the inputs' shapes where Python reads them), ``modes`` (one graph per
``.train()`` / ``.eval()``), ``branches`` (where a forward branches on ``self.training``),
``graph`` (shape propagation, copying, small graph helpers), ``python_state`` (snapshots of what
a forward changes), ``meta_values`` (meta results memoized), ``layers`` (the one table of layer
kinds) and ``collector`` (the garbage collector held off while graphs are built).
Nothing here knows about ghosts, masks or recipes: those are ``surgery.compiler``'s.
"""
