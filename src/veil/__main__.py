"""``python -m veil``: the ``veil`` command line."""

import sys

from veil.cli import main

sys.exit(main())
