"""The one loop shell, driven by a fake trainer: checkpoints, stops, errors, signals."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from ppokit.errors import TrainingError, TrainingInterrupted
from ppokit.io.checkpoints import RESUME_FILE, checkpoint_dirs, checkpoint_path
from ppokit.io.loop import LoopPlan, run_loop
from ppokit.io.metrics import MetricsLogger


class FakeTrainer:
    def __init__(self, run_dir: Path, fail_at: int | None = None, finish_at: int | None = None,
                 signal_at: int | None = None) -> None:
        self.run_dir = run_dir
        self.num_updates = 0
        self.fail_at, self.finish_at, self.signal_at = fail_at, finish_at, signal_at
        self.saved: list[int] = []

    def update(self) -> dict[str, Any]:
        if self.num_updates + 1 == self.fail_at:
            raise TrainingError("non-finite loss")
        self.num_updates += 1
        if self.num_updates == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"update": self.num_updates, "score": float(self.num_updates)}

    def after_update(self, record: dict[str, Any]) -> bool:
        record["extra"] = True
        return self.num_updates == self.finish_at

    def checkpoint_path(self) -> Path:
        return checkpoint_path(self.run_dir, self.num_updates)

    def save_checkpoint(self) -> Path:
        path = self.checkpoint_path()
        path.mkdir(parents=True)
        (path / RESUME_FILE).write_text("{}")
        self.saved.append(self.num_updates)
        return path


def _run(trainer: FakeTrainer, updates: int = 5, every: int = 2, callback=None) -> list[dict]:
    plan = LoopPlan(updates=updates, desc="test", checkpoint_every=every, checkpoint_minutes=0,
                    x_axis=lambda r: r["update"], progress=False)
    with MetricsLogger(trainer.run_dir, tensorboard=False) as metrics:
        run_loop(trainer, plan, metrics, callback)
    import json

    return [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]


def test_every_update_is_logged_and_checkpoints_come_when_due_and_at_the_end(tmp_path):
    trainer = FakeTrainer(tmp_path)
    rows = _run(trainer)
    assert [r["update"] for r in rows] == [1, 2, 3, 4, 5] and all(r["extra"] for r in rows)
    assert trainer.saved == [2, 4, 5]  # every 2nd, and the final state once
    assert [p.name for p in checkpoint_dirs(tmp_path)][-1] == "update_000000000005"


def test_the_front_end_and_the_callback_can_stop_early(tmp_path):
    trainer = FakeTrainer(tmp_path / "a", finish_at=3)
    assert [r["update"] for r in _run(trainer, every=0)] == [1, 2, 3]
    assert trainer.saved == [3]
    other = FakeTrainer(tmp_path / "b")
    assert [r["update"] for r in _run(other, every=0, callback=lambda r: r["update"] < 2)] == [1, 2]
    assert other.saved == [2]


def test_a_failed_update_names_it_and_the_intact_checkpoint(tmp_path):
    trainer = FakeTrainer(tmp_path, fail_at=4)
    with pytest.raises(TrainingError, match=r"update 4: non-finite loss; the last checkpoint, .*update_000000000002, is intact"):
        _run(trainer)
    assert trainer.saved == [2]


def test_a_signal_finishes_the_update_checkpoints_and_stops(tmp_path):
    trainer = FakeTrainer(tmp_path, signal_at=3)
    with pytest.raises(TrainingInterrupted) as info:
        _run(trainer, every=0)
    assert info.value.signal_name == "SIGTERM" and info.value.checkpoint.endswith("update_000000000003")
    assert info.value.resume_command == f"ppokit resume {tmp_path}"
    assert trainer.saved == [3]
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back
