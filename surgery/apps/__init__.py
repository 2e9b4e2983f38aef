"""Applications built on the layers below: the ``surgery`` command line, one-shot pruning
(``surgery.prune``), the embedded demo, zoo conformance and ``surgery.ToST`` for a user's own
training loop.
"""
