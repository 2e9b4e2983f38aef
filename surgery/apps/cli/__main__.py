"""``python -m surgery.apps.cli``: the ``surgery`` command line (as ``python -m surgery``)."""

import sys

from surgery.apps.cli import main

sys.exit(main())
