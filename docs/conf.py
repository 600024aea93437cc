"""Sphinx configuration of ppokit's documentation site (MyST Markdown pages, furo theme).

Build: ``bash scripts/docs.sh`` (or ``python -m sphinx -W --keep-going -b html docs docs/_build/html``).
Nothing here needs the network: no intersphinx, no remote images or fonts, so CI builds it offline.
The reference pages are generated from the code by the extensions in ``docs/_ext``; the ppokit
they document is this checkout's (its root goes first on ``sys.path``).
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path[:0] = [str(ROOT), str(DOCS / "_ext")]

import ppokit  # noqa: E402  (after the path: this checkout's ppokit)

project = "ppokit"
author = "the ppokit authors"
copyright = "the ppokit authors, MIT License"
version = release = ppokit.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "ppokit_api",
    "ppokit_config",
    "ppokit_cli",
    "ppokit_presets",
]

# --- sources ---
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "CONTRIBUTING-docs.md", "**/.ipynb_checkpoints"]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist", "attrs_inline"]
# Anchors for ## and ### headings, so pages link to [a section](page.md#its-title).
myst_heading_anchors = 3
# Commands and flags are copied from the pages: "--set" must stay two hyphens, quotes straight.
smartquotes = False

# --- autodoc ---
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_inherit_docstrings = True
autodoc_default_options = {"members": True}
# Docstrings use :class: and :func: roles to modules that are not in the reference; they stay plain text.
nitpicky = False

# --- maths ---
# MathJax is loaded from a CDN by the reader's browser; the build itself never touches the network.

# --- output ---
html_theme = "furo"
html_title = f"ppokit {release}"
html_static_path = ["_static"]
html_css_files = ["ppokit.css"]
html_show_sourcelink = False
html_copy_source = False
pygments_style = "friendly"
pygments_dark_style = "monokai"
