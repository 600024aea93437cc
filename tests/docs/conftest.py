"""The documentation site, built once per test session (``sphinx-build -W --keep-going``) for the tests
that read it: ``test_build.py`` checks the build, ``test_browser.py`` opens it in Chromium.

Without the ``docs`` extra (sphinx, myst-parser, furo) these tests skip, unless the environment
variable ``CI`` is set: CI installs the extra, so a missing one is a failure there.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
#: Screenshots of the browser test (git-ignored with the rest of docs/_build).
SCREENSHOTS = DOCS / "_build" / "browser"
BUILD_TIMEOUT = 1200


def need(what: str, why: str) -> None:
    """Skip (or, under CI, fail) when ``what`` is missing."""
    message = f"{what} is missing: {why}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)")
    pytest.skip(message)


@dataclass
class DocsBuild:
    """A finished ``sphinx-build`` run: where the HTML went, its exit status and what it printed."""

    html: Path
    returncode: int
    output: str

    @property
    def warnings(self) -> list[str]:
        return [line for line in self.output.splitlines() if "WARNING" in line or "ERROR" in line]


@pytest.fixture(scope="session")
def docs_build(tmp_path_factory: pytest.TempPathFactory) -> DocsBuild:
    for module in ("sphinx", "myst_parser", "furo"):
        if importlib.util.find_spec(module) is None:
            need(f"the Python package {module!r}", "pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("docs") / "html"
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q",
               "-d", str(out.parent / "doctrees"), str(DOCS), str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    return DocsBuild(out, done.returncode, done.stdout + done.stderr)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Name the browser test's screenshots at the end of the run, so they are easy to open."""
    shots = [Path(str(value)) for report in terminalreporter.getreports("passed") + terminalreporter.getreports("failed")
             for name, value in getattr(report, "user_properties", []) if name == "screenshot"]
    if shots:
        terminalreporter.write_sep("-", "docs browser screenshots")
        for shot in shots:
            terminalreporter.write_line(str(shot))
