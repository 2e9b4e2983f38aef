"""The ``surgery`` command: inspect, verify, export, prune, train, run, sweep, demo.

- ``entry``: ``main`` runs one command line; a user's error or a signal ends it with one line and an exit code;
- ``parser``: ``build_parser``, each command's options added by its module in ``commands/``;
- ``commands/``: one module per command, its options (``add_parser``) and what it does (``run``);
- ``flags``: the options that set run-config fields, each declared once (``FLAG_FIELDS``, ``configured``);
- ``arguments``: the other options several commands share (the model, its masks, a run's);
- ``models``: the model, inputs, recipe and masks a command builds from its options;
- ``runs``: what the commands that run the pipeline share (train, run, demo);
- ``render``: the tables commands print.
"""

from surgery.apps.cli.entry import main
from surgery.apps.cli.flags import FLAG_FIELDS, configured, flag_fields
from surgery.apps.cli.parser import build_parser

__all__ = ["FLAG_FIELDS", "build_parser", "configured", "flag_fields", "main"]
