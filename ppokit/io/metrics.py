"""Metric sinks: one JSON object per update in metrics.jsonl, and TensorBoard scalars."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ppokit.io.atomic import json_safe


class MetricsLogger:
    """Appends each record to ``metrics.jsonl`` (flushed per line) and mirrors numbers to TensorBoard."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: it is slow to import

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def log(self, record: Mapping[str, Any], step: int, prefix: str = "train") -> None:
        self._file.write(json.dumps(json_safe(dict(record))) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
                    self._tb.add_scalar(f"{prefix}/{key}", value, step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self._tb is not None:
            self._tb.add_text(tag, text, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
