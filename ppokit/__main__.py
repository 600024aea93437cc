"""``python -m ppokit`` (and ``torchrun -m ppokit``): the command line."""

import sys

from ppokit.cli.main import main

if __name__ == "__main__":  # not when a spawned worker process imports this module
    sys.exit(main())
