"""Atomic file and directory writes: a reader sees the old version or the new one, never half."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ppokit.errors import CheckpointError


@contextlib.contextmanager
def reported_os_errors(path: str | Path) -> Iterator[None]:
    """Turn an OSError while writing ``path`` (a read-only or full disk, a file where a directory
    should be) into a one-line :class:`CheckpointError` that names the path and says what survives."""
    try:
        yield
    except OSError as err:
        reason = err.strerror or type(err).__name__
        where = f" ({err.filename})" if err.filename and str(err.filename) != str(path) else ""
        raise CheckpointError(f"cannot write {path}: {reason}{where}; nothing already saved was lost "
                              "(every write goes to a temporary name first)") from None


def current_umask() -> int:
    """The process's umask (read by setting it, then putting it back: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    with reported_os_errors(path):
        _atomic_write_bytes(Path(path), data)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    refuse_non_regular(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; a plain open() would honour the umask
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(value: Any) -> Any:
    """Replace NaN and infinities (not valid JSON) with None, recursively."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def strict_json(data: Any, **kwargs: Any) -> str:
    """``data`` as standard JSON, which strict parsers accept: NaN and infinities become null
    (:func:`json_safe`), and ``allow_nan=False`` makes any that slipped through an error, not a
    ``NaN`` token. Every JSON file or line ppokit writes or prints for users goes through here."""
    return json.dumps(json_safe(data), allow_nan=False, **kwargs)


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, strict_json(data, indent=2, sort_keys=False) + "\n")


#: What marks a directory moved aside by :func:`atomic_write_dir` as ppokit's own: ``.NAME`` + this +
#: a random suffix. A user's ``.NAME.old`` (or anything else) never matches, so it is never adopted or deleted.
ASIDE_TAG = ".ppokit-aside-"


def aside_name(path: Path) -> Path:
    """A fresh, unused name beside ``path`` for its previous version during a replacement."""
    return path.with_name(f".{path.name}{ASIDE_TAG}{secrets.token_hex(6)}")


def asides(path: Path) -> list[Path]:
    """The directories :func:`atomic_write_dir` moved aside from ``path`` and has not yet removed, newest first."""
    found = [p for p in path.parent.glob(f".{glob.escape(path.name)}{ASIDE_TAG}*")
             if p.is_dir() and not p.is_symlink() and len(p.name) == len(path.name) + 1 + len(ASIDE_TAG) + 12]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def recover_dir(path: str | Path) -> Path:
    """Finish a replacement :func:`atomic_write_dir` was killed in the middle of.

    Replacing a directory takes two renames (old aside, new in); a kill between them leaves only
    the old one, under its aside name. Put it back, so readers find the previous version. Only
    ppokit's own aside names (:data:`ASIDE_TAG`) are recognised; asides left beside a complete
    ``path`` (a kill while deleting one) are removed.
    """
    path = Path(path)
    if not path.name:  # '.', '/': nothing of ours to recover
        return path
    found = asides(path)
    if found and not path.exists() and not path.is_symlink():
        os.replace(found.pop(0), path)
        _fsync_dir(path.parent)
    for stale in found:
        shutil.rmtree(stale, ignore_errors=True)
    return path


def refuse_non_regular(path: Path, kind: str = "file") -> None:
    """An existing ``path`` that a rename would destroy (a device node, FIFO, socket, or what is not
    a ``kind``) is refused: a safety net under every writer, whatever checked its path before."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    wanted = stat.S_ISREG(mode) if kind == "file" else stat.S_ISDIR(mode)
    if not wanted:
        what = "a directory" if stat.S_ISDIR(mode) else "a file" if stat.S_ISREG(mode) else "not a regular file"
        raise CheckpointError(f"cannot write {path}: it is {what}, not the {kind} ppokit writes there; nothing was "
                              "replaced")


def atomic_write_dir(path: str | Path, fill: Callable[[Path], None]) -> None:
    """Create directory ``path`` atomically: ``fill`` writes into a temporary sibling, then it is renamed.

    An existing ``path`` is replaced only after the new one is complete, so killing the process at
    any moment leaves either the old directory or the new one in place (between the two renames of a
    replacement, the old one under a temporary name that :func:`recover_dir` restores).
    """
    with reported_os_errors(path):
        _atomic_write_dir(Path(path), fill)


def _atomic_write_dir(path: Path, fill: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    if path.is_symlink():
        raise CheckpointError(f"cannot write {path}: it is a symbolic link; nothing was replaced")
    refuse_non_regular(path, "directory")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; a plain mkdir would honour the umask
    try:
        fill(tmp)
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
            elif child.is_dir():
                _fsync_dir(child)
        _fsync_dir(tmp)
        if path.exists():
            old = aside_name(path)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)
