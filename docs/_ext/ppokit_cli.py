"""``{ppokit-cli} ppokit.cli.main:build_parser``: every command and subcommand of an argparse parser.

The directive walks the parser's subparsers and writes one section per command (nested as the
commands nest): what it does, its usage line, and each argument with its flags, help, default and
choices, exactly as argparse holds them. Options become ``std:option`` targets (``ppokit train
--total-steps``) so the search page finds them and pages link to them with ``{option}``.

An epilog that only lists config fields (``config fields (set any of them ...):``) is replaced by a
link to the config reference when ``:config-links:`` names the command's config class, e.g.
``:config-links: train=ControlConfig; rlhf ppo=RLHFConfig``; any other epilog is shown as written.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from ppokit_config import inline_text
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import make_id

#: Usage lines are wrapped at this width, whatever the terminal that builds the docs.
WIDTH = 88
CONFIG_EPILOG = "config fields"


def load_parser(path: str) -> argparse.ArgumentParser:
    """The parser built by ``module:function``."""
    module_name, _, func = path.partition(":")
    return getattr(importlib.import_module(module_name), func)()


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """``(name, help, parser)`` of each subcommand, in the order they were added (aliases once)."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    out.append((name, helps.get(name, ""), sub))
    return out


def usage(parser: argparse.ArgumentParser) -> str:
    formatter = parser.formatter_class(prog=parser.prog, width=WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def expanded_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help text with ``%(default)s``-style fields filled in, as ``--help`` prints it."""
    if not action.help:
        return ""
    return parser.formatter_class(prog=parser.prog)._expand_help(action)


def invocation(action: argparse.Action) -> str:
    """``--total-steps TOTAL_STEPS``, ``-o FILE, --output FILE`` or a positional's name."""
    formatter = argparse.HelpFormatter(prog="x")
    return formatter._format_action_invocation(action)


def argument_notes(action: argparse.Action, help_text: str) -> list[str]:
    """Default and choices, where ``--help`` would not already show them."""
    notes = []
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        notes.append("choices: " + ", ".join(str(c) for c in action.choices))
    plain_flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                                     argparse._StoreConstAction, argparse._CountAction))
    default = action.default
    if (action.option_strings and not plain_flag and default not in (None, argparse.SUPPRESS, [], False)
            and "default" not in help_text.lower()):
        notes.append(f"default: {default}")
    return notes


class CLIDirective(SphinxDirective):
    required_arguments = 1
    option_spec = {"config-links": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        path = self.arguments[0]
        try:
            parser = load_parser(path)
        except (ImportError, AttributeError, ValueError) as err:
            raise self.error(f"ppokit-cli: cannot build the parser {path!r}: {err}") from err
        links: dict[str, str] = {}
        for pair in (self.options.get("config-links") or "").split(";"):
            if "=" in pair:
                command, cls = pair.split("=", 1)
                links[" ".join(command.split())] = cls.strip()
        self.config_links = links
        root = parser.prog
        sections = [self.command_section(f"{root} {name}", help_text, sub, [name])
                    for name, help_text, sub in subcommands(parser)]
        return [*self.command_body(parser, parser.description or "", [], top=True), *sections]

    def command_section(self, title: str, help_text: str, parser: argparse.ArgumentParser,
                        path: list[str]) -> nodes.section:
        section = nodes.section()
        section["ids"].append(make_id(self.env, self.state.document, "cli", title))
        section["names"].append(nodes.fully_normalize_name(title))
        section += nodes.title(title, "", nodes.literal(title, title))
        self.state.document.note_implicit_target(section, section)
        section += self.command_body(parser, parser.description or help_text, path)
        for name, sub_help, sub in subcommands(parser):
            section += self.command_section(f"{title} {name}", sub_help, sub, [*path, name])
        return section

    def command_body(self, parser: argparse.ArgumentParser, text: str, path: list[str],
                     top: bool = False) -> list[nodes.Node]:
        body: list[nodes.Node] = []
        if text and not top:
            body.append(nodes.paragraph("", "", *inline_text(text)))
        line = usage(parser)
        body.append(nodes.literal_block(line, line, language="text"))
        positionals, options, commands = [], [], []
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:
                continue
            if isinstance(action, argparse._SubParsersAction):
                commands.append(action)
            elif action.option_strings:
                options.append(action)
            else:
                positionals.append(action)
        if positionals:
            body.append(nodes.rubric("Arguments", "Arguments"))
            body.append(self.argument_list(parser, positionals))
        if options:
            body.append(nodes.rubric("Options", "Options"))
            body.append(self.argument_list(parser, options))
        if commands and path:
            body.append(nodes.rubric("Subcommands", "Subcommands"))
            items = nodes.bullet_list()
            for name, sub_help, _ in subcommands(parser):
                para = nodes.paragraph()
                para += nodes.literal(name, name)
                if sub_help:
                    para += nodes.Text(": ")
                    para += inline_text(sub_help)
                items += nodes.list_item("", para)
            body.append(items)
        if parser.epilog:
            body.extend(self.epilog(parser.epilog, path))
        return body

    def argument_list(self, parser: argparse.ArgumentParser, actions: list[argparse.Action]) -> nodes.Node:
        std = self.env.get_domain("std")
        deflist = nodes.definition_list(classes=["ppokit-cli-arguments"])
        for action in actions:
            shown = invocation(action)
            term = nodes.term()
            term += nodes.literal(shown, shown)
            if action.option_strings:
                # Sphinx's own program names have hyphens for spaces: {option}`ppokit train --seed` finds it.
                program = "-".join(parser.prog.split())
                for flag in action.option_strings:
                    node_id = make_id(self.env, self.state.document, "cmdoption", f"{program} {flag}")
                    if node_id not in term["ids"]:
                        term["ids"].append(node_id)
                    std.add_program_option(program, flag, self.env.docname, node_id)
                self.state.document.note_explicit_target(term)
                term += addnodes.index(entries=[
                    ("pair", f"{parser.prog} command line option; {', '.join(action.option_strings)}",
                     term["ids"][0], "", None),
                ])
            help_text = expanded_help(parser, action)
            body = nodes.definition()
            body += nodes.paragraph("", "", *inline_text(help_text))
            notes = argument_notes(action, help_text)
            if notes:
                note = "; ".join(notes)
                body += nodes.paragraph("", "", nodes.emphasis(note, note))
            deflist += nodes.definition_list_item("", term, body)
        return deflist

    def epilog(self, epilog: str, path: list[str]) -> list[nodes.Node]:
        first = epilog.strip().splitlines()[0]
        command = " ".join(path)
        if first.startswith(CONFIG_EPILOG) and command in self.config_links:
            cls = self.config_links[command]
            para = nodes.paragraph()
            para += nodes.Text("Every field of ")
            ref = addnodes.pending_xref("", refdomain="std", reftype="ref", reftarget=f"config-{cls.lower()}",
                                        refexplicit=True, refwarn=True)
            ref += nodes.literal(cls, cls)
            para += ref
            para += nodes.Text(" can be set with --set key=value or in a --config YAML file (see the config reference).")
            return [para]
        return [nodes.literal_block(epilog, epilog, language="text")]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("ppokit-cli", CLIDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
