"""``python -m surgery`` (and ``torchrun -m surgery``): the ``surgery`` command line."""

import sys

from surgery.apps.cli import main

sys.exit(main())
