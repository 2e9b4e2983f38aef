"""The fx core: tracing any model to an fx graph, and what a graph needs to be edited safely.

``tracing`` (the tracer: leaves, Python state, the pass-through of data-dependent code),
``modes`` (one graph per ``.train()`` / ``.eval()``), ``branches`` (control flow that
depends on a module's settings), ``concrete`` (values a trace specializes on), ``graph``
(shape propagation, copying, small graph helpers), ``python_state`` (snapshots of what a
forward reads), ``meta_values`` (meta results memoized), ``layers`` (the one table of layer
kinds) and ``collector`` (the garbage collector held off while graphs are built).
Nothing here knows about ghosts, masks or recipes: those are ``surgery.compiler``'s.
"""
