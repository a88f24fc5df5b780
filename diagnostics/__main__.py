"""``python -m diagnostics``: see :mod:`diagnostics.cli`."""

import sys

from diagnostics.cli import main

sys.exit(main())
