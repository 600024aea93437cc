"""The documentation site builds with warnings as errors, and its generated reference is complete.

The reference pages are generated from the code (docs/_ext); these checks read the built site's
object inventory to make sure each generator covered everything: every config field, every
command-line option, every preset.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from tests.docs.conftest import DocsBuild


def inventory(build: DocsBuild) -> dict[str, set[str]]:
    """``{"std:config-field": {"ControlConfig.clip_range", ...}, ...}`` from the built objects.inv."""
    from sphinx.util.inventory import InventoryFile

    with open(build.html / "objects.inv", "rb") as f:
        inv = InventoryFile.load(f, "", lambda base, uri: uri)
    data = getattr(inv, "data", inv)  # Sphinx >= 8.2 wraps the mapping
    return {kind: set(entries) for kind, entries in data.items()}


@pytest.fixture(scope="module")
def built(docs_build: DocsBuild) -> DocsBuild:
    if docs_build.returncode != 0:
        pytest.fail("the docs build failed", pytrace=False)
    return docs_build


def test_the_site_builds_without_warnings(docs_build: DocsBuild) -> None:
    problems = "\n".join(docs_build.warnings) or docs_build.output[-5000:]
    assert docs_build.returncode == 0, f"sphinx-build -W --keep-going failed:\n{problems}"
    for page in ("index.html", "search.html", "searchindex.js", "genindex.html", "reference/config.html",
                 "reference/cli.html", "reference/api.html", "reference/metrics.html", "reference/presets.html"):
        assert (docs_build.html / page).is_file(), f"the build has no {page}"


def test_every_config_field_is_in_the_reference(built: DocsBuild) -> None:
    from ppokit.control.config import ControlConfig
    from ppokit.rlhf.config import RewardConfig, RLHFConfig, SFTConfig

    documented = inventory(built).get("std:config-field", set())
    expected = {f"{cls.__name__}.{f.name}" for cls in (ControlConfig, RLHFConfig, SFTConfig, RewardConfig)
                for f in dataclasses.fields(cls)}
    assert not expected - documented, f"config fields missing from reference/config: {sorted(expected - documented)}"


def _options(parser: argparse.ArgumentParser) -> set[str]:
    """``ppokit-train.--seed`` for every option of every (sub)command, as Sphinx names them."""
    found = set()
    program = "-".join(parser.prog.split())
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                found |= _options(sub)
        elif action.help != argparse.SUPPRESS:
            found |= {f"{program}.{flag}" for flag in action.option_strings}
    return found


def test_every_command_line_option_is_in_the_reference(built: DocsBuild) -> None:
    from ppokit.cli.main import build_parser

    documented = inventory(built).get("std:cmdoption", set())
    expected = _options(build_parser())
    assert "ppokit-rlhf-ppo.--policy" in expected
    assert not expected - documented, f"options missing from reference/cli: {sorted(expected - documented)}"


def test_every_preset_is_in_the_reference(built: DocsBuild) -> None:
    from ppokit.control.presets import list_presets

    page = (built.html / "reference" / "presets.html").read_text(encoding="utf-8")
    missing = [name for name in list_presets() if f">{name}<" not in page]
    assert not missing, f"presets missing from reference/presets: {missing}"


def test_the_api_reference_documents_the_public_names(built: DocsBuild) -> None:
    objects = set().union(*(v for k, v in inventory(built).items() if k.startswith("py:")))
    for name in ("PPO", "ControlConfig", "SeedGroup", "RLHFTrainer", "RLHFConfig", "SFTTrainer", "SFTConfig",
                 "RewardTrainer", "RewardConfig"):
        assert any(obj == f"ppokit.{name}" or obj.endswith(f".{name}") for obj in objects), f"{name} is not documented"
    assert "ppokit.errors.PPOKitError" in objects and "ppokit.errors.ConfigError" in objects


def test_the_config_directive_prefers_describes_allowed_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """``describe`` rows gain a fifth item (the allowed values or range); until then the ``Literal`` choices."""
    pytest.importorskip("sphinx")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "docs" / "_ext"))
    from ppokit_config import allowed_values

    choice = Literal["clip", "penalty"]
    assert allowed_values(("loss", "str", "clip", "help", "'clip' only"), choice) == "'clip' only"
    assert allowed_values(("num_envs", "int", 4, "help", "at least 1"), int) == "at least 1"
    assert allowed_values(("seed", "int", 1, "help", ""), int) == ""
    assert allowed_values(("loss", "Literal", "clip", "help"), choice) == "'clip' or 'penalty'"
    assert allowed_values(("kind", "Literal", None, "help"), Literal["a", "b"] | None) == "'a', 'b' or null"
    assert allowed_values(("seed", "int", 1, "help"), int) == ""


def test_screenshots_folder_is_ignored_by_git() -> None:
    root = Path(__file__).resolve().parents[2]
    assert "docs/_build/" in (root / ".gitignore").read_text().splitlines()
