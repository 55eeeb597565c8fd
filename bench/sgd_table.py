"""``python bench/sgd_table.py [options]``: the same as ``python -m fastmomentum bench``.

See ``bench/README.md`` and ``python bench/sgd_table.py --help``.
"""

import sys

from fastmomentum.commands.bench import main

if __name__ == "__main__":
    sys.exit(main(prog="python bench/sgd_table.py"))
