"""``python -m fastmomentum [demo|info|bench]``: the package's front door (the commands are in
:mod:`fastmomentum.commands`)."""

from __future__ import annotations

import os
import sys

from .commands import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as cat does
        # Python flushes stdout at exit: point it at devnull so that flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
