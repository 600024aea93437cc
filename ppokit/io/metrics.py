"""Metric sinks: one JSON object per update in metrics.jsonl, TensorBoard scalars, and the run's
experiment trackers (:mod:`ppokit.io.trackers`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ppokit.io.atomic import strict_json
from ppokit.io.lock import RunLock
from ppokit.io.trackers import Status, TrackerSet


class MetricsLogger:
    """Appends each record to ``metrics.jsonl`` (flushed per line) and mirrors numbers to TensorBoard
    and the trackers."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, purge_step: int | None = None,
                 lock: RunLock | None = None, trackers: TrackerSet | None = None) -> None:
        """``purge_step``: when resuming, TensorBoard drops the events at or after this step that the
        interrupted run wrote after its checkpoint. ``lock``: the run directory's lock, released on
        :meth:`close` (this logger is the run's writer). ``trackers``: ended on :meth:`close`."""
        self.lock = lock
        self.trackers = trackers or TrackerSet()
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: it is slow to import

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=purge_step)

    def log(self, record: Mapping[str, Any], step: int, prefix: str = "train") -> None:
        self._file.write(strict_json(dict(record)) + "\n")
        self._file.flush()
        if self._tb is not None:
            from tensorboard.compat.proto.summary_pb2 import Summary

            # One event holding every scalar of the row: add_scalar per key writes an event each,
            # ~20 µs apiece, which was several percent of a small control run.
            values = [Summary.Value(tag=f"{prefix}/{key}", simple_value=float(value)) for key, value in record.items()
                      if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value]
            self._tb._get_file_writer().add_summary(Summary(value=values), step)
        self.trackers.log(record, step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self._tb is not None:
            self._tb.add_text(tag, text, step)

    def finish(self, summary: Mapping[str, Any] | None, model_dir: Path | None) -> None:
        """Send the trackers the run's final figures and its saved model (before :meth:`close`)."""
        self.trackers.finish(summary, model_dir)

    def close(self, status: Status = "finished") -> None:
        self.trackers.close(status)
        self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        from ppokit.errors import TrainingInterrupted

        interrupted = exc_type is not None and issubclass(exc_type, (KeyboardInterrupt, TrainingInterrupted))
        self.close("finished" if exc_type is None else "killed" if interrupted else "failed")


class NullMetrics(MetricsLogger):
    """The metrics logger of a process that writes nothing: every rank of a data-parallel run but 0."""

    def __init__(self) -> None:  # opens nothing, so MetricsLogger.__init__ is not called
        self.lock = None
        self.trackers = TrackerSet()

    def log(self, record: Mapping[str, Any], step: int, prefix: str = "train") -> None:
        pass

    def text(self, tag: str, text: str, step: int) -> None:
        pass

    def finish(self, summary: Mapping[str, Any] | None, model_dir: Path | None) -> None:
        pass

    def close(self, status: Status = "finished") -> None:
        pass


#: The counters a metrics row is placed by (control: env steps and updates; RLHF PPO: updates; SFT and
#: reward training: optimiser steps). Each one a row has must be a count a run could reach.
COUNTERS = ("global_step", "update", "step")
_LARGEST_COUNT = 2**63 - 1


def parse_row(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """One line of a metrics.jsonl as ``(row, "")``, or ``(None, why it is not a row)``: damage (bytes
    that are not UTF-8, not JSON, nesting too deep to read, a counter that is not a count, a number
    too large for a float) is reported, never raised, so every reader can skip it the same way."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not UTF-8"
    try:
        row = json.loads(text)
    except RecursionError:
        return None, "nested too deeply"
    except ValueError:
        return None, "not JSON"
    if not isinstance(row, dict):
        return None, "not a JSON object"
    counters = [key for key in COUNTERS if key in row]
    if not counters:
        return None, f"none of {', '.join(COUNTERS)}"
    for key in counters:
        value = row[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _LARGEST_COUNT:
            return None, f"{key} is not a step count"
    # A plot or a float() of a 400-digit integer overflows; no metric a run logs is that large.
    if any(isinstance(v, int) and not isinstance(v, bool) and abs(v) > _LARGEST_COUNT for v in row.values()):
        return None, "a number too large"
    return row, ""


def read_rows(path: str | Path, key: str | None = None) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """``(rows, skipped)`` of a metrics.jsonl: the rows :func:`parse_row` accepts (and, with ``key``,
    that have that counter), and ``(line number, why)`` of each line skipped. A torn final line (a
    run killed mid-write, or one being written now) is left out without being counted. An absent
    file has no rows; one that cannot be read raises OSError."""
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    rows: list[dict[str, Any]] = []
    skipped: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row, why = parse_row(line)
        if row is not None and key is not None and key not in row:
            row, why = None, f"no {key}"
        if row is None:
            skipped.append((number, why))
        else:
            rows.append(row)
    if torn.strip():
        row, _ = parse_row(torn)
        if row is not None and (key is None or key in row):
            rows.append(row)
    return rows, skipped


def truncate_metrics(path: str | Path, key: str, last: int) -> None:
    """Drop the rows of a metrics.jsonl whose ``key`` is beyond ``last`` (and a torn final line), so a
    resumed run does not log the steps after its checkpoint twice. Rewritten atomically. Damaged
    lines are kept byte for byte (the readers skip them and say so): a resume does not erase what
    someone may want to look at."""
    from ppokit.io.atomic import atomic_write_bytes

    path = Path(path)
    if not path.exists():
        return
    lines = path.read_bytes().split(b"\n")
    changed = lines.pop() != b""  # a line cut short by the crash
    kept = []
    for line in lines:
        row, _ = parse_row(line)
        if row is not None and isinstance(row.get(key), int) and row[key] > last:
            changed = True
            continue
        kept.append(line)
    if changed:
        atomic_write_bytes(path, b"".join(line + b"\n" for line in kept))
