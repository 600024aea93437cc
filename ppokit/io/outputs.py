"""Where a command may write a path the user named: one check for every writer.

``ppokit export -o``, ``eval --out`` and ``--video``, ``plot -o``, ``package OUT_DIR``, ``tune --out``
and a new run's ``--run-dir`` all call :func:`check_output` before they write anything. It refuses,
in one line naming the flag and the path:

* a target that is not what the writer makes: a device node, FIFO or socket (a rename over
  ``/dev/null`` replaces it), a symbolic link (the rename replaces the link, not what it points to),
  a directory where a file is meant, a file where a directory is meant;
* a path inside what ppokit reads back: a run's ``model``, ``best``, ``checkpoints``, ``tensorboard``
  and model directories, a saved model or checkpoint anywhere, or one of a run's own files;
* an existing file (or a directory that holds files) without ``overwrite``;
* a parent that is a file (``-o somefile/x.onnx``) or a directory this process cannot write into.

It checks, it does not create: the writers still write atomically (:mod:`ppokit.io.atomic`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Literal

from ppokit.errors import ConfigError

Kind = Literal["file", "dir"]

#: A run directory holds one of these (io.run_dir.RUN_MARKERS), and a group of seeds its seeds.json.
RUN_MARKERS = ("config.yaml", "metrics.jsonl", "seeds.json")
#: What marks a directory whose loss would lose training: a group of seeds, a tune study.
GROUP_MARKERS = ("seeds.json", "trials.jsonl", "study.db")
#: The directories of a run that ppokit writes and reads back: nothing else writes inside them.
RUN_OWNED_DIRS = ("model", "best", "checkpoints", "tensorboard", "policy", "policy_adapter", "value_model",
                  "model_adapter")
#: A run's own files: never replaced by another command's output, even with --overwrite.
RUN_OWNED_FILES = ("config.yaml", "metrics.jsonl", "eval.json", "summary.json", "seeds.json", "probe.json",
                   "trials.jsonl", "best.yaml", "study.db", ".lock", "tracker_state.json")


def _kind_of(mode: int) -> str | None:
    """What a non-regular, non-directory file is, in words (None for a regular file or a directory)."""
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return None


def holds_run(directory: Path) -> bool:
    return any((directory / marker).is_file() for marker in RUN_MARKERS)


def _is_a_run(directory: Path) -> bool:
    """A run (its metrics, or its config with what training saves), not a package of one: a package
    holds a copy of the run's config.yaml and its weights, but no metrics or model/checkpoints folder."""
    return (directory / "metrics.jsonl").is_file() or any((directory / m).is_file() for m in GROUP_MARKERS) or (
        (directory / "config.yaml").is_file() and any((directory / name).is_dir() for name in RUN_OWNED_DIRS))


def run_below(directory: Path, depth: int = 2, budget: int = 2000) -> Path | None:
    """A run, group of seeds or tune study inside ``directory`` (up to ``depth`` levels down), or None.
    Bounded: a huge tree is looked at for its first ``budget`` entries only."""
    level = [directory]
    for _ in range(depth):
        children: list[Path] = []
        for parent in level:
            try:
                entries = [e for e in os.scandir(parent) if e.is_dir(follow_symlinks=False)]
            except OSError:
                continue
            for entry in entries:
                child = Path(entry.path)
                if _is_a_run(child):
                    return child
                children.append(child)
                budget -= 1
                if budget <= 0:
                    return None
        level = children
    return None


def holds_saved_model(directory: Path) -> bool:
    """A saved control policy or checkpoint (state.json, resume.json), or a save_pretrained model."""
    return ((directory / "state.json").is_file() and (directory / "model.safetensors").is_file()) \
        or (directory / "resume.json").is_file() \
        or ((directory / "config.json").is_file() and any(directory.glob("*.safetensors")))


def _is_a_study(directory: Path) -> bool:
    return any((directory / m).is_file() for m in ("trials.jsonl", "study.db")) and not (
        directory / "metrics.jsonl").is_file() and not (directory / "seeds.json").is_file()


def protected_owner(path: Path, *, run_itself: bool = False, study_itself: bool = False) -> str | None:
    """Why ``path`` (absolute) lies in something ppokit reads back, or None when it does not.
    ``run_itself``: ``path`` may be a run directory (a new run's --run-dir, with --overwrite);
    ``study_itself``: it may be a tune study's directory (``tune --out`` resumes into its own)."""
    if holds_run(path.parent) and path.name in RUN_OWNED_FILES:
        return f"it is the run {path.parent}'s own {path.name}"
    for directory in (path, *path.parents):
        if directory.name in RUN_OWNED_DIRS and holds_run(directory.parent):
            where = "it is" if directory == path else "it is inside"
            return f"{where} {directory}, which the run {directory.parent} writes and reads back"
        if directory != path and holds_saved_model(directory):
            return f"it is inside {directory}, a saved model or checkpoint"
        if directory == path and not run_itself and path.is_dir() and _is_a_run(path) and not (
                study_itself and _is_a_study(path)):
            return f"it is the run directory {path}"
    return None


def check_output(path: str | Path, *, kind: Kind = "file", overwrite: bool = False, flag: str = "--out",
                 must_be_empty: bool = True, study: bool = False) -> Path:
    """Refuse a user-named output ``path`` that writing would destroy or misplace (see the module doc);
    returns it as an absolute path. ``flag`` names it in the error (``-o``, ``OUT_DIR``).

    ``kind="dir"``: ``path`` must be a directory or not exist; with ``must_be_empty`` one that holds
    files needs ``overwrite`` (``tune --out`` resumes into its directory, so it passes False, and
    ``study``: the directory may be a study's own).
    """
    given = str(path)
    where = f"{flag} {given}"
    target = Path(os.path.abspath(path))
    try:
        mode: int | None = os.lstat(target).st_mode
    except FileNotFoundError:
        mode = None
    except NotADirectoryError:
        mode = None  # a parent is a file: said below
    except OSError as err:
        raise ConfigError(f"{where}: cannot be read ({err.strerror or err})") from None
    meant = "a file" if kind == "file" else "a directory"
    if mode is not None:
        odd = _kind_of(mode)
        if odd is not None:
            raise ConfigError(f"{where}: is {odd}, not {meant}; name a new path (ppokit never writes over one)")
        if kind == "file" and stat.S_ISDIR(mode):
            raise ConfigError(f"{where}: is a directory; name a file")
        if kind == "dir" and not stat.S_ISDIR(mode):
            raise ConfigError(f"{where}: is a file, not a directory; name a directory")
    reason = protected_owner(target, study_itself=study)
    if reason is not None:
        raise ConfigError(f"{where}: {reason}; ppokit never writes its outputs there; choose a path outside it")
    if mode is not None and not overwrite:
        if kind == "file":
            raise ConfigError(f"{where}: exists; pass --overwrite to replace it (it is replaced only once the new "
                              "one is complete)")
        if must_be_empty and _holds_files(target, where):
            raise ConfigError(f"{where}: exists and is not empty; pass --overwrite to replace it (it is replaced "
                              "only once the new one is complete)")
    if mode is not None and kind == "dir" and must_be_empty and overwrite:
        inner = run_below(target)
        if inner is not None:  # replacing the directory would delete what trained there
            raise ConfigError(f"{where}: holds the run {inner}; replacing {given} would delete it, even with "
                              "--overwrite; choose another path")
    _check_parent(target, where)
    return target


def _holds_files(directory: Path, where: str) -> bool:
    try:
        return any(directory.iterdir())
    except OSError as err:
        raise ConfigError(f"{where}: cannot be read ({err.strerror or err})") from None


def _check_parent(target: Path, where: str) -> None:
    """The nearest existing ancestor must be a directory this process may create entries in."""
    for parent in target.parents:
        try:
            mode = os.stat(parent).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as err:
            raise ConfigError(f"{where}: {parent} cannot be read ({err.strerror or err})") from None
        if not stat.S_ISDIR(mode):
            raise ConfigError(f"{where}: {parent} is a file, not a directory")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"{where}: cannot write into {parent} (permission denied)")
        return


def check_run_dir(path: str | Path, flag: str = "--run-dir", *, group: bool = False) -> None:
    """A new run's directory: never inside another run's model, checkpoints or tensorboard, nor a
    saved model or checkpoint, nor a directory that holds other runs or is a group of seeds when
    this is one run (``group``: a group of seeds, ``train --seeds``, whose directory is one run's when
    it holds one): a run there would mix its files with what ppokit reads back. An existing run of
    the same kind there is :func:`ppokit.io.run_dir.prepare_run_dir`'s to refuse or clear."""
    target = Path(os.path.abspath(path))
    try:
        mode = os.stat(target).st_mode  # a link to a directory is a directory the user chose
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    except OSError as err:
        raise ConfigError(f"{flag} {path}: cannot be read ({err.strerror or err})") from None
    if mode is not None and not stat.S_ISDIR(mode):
        what = _kind_of(mode) or ("a file" if stat.S_ISREG(mode) else "not a directory")
        raise ConfigError(f"{flag} {path}: is {what}, not a directory; name a directory")
    reason = protected_owner(target, run_itself=True)
    if reason is None and target.is_dir() and holds_saved_model(target):
        reason = "it is a saved model or checkpoint"
    if reason is not None:
        raise ConfigError(f"{flag} {path}: {reason}; choose a run directory outside it")
    if target.is_dir():
        is_group = (target / "seeds.json").is_file()
        is_run = not is_group and any((target / m).is_file() for m in ("config.yaml", "metrics.jsonl"))
        if is_group and not group:
            raise ConfigError(f"{flag} {path}: holds a group of seeds (train --seeds); continue it with `ppokit resume "
                              f"{path}`, or choose another --run-dir for this run")
        if is_run and group:
            raise ConfigError(f"{flag} {path}: holds a single run; continue it with `ppokit resume {path}`, or choose "
                              "another --run-dir for the group of seeds")
        inner = None if is_group or is_run else run_below(target)
        if inner is not None:
            raise ConfigError(f"{flag} {path}: holds other runs ({inner}); a run directory is new or holds that one "
                              f"run: choose a new one, e.g. {os.path.join(str(path), 'my-run')}")
    _check_parent(target, f"{flag} {path}")
