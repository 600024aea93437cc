"""Every python and console block of docs/**/*.md and README.md runs, as a reader would run it.

One test per page, in a fresh temporary directory and an interpreter of its own (what a page sets
process-wide, an MLflow tracking URI say, must not reach the next page or the rest of the suite): the
page's blocks run top to bottom, python blocks in one namespace (a ``__main__`` module of their own,
the directory first on ``sys.path`` so a module a block writes can be imported), console blocks as
shell commands in the same directory with the venv's ``bin`` first on ``PATH``. Markers and the rules
are in ``docs/CONTRIBUTING-docs.md``; the parsing and running are ``tests/docs/examples.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.docs.examples import (
    DocsSyntaxError,
    command_env,
    console_commands,
    parse_blocks,
    python_bin_dir,
    run_command,
)

ROOT = Path(__file__).resolve().parents[2]
#: Seconds one console command may take (a long one included); PPOKIT_DOCS_TIMEOUT changes it.
TIMEOUT = float(os.environ.get("PPOKIT_DOCS_TIMEOUT", "900"))


def pages() -> list[Path]:
    found = sorted(p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.relative_to(ROOT / "docs").parts)
    readme = ROOT / "README.md"
    return found + ([readme] if readme.exists() else [])


def page_params() -> list[Any]:
    """One param per page that has a runnable block (a page whose markers are wrong fails here too)."""
    params = []
    for page in pages():
        name = str(page.relative_to(ROOT))
        try:
            blocks = parse_blocks(page.read_text(encoding="utf-8"), page.relative_to(ROOT))
        except DocsSyntaxError as err:
            params.append(pytest.param(page, str(err), id=name))
            continue
        if blocks:
            marks = [pytest.mark.learning] if any(b.long and not b.skip for b in blocks) else []
            params.append(pytest.param(page, None, id=name, marks=marks))
    return params


def test_markers_are_understood_on_every_page() -> None:
    """A stray or unknown marker fails here even on a page with nothing to run."""
    problems = []
    for page in pages():
        try:
            parse_blocks(page.read_text(encoding="utf-8"), page.relative_to(ROOT))
        except DocsSyntaxError as err:
            problems.append(str(err))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("page", "syntax_error"), page_params())
def test_page_examples_run(page: Path, syntax_error: str | None, tmp_path: Path) -> None:
    if syntax_error:
        pytest.fail(syntax_error)
    blocks = parse_blocks(page.read_text(encoding="utf-8"), page.relative_to(ROOT))
    runnable = [b for b in blocks if not b.skip]
    if not runnable:
        pytest.skip("every block is marked skip: " + "; ".join(f"{b.where} ({b.skip})" for b in blocks))
    if runnable[0].after:
        pytest.fail(f"{runnable[0].where}: 'continue' on the page's first block: there is nothing to continue from")

    import ppokit

    source_root = Path(ppokit.__file__).resolve().parents[1]
    env = command_env(python_bin_dir(), source_root)
    # ROOT on the path too: the runner is tests/docs/examples.py of this checkout.
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([str(ROOT), env["PYTHONPATH"]]))
    done = subprocess.run([sys.executable, "-m", "tests.docs.examples", str(page.relative_to(ROOT)), str(ROOT),
                           str(tmp_path), str(TIMEOUT)], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"{page.relative_to(ROOT)}:\n{(done.stdout + done.stderr)[-6000:]}", pytrace=False)


# --- the parser itself, on small pages ---------------------------------------------------------------

SAMPLE = """# A page

```python
x = 1
```

<!-- test: skip (needs a GPU) -->
```python
import nothing_here
```

````{note}
Inside a directive:

<!-- test: long -->
```console
$ echo one \\
    two
$ ppokit train CartPol-v1
ppokit: error: unknown env id 'CartPol-v1': ...
```
````

````markdown
```python
not run: inside a markdown example
```
````

```{code-block} python
:caption: a caption

y = x + 1
```
"""


def test_the_parser_finds_blocks_markers_and_lines() -> None:
    blocks = parse_blocks(SAMPLE, Path("page.md"))
    assert [(b.kind, b.line) for b in blocks] == [("python", 4), ("python", 9), ("console", 17), ("python", 33)]
    assert blocks[1].skip == "needs a GPU" and not blocks[0].skip
    assert blocks[2].long and not blocks[0].long
    assert blocks[3].code == "y = x + 1\n"
    first, second = console_commands(blocks[2])
    assert first.text == "echo one \\\n    two" and first.error is None and first.line == 17
    assert second.text == "ppokit train CartPol-v1" and second.error.startswith("ppokit: error: unknown env id")


@pytest.mark.parametrize(("text", "problem"), [
    ("<!-- test: skip -->\n```python\npass\n```\n", "needs its reason"),
    ("<!-- test: later -->\n```python\npass\n```\n", "unknown marker"),
    ("<!-- test: long -->\n\nSome text.\n", "just above"),
    ("<!-- test: long -->\n```bash\nls\n```\n", "just above"),
])
def test_the_parser_refuses_markers_it_cannot_apply(text: str, problem: str) -> None:
    with pytest.raises(DocsSyntaxError, match=problem):
        parse_blocks(text, Path("page.md"))


def test_an_expected_error_matches_with_ellipses(tmp_path: Path) -> None:
    from tests.docs.examples import Command

    env = command_env(python_bin_dir(), ROOT)
    run_command(Command(1, "echo 'ppokit: error: no file /tmp/x/y' >&2; exit 2",
                        "ppokit: error: no file ..."), tmp_path, env, 30, "sample")
    with pytest.raises(AssertionError, match="must exit 2"):
        run_command(Command(1, "true", "ppokit: error: anything"), tmp_path, env, 30, "sample")
    with pytest.raises(AssertionError, match="exited 3"):
        run_command(Command(1, "exit 3"), tmp_path, env, 30, "sample")
