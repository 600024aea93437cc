"""``python -m ppokit`` (and ``torchrun -m ppokit``): the command line."""

import sys

from ppokit.cli import main

sys.exit(main())
