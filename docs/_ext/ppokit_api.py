"""The public API reference: autodoc under the names users import (``from ppokit import PPO``).

``.. ppokit-api:: NAME`` (reStructuredText, so inside an ``{eval-rst}`` block of a MyST page)
documents ``ppokit.NAME`` with its members. While the facade does not export a name yet, the
``:fallback:`` path (``ppokit.rlhf.ppo.trainer.RLHFTrainer``) is documented instead and the build
says so (an info line, not a warning), so the page builds before and after the export lands.

Config dataclasses get the signature ``(**fields)`` instead of their generated ``__init__``'s
seventy keyword arguments, and a line that links to their fields in the config reference.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)
FACADE = "ppokit"


def exported(name: str) -> bool:
    """Whether ``from ppokit import NAME`` works."""
    try:
        getattr(importlib.import_module(FACADE), name)
    except AttributeError:
        return False
    return True


def is_config(obj: Any) -> bool:
    return isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__name__.endswith("Config")


class PublicAPIDirective(SphinxDirective):
    """``.. ppokit-api:: RLHFTrainer`` with ``:fallback: module.Name`` (used while the facade lacks it)."""

    required_arguments = 1
    option_spec = {"fallback": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        target = f"{FACADE}.{name}"
        if not exported(name):
            fallback = self.options.get("fallback")
            if not fallback:
                raise self.error(f"ppokit-api: {FACADE} does not export {name!r} and no :fallback: is given")
            logger.info("ppokit-api: %s does not export %s yet; documenting %s", FACADE, name, fallback,
                        location=self.get_location())
            target = fallback
        module_name, _, attr = target.rpartition(".")
        obj = getattr(importlib.import_module(module_name), attr)
        lines = [f".. autoclass:: {target}", "   :members:", ""]
        if is_config(obj):
            label = f"config-{obj.__name__.lower()}"
            lines += [f"   Its fields, with types, defaults and allowed values: :ref:`{obj.__name__} <{label}>`"
                      " in the config reference.", ""]
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source=self.get_source_info()[0]), container)
        return list(container.children)


def config_signature(app: Sphinx, what: str, name: str, obj: Any, options: Any, signature: str | None,
                     return_annotation: str | None) -> tuple[str, str | None] | None:
    """``ControlConfig(**fields)``: the generated ``__init__`` lists every field, which the config reference shows."""
    if what == "class" and is_config(obj):
        return "(**fields)", None
    return None


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx.ext.autodoc")
    app.add_directive("ppokit-api", PublicAPIDirective)
    app.connect("autodoc-process-signature", config_signature)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
