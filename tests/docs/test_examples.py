"""Every python and console block of docs/**/*.md and README.md runs, as a reader would run it.

One test per page, in a fresh temporary directory: the page's blocks run top to bottom, python
blocks in one namespace (a ``__main__`` module of their own, the directory first on ``sys.path`` so
a module a block writes can be imported), console blocks as shell commands in the same directory
with the venv's ``bin`` first on ``PATH``. Markers and the rules are in ``docs/CONTRIBUTING-docs.md``;
the parsing is ``tests/docs/examples.py``.
"""

from __future__ import annotations

import os
import sys
import traceback
import types
from pathlib import Path
from typing import Any

import pytest

from tests.docs.examples import (
    Block,
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


def run_python(block: Block, module: types.ModuleType) -> None:
    """Run a python block in the page's module; a failure shows the traceback from the block on."""
    # Padded so that the traceback names the page's own line numbers.
    code = compile("\n" * (block.line - 1) + block.code, str(ROOT / block.page), "exec")
    failure = None
    try:
        exec(code, module.__dict__)
    except Exception as err:
        tb = err.__traceback__.tb_next if err.__traceback__ else None  # from the block's own frame on
        failure = "".join(traceback.format_exception(type(err), err, tb))
    if failure is not None:
        pytest.fail(f"{block.where}: the python block raised\n{failure}", pytrace=False)


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
def test_page_examples_run(page: Path, syntax_error: str | None, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    if syntax_error:
        pytest.fail(syntax_error)
    blocks = parse_blocks(page.read_text(encoding="utf-8"), page.relative_to(ROOT))
    runnable = [b for b in blocks if not b.skip]
    if not runnable:
        pytest.skip("every block is marked skip: " + "; ".join(f"{b.where} ({b.skip})" for b in blocks))
    if runnable[0].after:
        pytest.fail(f"{runnable[0].where}: 'continue' on the page's first block: there is nothing to continue from")

    import ppokit

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TQDM_DISABLE", "1")  # progress bars would only fill the captured output
    monkeypatch.syspath_prepend(str(tmp_path))
    # The page's own __main__, as a script has: classes defined in a block pickle and resolve by name.
    main = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", main)
    env = command_env(python_bin_dir(), Path(ppokit.__file__).resolve().parents[1])
    for name in ("PATH", "PYTHONPATH"):  # a block that starts `ppokit` itself finds the same one
        monkeypatch.setenv(name, env[name])
    before = set(sys.modules)
    try:
        for block in runnable:
            if block.kind == "python":
                run_python(block, main)
            else:
                for command in console_commands(block):
                    run_command(command, tmp_path, env, TIMEOUT, f"{page.relative_to(ROOT)}:{command.line}")
    finally:
        # Modules the page wrote and imported (my_env.py) must not leak into the next page.
        for name in set(sys.modules) - before:
            origin = getattr(sys.modules[name], "__file__", None) or ""
            if origin.startswith(str(tmp_path)):
                del sys.modules[name]


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
