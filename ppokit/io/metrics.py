"""Metric sinks: one JSON object per update in metrics.jsonl, TensorBoard scalars, and the run's
experiment trackers (:mod:`ppokit.io.trackers`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ppokit.io.atomic import json_safe
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
        self._file.write(json.dumps(json_safe(dict(record))) + "\n")
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


def truncate_metrics(path: str | Path, key: str, last: int) -> None:
    """Drop the rows of a metrics.jsonl whose ``key`` is beyond ``last`` (and a torn final line), so a
    resumed run does not log the steps after its checkpoint twice. Rewritten atomically."""
    from ppokit.io.atomic import atomic_write_text

    path = Path(path)
    if not path.exists():
        return
    kept = []
    changed = False
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            changed = True  # a line cut short by the crash
            continue
        if isinstance(row, dict) and isinstance(row.get(key), (int, float)) and row[key] > last:
            changed = True
            continue
        kept.append(line)
    if changed:
        atomic_write_text(path, "".join(line + "\n" for line in kept))
