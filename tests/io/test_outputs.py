"""Every command that writes a path the user named, against every kind of target that writing would
destroy or misplace (issue 30, class 1): the test generates the pairs (writer × bad target) rather
than listing cases. Each refusal must be exit code 2, one line ``ppokit: error: ...`` naming the
path, no traceback, and the whole directory tree around it byte for byte as it was.

Against the code before ppokit.io.outputs (commit 1b979f1; run as root, so the "unwritable" cases
skip), 52 of the 68 cases of this file failed: FIFOs and a link to a device replaced, the run's own
weights and logs overwritten, files replaced without --overwrite (there was no such flag), a path
under a file a traceback, a user's ``.pk2.old`` adopted, new runs started inside another run's
checkpoint, eval's default result written into the checkpoint it evaluated, and ``PPO.save`` over a
FIFO or a link to a device.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from ppokit.cli.main import main

SAVED = Path(__file__).resolve().parents[1] / "fixtures" / "saved_runs"


@dataclass(frozen=True)
class Writer:
    """One command that writes a user-named path: its argv given the run and the target, and what it makes."""

    name: str
    kind: str  # "file" or "dir"
    argv: Callable[[Path, Path], list[str]]
    overwrite: bool  # it has an --overwrite flag


WRITERS = [
    Writer("export -o", "file", lambda run, t: ["export", str(run), "--format", "torchscript", "-o", str(t)], True),
    Writer("eval --out", "file", lambda run, t: ["eval", str(run), "--episodes", "1", "--out", str(t)], True),
    Writer("plot -o", "file", lambda run, t: ["plot", str(run), "-o", str(t)], True),
    Writer("package OUT_DIR", "dir", lambda run, t: ["package", str(run), str(t)], True),
    Writer("eval --video", "dir", lambda run, t: ["eval", str(run), "--episodes", "1", "--video", str(t)], True),
    Writer("tune --out", "dir", lambda run, t: ["tune", "CartPole-v1", "--trials", "1", "--total-steps", "64",
                                                "--out", str(t)], False),
    Writer("train --run-dir", "dir", lambda run, t: ["train", "CartPole-v1", "--total-steps", "64", "--no-progress",
                                                     "--set", "num_envs=1", "--set", "num_steps=32",
                                                     "--run-dir", str(t)], True),
    Writer("rlhf sft --run-dir", "dir", lambda run, t: ["rlhf", "sft", "--model", str(SAVED / "base_lm"), "--data",
                                                        str(SAVED / "sft.jsonl"), "--run-dir", str(t)], True),
    Writer("rlhf demo --run-dir", "dir", lambda run, t: ["rlhf", "demo", "--total-updates", "1", "--no-progress",
                                                         "--run-dir", str(t)], True),
]


def _fifo(tmp: Path, run: Path, w: Writer) -> tuple[Path, list[str]]:
    os.mkfifo(tmp / "pipe")
    return tmp / "pipe", []


def _link_to_a_device(tmp: Path, run: Path, w: Writer) -> tuple[Path, list[str]]:
    # Stands in for /dev/null itself, which a test must not risk: the rename would replace the link.
    (tmp / "null").symlink_to(os.devnull)
    return tmp / "null", ["--overwrite"] if w.overwrite else []


def _the_other_kind(tmp: Path, run: Path, w: Writer) -> tuple[Path, list[str]]:
    """A directory where a file is meant, a file where a directory is meant (even with --overwrite)."""
    if w.kind == "file":
        (tmp / "adir").mkdir()
        (tmp / "adir" / "mine.txt").write_text("mine")
        return tmp / "adir", ["--overwrite"] if w.overwrite else []
    (tmp / "afile").write_text("mine")
    return tmp / "afile", ["--overwrite"] if w.overwrite else []


def _inside_the_run(tmp: Path, run: Path, w: Writer) -> tuple[Path, list[str]]:
    """The run's own weights (a file writer) or its logs (a directory writer), even with --overwrite."""
    target = run / "model" / "model.safetensors" if w.kind == "file" else run / "tensorboard"
    return target, ["--overwrite"] if w.overwrite else []


def _inside_a_checkpoint(tmp: Path, run: Path, w: Writer) -> tuple[Path, list[str]]:
    checkpoint = next((run / "checkpoints").iterdir())
    return checkpoint / ("new.bin" if w.kind == "file" else "new"), []


def _an_existing_one(tmp: Path, run: Path, w: Writer) -> tuple[Path | None, list[str]]:
    """An existing file, or a directory that holds files, without --overwrite."""
    if w.name == "tune --out" or w.name.endswith("--run-dir"):  # documented: a study resumes into its --out; a run
        return None, []  # directory may hold other files (one holding a run is refused by its own check)
    if w.kind == "file":
        (tmp / "mine.out").write_bytes(b"the user's file")
        return tmp / "mine.out", []
    (tmp / "full").mkdir()
    (tmp / "full" / "mine.txt").write_text("mine")
    return tmp / "full", []


def _under_a_file(tmp: Path, run: Path, w: Writer) -> tuple[Path, list[str]]:
    (tmp / "plain").write_text("mine")
    return tmp / "plain" / "out", []


def _unwritable(tmp: Path, run: Path, w: Writer) -> tuple[Path | None, list[str]]:
    if os.geteuid() == 0:
        return None, []  # root writes through any mode bits; the path under a file covers the OSError
    (tmp / "ro").mkdir()
    (tmp / "ro").chmod(0o500)
    return tmp / "ro" / "out", []


def _a_seed_group(tmp: Path, run: Path, w: Writer) -> tuple[Path, list[str]]:
    """A group of seeds (train --seeds): its own seeds.json (a file writer) or the group itself, even
    with --overwrite: it holds several trained runs."""
    group = Path(shutil.copytree(SAVED / "seeds", tmp / "group"))
    return group / "seeds.json" if w.kind == "file" else group, ["--overwrite"] if w.overwrite else []


def _a_folder_of_runs(tmp: Path, run: Path, w: Writer) -> tuple[Path | None, list[str]]:
    """A folder that holds runs (not a run itself), to be replaced with --overwrite or to start a run in."""
    if w.kind == "file" or w.name in ("tune --out", "rlhf demo --run-dir"):
        return None, []  # a file is not a folder; tune and the demo add their own folders beside the runs
    shutil.copytree(run, tmp / "runs" / "earlier")
    return tmp / "runs", ["--overwrite"] if w.overwrite else []


BAD_TARGETS = {
    "a seed group": _a_seed_group, "a folder of runs": _a_folder_of_runs,
    "a FIFO": _fifo, "a link to a device": _link_to_a_device, "the other kind": _the_other_kind,
    "inside the run": _inside_the_run, "inside a checkpoint": _inside_a_checkpoint,
    "existing, no --overwrite": _an_existing_one, "under a file": _under_a_file, "unwritable": _unwritable,
}


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under ``root``: its type and, for files and links, what they hold (FIFOs are not opened)."""
    seen: dict[str, object] = {}
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(dirpath, name)
            mode = os.lstat(path).st_mode
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(mode):
                seen[rel] = ("link", os.readlink(path))
            elif stat.S_ISREG(mode):
                seen[rel] = ("file", path.read_bytes())
            else:
                seen[rel] = (stat.S_IFMT(mode),)
    return seen


@pytest.fixture(autouse=True)
def _bounded():
    """A writer that opens a FIFO blocks until someone reads it: fail instead of hanging."""
    def expire(signum, frame):
        raise TimeoutError("a writer blocked for 60 s (on a FIFO?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A small saved control run (CartPole: a final model, a checkpoint, tensorboard logs, metrics)."""
    return Path(shutil.copytree(SAVED / "control", tmp_path / "run"))


@pytest.mark.parametrize("target", list(BAD_TARGETS))
@pytest.mark.parametrize("writer", WRITERS, ids=lambda w: w.name)
def test_every_writer_refuses_every_bad_target_and_changes_nothing(writer, target, run, tmp_path, capsys):
    path, extra = BAD_TARGETS[target](tmp_path, run, writer)
    if path is None:
        pytest.skip("not a bad target for this writer (see the case's docstring)")
    before = snapshot(tmp_path)
    capsys.readouterr()
    code = main([*writer.argv(run, path), *extra])
    _, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith("ppokit: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and str(path) in err, err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("writer", WRITERS[:4], ids=lambda w: w.name)
def test_scratch_names_never_take_a_users_file(writer, run, tmp_path, capsys):
    """What an atomic write puts aside or writes first has a name of its own: the user's
    ``.NAME.old`` and ``.NAME.partial`` beside the target are neither adopted, replaced nor deleted."""
    target = tmp_path / {"export -o": "out.pt", "eval --out": "out.json", "plot -o": "out.png"}.get(writer.name, "pk2")
    mine = {}
    for suffix in (".old", ".partial", ".tmp"):
        aside = target.with_name(f".{target.name}{suffix}")
        aside.mkdir()
        (aside / "mine.txt").write_text(f"the user's {suffix}")
        mine[aside] = snapshot(aside)
    for attempt in range(2):  # the second write replaces the first, through the aside name
        capsys.readouterr()
        code = main([*writer.argv(run, target), *(["--overwrite"] if attempt else [])])
        _, err = capsys.readouterr()
        assert code == 0, err
        assert target.is_dir() if writer.kind == "dir" else target.is_file()
    for aside, held in mine.items():
        assert snapshot(aside) == held
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted(a.name for a in mine)


def test_eval_of_a_checkpoint_writes_into_the_runs_evals_not_the_checkpoint(run, capsys):
    """The default --out of a checkpoint's evaluation: the run's evals/ (before: inside the checkpoint,
    which pruning deletes)."""
    checkpoint = next((run / "checkpoints").iterdir())
    before = snapshot(checkpoint)
    assert main(["eval", str(checkpoint), "--episodes", "1"]) == 0
    assert snapshot(checkpoint) == before
    assert len(list((run / "evals").glob("eval_*.json"))) == 1


@pytest.mark.parametrize("target", ["a FIFO", "a link to a device", "the other kind", "under a file"])
def test_the_library_save_refuses_what_a_rename_would_destroy(target, run, tmp_path):
    """``PPO.save(path)`` (a user-named directory in Python) refuses the same non-directories: the
    safety net under every atomic write, whatever called it (before: a FIFO or a link replaced)."""
    from ppokit import PPO
    from ppokit.errors import PPOKitError

    agent = PPO.load(run)
    path, _ = BAD_TARGETS[target](tmp_path, run, WRITERS[3])
    before = snapshot(tmp_path)
    with pytest.raises(PPOKitError) as refused:
        agent.save(path)
    assert "\n" not in str(refused.value) and str(path) in str(refused.value)
    assert snapshot(tmp_path) == before
