"""``python -m compression``: see :mod:`compression.cli`."""

import sys

import compression  # noqa: F401 - registers every method
from compression.cli import main

sys.exit(main())
