"""``{ppokit-config} module.ConfigClass``: every field of a config dataclass, generated from the code.

Each field shows its name, type, default, allowed values or range and its one-line help, read from
:func:`ppokit.configuration.describe` (name, type, default, help, and a fifth item, the allowed
values or range, once the configuration module provides it) and, until then, from the ``Literal``
choices of the field's annotation. Fields are grouped as the dataclass source groups them
(``# --- name ---`` comments). Every field is a target ``<ConfigClass>.<field>`` of the ``config-field``
object type: it is in the general index and the search page, and pages link to it with
``{config-field}`ControlConfig.clip_range```. The ``:own:`` flag lists only the fields the class itself
declares, for a config that extends another one listed on the same page (``MultiAgentConfig``).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import types
import typing
from typing import Any

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import make_id

#: The object type each field is registered as (std domain), and the role that links to one.
OBJTYPE = "config-field"
GROUP_COMMENT = re.compile(r"^\s*#\s*-{2,}\s*(.+?)\s*-{2,}\s*$")
FIELD_LINE = re.compile(r"^\s+([A-Za-z_]\w*)\s*:")


def import_object(path: str) -> Any:
    """The object named by a dotted path ``package.module.Name``."""
    module_name, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


def type_label(tp: Any) -> str:
    """A reader's name of an annotation: ``int``, ``float | None``, ``list[str]``, ``str`` for a string ``Literal``."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        kinds = sorted({type(v).__name__ for v in typing.get_args(tp)})
        return " | ".join(kinds)
    if origin in (typing.Union, types.UnionType):
        parts = [type_label(a) for a in typing.get_args(tp) if a is not type(None)]
        unique = list(dict.fromkeys(parts))
        return " | ".join(unique) + (" | None" if type(None) in typing.get_args(tp) else "")
    if origin is not None:
        args = typing.get_args(tp)
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_label(a) for a in args)}]" if args else name
    if tp is Any:
        return "Any"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def yaml_value(value: Any) -> str:
    """A default as it is written in a YAML file or after ``--set key=``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def allowed_values(row: tuple[Any, ...], tp: Any) -> str:
    """The fifth item of a ``describe`` row when there is one; else the annotation's ``Literal`` choices."""
    if len(row) > 4:
        return str(row[4] or "")
    from ppokit.configuration import literal_choices

    choices = literal_choices(tp)
    if not choices:
        return ""
    words = [yaml_value(c) for c in choices]
    if type(None) in typing.get_args(tp):
        words.append("null")
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


def field_groups(cls: type) -> dict[str, str]:
    """``{field: group title}`` from the ``# --- title ---`` comments of the class and its bases.

    The fields of a class that has no such comments are grouped under the first sentence of its
    docstring (a shared base class) or under "Fields" (the class itself)."""
    groups: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        own = set(klass.__annotations__) if "__annotations__" in klass.__dict__ else set()
        marked = any(GROUP_COMMENT.match(line) for line in lines)
        if marked:
            title = ""
            for line in lines:
                match = GROUP_COMMENT.match(line)
                if match:
                    title = match.group(1)
                    continue
                field = FIELD_LINE.match(line)
                if field and field.group(1) in own and title:
                    groups[field.group(1)] = title[0].upper() + title[1:]
        else:
            doc = inspect.getdoc(klass) or ""
            first = doc.split(". ")[0].split(":")[0].strip().rstrip(".")
            title = first if klass is not cls and first else "Fields"
            for name in own:
                groups.setdefault(name, title)
    return groups


def inline_text(text: str) -> list[nodes.Node]:
    """Plain help text, with ``code`` in backticks as literals (the help is not reStructuredText)."""
    out: list[nodes.Node] = []
    for i, part in enumerate(re.split(r"`([^`]+)`", text)):
        if part:
            out.append(nodes.literal(part, part) if i % 2 else nodes.Text(part))
    return out


class ConfigFieldsDirective(SphinxDirective):
    """``{ppokit-config} ppokit.control.config.ControlConfig``: the class's fields, grouped."""

    required_arguments = 1
    has_content = False
    option_spec = {"own": lambda argument: True}

    def run(self) -> list[nodes.Node]:
        from ppokit.configuration import describe, field_types

        path = self.arguments[0]
        try:
            cls = import_object(path)
        except (ImportError, AttributeError) as err:
            raise self.error(f"ppokit-config: cannot import {path!r}: {err}") from err
        if not dataclasses.is_dataclass(cls):
            raise self.error(f"ppokit-config: {path!r} is not a dataclass")
        types_of = field_types(cls)
        groups = field_groups(cls)
        std = self.env.get_domain("std")
        result: list[nodes.Node] = []
        current_group: str | None = None
        deflist: nodes.definition_list | None = None
        own = set(cls.__dict__.get("__annotations__", {})) if "own" in self.options else None
        for row in describe(cls):
            name, _, default, help_text = row[:4]
            if own is not None and name not in own:
                continue
            group = groups.get(name, "Fields")
            if group != current_group or deflist is None:
                current_group = group
                result.append(nodes.rubric(group, group))
                deflist = nodes.definition_list(classes=["ppokit-config"])
                result.append(deflist)
            fullname = f"{cls.__name__}.{name}"
            node_id = make_id(self.env, self.state.document, "config", fullname)
            term = nodes.term()
            term["ids"].append(node_id)
            self.state.document.note_explicit_target(term)
            std.note_object(OBJTYPE, fullname, node_id, location=term)
            index = addnodes.index(entries=[("single", f"{name} ({cls.__name__} field)", node_id, "", None)])
            term += index
            term += nodes.literal(name, name, classes=["ppokit-config-name"])
            label = type_label(types_of[name])
            term += nodes.Text(" : ")
            term += nodes.emphasis(label, label)
            default_text = yaml_value(default)
            term += nodes.Text(" = ")
            term += nodes.literal(default_text, default_text)
            body = nodes.definition()
            body += nodes.paragraph("", "", *inline_text(str(help_text)))
            allowed = allowed_values(row, types_of[name])
            if allowed:
                para = nodes.paragraph()
                para += nodes.strong("Allowed: ", "Allowed: ")
                para += inline_text(allowed)
                body += para
            item = nodes.definition_list_item("", term, body)
            deflist += item
        return result


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_object_type(OBJTYPE, OBJTYPE, indextemplate="", objname="config field")
    app.add_directive("ppokit-config", ConfigFieldsDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
