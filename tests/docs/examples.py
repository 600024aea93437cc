"""The code blocks of the documentation's Markdown pages, and how each kind runs.

Read by ``tests/docs/test_examples.py``; the convention is written up for page authors in
``docs/CONTRIBUTING-docs.md``. In short: every ```` ```python ```` and ```` ```console ```` block runs;
an HTML comment on the line(s) just above a block's fence changes that:

- ``<!-- test: skip (reason) -->``: not run (the reason is required);
- ``<!-- test: long -->``: the page's test is marked ``learning`` (still run in CI);
- ``<!-- test: continue -->``: a block that needs what an earlier block of the page made (they all
  share the page's directory anyway; the marker says so to the reader of the source).

Blocks inside MyST directives (```` ````{note} ````) are found too; ``{code-block} python`` counts as
python. Other languages (``bash``, ``text``, ``yaml``...) are never run.

A page runs in an interpreter of its own (``python -m tests.docs.examples PAGE DIR``, :func:`run_page`),
as a reader runs it: what a page sets up process-wide (a tracking URI, logging, the environment,
torch's threads) cannot reach another page or the rest of the test suite.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path

FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
MARKER = re.compile(r"^\s*<!--\s*test:\s*(?P<body>.*?)\s*-->\s*$")
SKIP = re.compile(r"^skip\s*\((?P<reason>.*\S.*)\)$")
#: Directives whose body is Markdown (blocks inside them run); the code directives' body is code.
CODE_DIRECTIVES = {"{code-block}", "{code}", "{sourcecode}"}
NOT_MARKDOWN = {"{eval-rst}", "{math}", "{raw}", "{mermaid}", "{csv-table}", "{literalinclude}", "{include}"}
RUN = {"python", "console"}
#: The prefix of an expected one-line error in a console block: that command must exit 2 and print it.
ERROR_PREFIX = "ppokit: error:"


class DocsSyntaxError(ValueError):
    """A marker or block the runner cannot make sense of; names the page and line."""


@dataclass
class Block:
    """One runnable block: ``line`` is the page line of its first code line (1-based)."""

    page: Path
    line: int
    kind: str
    code: str
    skip: str | None = None
    long: bool = False
    after: bool = False

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


@dataclass
class Command:
    """A console command (``$ `` lines, with ``\\`` continuations) and the error it must print, if any."""

    line: int
    text: str
    error: str | None = None


@dataclass
class _Markers:
    skip: str | None = None
    long: bool = False
    after: bool = False
    lines: list[int] = field(default_factory=list)


def _markers(lines: list[str], end: int, page: Path, offset: int) -> _Markers:
    """The markers on the lines just above ``lines[end]`` (a fence): a stack of comment lines."""
    found = _Markers()
    i = end - 1
    while i >= 0 and MARKER.match(lines[i]):
        body = MARKER.match(lines[i]).group("body")  # type: ignore[union-attr]
        where = f"{page}:{offset + i + 1}"
        skip = SKIP.match(body)
        if skip:
            found.skip = skip.group("reason").strip()
        elif body.startswith("skip"):
            raise DocsSyntaxError(f"{where}: a skip marker needs its reason: <!-- test: skip (why it cannot run) -->")
        elif body == "long":
            found.long = True
        elif body == "continue":
            found.after = True
        else:
            raise DocsSyntaxError(f"{where}: unknown marker {body!r}; use skip (reason), long or continue")
        found.lines.append(offset + i + 1)
        i -= 1
    return found


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return stripped.startswith(fence) and set(stripped) == {fence[0]}


def _strip_options(body: list[str]) -> int:
    """How many leading lines of a directive body are its options (``:key: value`` or a ``---`` block)."""
    if body and body[0].strip() == "---":
        for i in range(1, len(body)):
            if body[i].strip() == "---":
                return i + 1
        return len(body)
    n = 0
    while n < len(body) and re.match(r"^\s*:[\w-]+:", body[n]):
        n += 1
    return n


def parse_blocks(text: str, page: Path) -> list[Block]:
    """Every python and console block of a Markdown page, in page order (nested in directives too)."""
    blocks: list[Block] = []
    stray: set[int] = set()
    _parse(text.splitlines(), page, 0, blocks, stray)
    if stray:
        raise DocsSyntaxError(f"{page}:{min(stray)}: a test marker must be on the line just above a python or "
                              "console block's fence")
    return blocks


def _parse(lines: list[str], page: Path, offset: int, blocks: list[Block], stray: set[int]) -> None:
    """Blocks of ``lines``, the page's lines from ``offset + 1`` on; ``stray`` collects markers no block took."""
    i = 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if not opened or (opened.group("fence")[0] == "`" and "`" in opened.group("info")):
            if MARKER.match(lines[i]):
                stray.add(offset + i + 1)
            i += 1
            continue
        fence, info = opened.group("fence"), opened.group("info").strip()
        end = i + 1
        while end < len(lines) and not _closes(lines[end], fence):
            end += 1
        indent = len(opened.group("indent"))
        body = [line[indent:] if line[:indent].strip() == "" else line.lstrip() for line in lines[i + 1:end]]
        words = info.split()
        lang = words[0] if words else ""
        first = offset + i + 2  # the page line of the body's first line
        if lang in CODE_DIRECTIVES:
            lang = words[1] if len(words) > 1 else ""
            skip = _strip_options(body)
            while skip < len(body) and not body[skip].strip():  # the blank line after the options
                skip += 1
            body, first = body[skip:], first + skip
        if lang in RUN:
            markers = _markers(lines, i, page, offset)
            stray.difference_update(markers.lines)
            blocks.append(Block(page, first, lang, "\n".join(body) + "\n", markers.skip, markers.long, markers.after))
        elif lang.startswith("{") and lang not in NOT_MARKDOWN:
            skip = _strip_options(body)
            _parse(body[skip:], page, first + skip - 1, blocks, stray)
        i = end + 1


def console_commands(block: Block) -> list[Command]:
    """The commands of a console block: ``$ `` lines (a trailing ``\\`` continues on the next line),
    each with the ``ppokit: error:`` line right after it, if there is one."""
    commands: list[Command] = []
    lines = block.code.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            i += 1
            continue
        start, text = i, lines[i][2:]
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text += "\n" + lines[i]  # bash reads backslash-newline as a continuation
        command = Command(block.line + start, text)
        if i + 1 < len(lines) and lines[i + 1].startswith(ERROR_PREFIX):
            i += 1
            command.error = lines[i].rstrip()
        commands.append(command)
        i += 1
    return commands


def error_pattern(expected: str) -> re.Pattern[str]:
    """The expected error line as a pattern: ``...`` stands for any text (a path, a number)."""
    return re.compile(".*?".join(re.escape(part) for part in expected.split("...")))


def command_env(bin_dir: Path, source_root: Path) -> dict[str, str]:
    """The environment of a console command: the venv's bin first on PATH, this checkout's ppokit."""
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(source_root), env.get("PYTHONPATH", "")) if p)
    env.setdefault("MPLBACKEND", "Agg")
    env.setdefault("TQDM_DISABLE", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_command(command: Command, cwd: Path, env: dict[str, str], timeout: float, where: str) -> None:
    """Run one console command in ``cwd``; raise AssertionError unless it did what the page shows."""
    try:
        done = subprocess.run(["bash", "-c", command.text], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"{where}: `{command.text}` ran past {timeout:.0f} s") from err
    output = (done.stdout or "") + (done.stderr or "")
    tail = output[-3000:]
    if command.error is None:
        assert done.returncode == 0, (
            f"{where}: `{command.text}` exited {done.returncode} (the page expects success)\n{tail}")
        return
    assert done.returncode == 2, (
        f"{where}: `{command.text}` exited {done.returncode}; the page shows an error, so it must exit 2\n{tail}")
    pattern = error_pattern(command.error)
    assert any(pattern.fullmatch(line.rstrip()) for line in output.splitlines()), (
        f"{where}: `{command.text}` did not print the error the page shows:\n  expected: {command.error}\n"
        f"  printed:\n{tail}")


def python_bin_dir() -> Path:
    """The bin directory of the interpreter running the tests (the venv's)."""
    return Path(sys.executable).parent


class PageFailed(AssertionError):
    """A block of the page did not do what the page shows; the message names the page line."""


def run_python(block: Block, module: types.ModuleType, root: Path) -> None:
    """Run a python block in the page's ``__main__``; a failure shows the traceback from the block on."""
    # Padded so that the traceback names the page's own line numbers.
    code = compile("\n" * (block.line - 1) + block.code, str(root / block.page), "exec")
    try:
        exec(code, module.__dict__)
    except Exception as err:
        tb = err.__traceback__.tb_next if err.__traceback__ else None  # from the block's own frame on
        failure = "".join(traceback.format_exception(type(err), err, tb))
        raise PageFailed(f"{block.where}: the python block raised\n{failure}") from None


def run_page(page: Path, root: Path, cwd: Path, timeout: float) -> None:
    """Run the page's blocks top to bottom in ``cwd``, in this process (which must be the page's own):
    python blocks in one ``__main__`` (``cwd`` first on ``sys.path``, so a module a block writes can be
    imported, and classes a block defines pickle by name), console blocks as shell commands in ``cwd``
    with this venv's ``bin`` first on ``PATH``."""
    blocks = [b for b in parse_blocks((root / page).read_text(encoding="utf-8"), page) if not b.skip]
    os.chdir(cwd)
    env = command_env(python_bin_dir(), root)
    os.environ.update({"MPLBACKEND": "Agg", "TQDM_DISABLE": "1", "PATH": env["PATH"], "PYTHONPATH": env["PYTHONPATH"]})
    sys.path[:0] = [str(cwd), str(root)]
    main = types.ModuleType("__main__")
    main.__file__ = str(cwd / "__main__.py")
    sys.modules["__main__"] = main
    for block in blocks:
        if block.kind == "python":
            run_python(block, main, root)
        else:
            for command in console_commands(block):
                try:
                    run_command(command, cwd, env, timeout, f"{page}:{command.line}")
                except AssertionError as err:
                    raise PageFailed(str(err)) from None


if __name__ == "__main__":  # python -m tests.docs.examples PAGE ROOT DIR TIMEOUT
    page_arg, root_arg, cwd_arg, timeout_arg = sys.argv[1:5]
    try:
        run_page(Path(page_arg), Path(root_arg), Path(cwd_arg), float(timeout_arg))
    except PageFailed as failure:
        print(failure, file=sys.stderr)
        sys.exit(1)
