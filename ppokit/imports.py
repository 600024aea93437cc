"""Importing a module the user names (``'module:attr'``): an env, a wrapper, a reward function.

One rule for every such name: the module is looked up as Python would, and in the working directory
too, so ``ppokit train mgenv:flat`` and ``--reward rules:score`` both find a ``mgenv.py`` / ``rules.py``
beside the user's data without ``PYTHONPATH=.`` (as uvicorn and gunicorn do for their ``module:app``).
The working directory goes last on ``sys.path``: an installed package is never shadowed by a file of
the same name there. Whether a name read back from a saved file may be imported at all is decided
before this is called (docs/concepts/reliability.md).
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType


def import_user_module(name: str) -> ModuleType:
    """Import module ``name``, looking in the working directory after everything else; raises ImportError."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    return importlib.import_module(name)
