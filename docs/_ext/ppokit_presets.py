"""``{ppokit-presets}``: every preset shipped in ``ppokit/control/presets/``, generated from the YAML files.

One section per preset (in ``list_presets()`` order): its description, which env id it is the
default for, and a table of the settings it makes, each next to ppokit's own default for that
field (the field names link to the config reference).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from docutils import nodes
from ppokit_config import OBJTYPE, yaml_value
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import make_id

#: Presets that serve a family of env ids: (an example id, the ids they serve).
FAMILIES = {"minigrid": ("minigrid:MiniGrid-DoorKey-5x5-v0", "MiniGrid-*"), "mpe": ("mpe2.simple_spread_v3", "mpe2.*")}


def ale_alias(name: str) -> str | None:
    """``ALE/Breakout-v5`` for ``BreakoutNoFrameskip-v4``: ale-py's id of the same game, which shares its preset."""
    match = re.fullmatch(r"([A-Za-z0-9]+)NoFrameskip-v4", name)
    return f"ALE/{match.group(1)}-v5" if match else None


def field_link(cls_name: str, field: str) -> nodes.Node:
    """The field's name, linked to its entry in the config reference."""
    ref = addnodes.pending_xref("", refdomain="std", reftype=OBJTYPE, reftarget=f"{cls_name}.{field}",
                                refexplicit=True, refwarn=False)
    ref += nodes.literal(field, field)
    return ref


def settings_table(rows: list[tuple[nodes.Node, str, str]]) -> nodes.table:
    """A three-column table: field, the preset's value, ppokit's default."""
    table = nodes.table(classes=["ppokit-preset"])
    group = nodes.tgroup(cols=3)
    table += group
    for width in (30, 35, 35):
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    group += head
    header = nodes.row()
    for text in ("field", "preset", "ppokit default"):
        header += nodes.entry("", nodes.paragraph(text, text))
    head += header
    body = nodes.tbody()
    group += body
    for field, value, default in rows:
        row = nodes.row()
        row += nodes.entry("", nodes.paragraph("", "", field))
        row += nodes.entry("", nodes.paragraph("", "", nodes.literal(value, value)))
        row += nodes.entry("", nodes.paragraph("", "", nodes.literal(default, default)))
        body += row
    return table


class PresetsDirective(SphinxDirective):
    has_content = False

    def run(self) -> list[nodes.Node]:
        from ppokit.control.config import ControlConfig
        from ppokit.control.presets import default_preset_for, list_presets, load_preset
        from ppokit.multiagent.config import MultiAgentConfig

        def defaults_of(cls: type) -> dict[str, Any]:
            return {f.name: (f.default if f.default is not dataclasses.MISSING else
                             f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
                    for f in dataclasses.fields(cls)}

        control = defaults_of(ControlConfig)
        multiagent = defaults_of(MultiAgentConfig)
        sections: list[nodes.Node] = []
        for name, description in list_presets().items():
            settings = load_preset(name)
            # A preset that sets a multi-agent field (mpe: critic) is MultiAgentConfig's, defaults and all.
            multi = bool(set(settings) - set(control) & set(multiagent))
            cls, defaults = (MultiAgentConfig, multiagent) if multi else (ControlConfig, control)
            section = nodes.section()
            section["ids"].append(make_id(self.env, self.state.document, "preset", name))
            section["names"].append(nodes.fully_normalize_name(f"preset {name}"))
            section += nodes.title(name, "", nodes.literal(name, name))
            self.state.document.note_implicit_target(section, section)
            section += addnodes.index(entries=[("single", f"{name} (preset)", section["ids"][0], "", None)])
            if description:
                section += nodes.paragraph(description, description)
            serves = [env for env in (name, ale_alias(name)) if env and default_preset_for(env) == name]
            para = nodes.paragraph()
            family = FAMILIES.get(name)
            if family is not None:  # a preset for a family of ids, named after none of them
                example, pattern = family
                assert default_preset_for(example) == name, (name, example)
                command = f"ppokit train {example}"
                para += nodes.Text("The default for every ")
                para += nodes.literal(pattern, pattern)
                para += nodes.Text(" id: ")
            elif serves:
                command = f"ppokit train {name}"
                para += nodes.Text("The default for ")
                for i, env in enumerate(serves):
                    para += nodes.Text(" and " if i else "")
                    para += nodes.literal(env, env)
                para += nodes.Text(": ")
            if family is not None or serves:
                para += nodes.literal(command, command)
                para += nodes.Text(" uses it unless ")
                para += nodes.literal("--no-preset", "--no-preset")
                para += nodes.Text(" is given.")
            else:
                command = f"ppokit train --preset {name}"
                para += nodes.Text("Chosen by name: ")
                para += nodes.literal(command, command)
                para += nodes.Text(".")
            section += para
            rows = [(field_link(cls.__name__, key) if key in defaults else nodes.literal(key, key),
                     yaml_value(value), yaml_value(defaults[key]) if key in defaults else "(not a field)")
                    for key, value in settings.items()]
            section += settings_table(rows)
            sections.append(section)
        return sections


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("ppokit_config")
    app.add_directive("ppokit-presets", PresetsDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
