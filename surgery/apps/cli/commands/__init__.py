"""One module per ``surgery`` command: ``add_parser(commands)`` declares its options, ``run(args, console)`` runs
it and returns the exit code (0 or None: done)."""
