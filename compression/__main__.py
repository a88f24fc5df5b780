"""``python -m compression``: see :mod:`compression.cli`.

stdout carries the command's JSON document and nothing else. File descriptor 1 points at stderr from before
the first import (NNCF logs to stdout as it loads) until the process ends (exit hooks print too); the CLI
writes its document through a copy of the real stdout.
"""

import os
import sys

sys.stdout.flush()
try:
    _stdout = os.fdopen(os.dup(1), "w", encoding=sys.stdout.encoding, errors=sys.stdout.errors)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
except OSError:  # no stdout or no stderr to point it at: leave them as they are
    _stdout = sys.stdout

import compression  # noqa: E402,F401 - registers every method
from compression.cli import main  # noqa: E402

sys.exit(main(stdout=_stdout))
