"""Live warnings: what each check catches, and the monitor that reports what persists."""

from __future__ import annotations

import logging

import pytest

from ppokit.core import health
from ppokit.core.health import HealthMonitor, health_warnings

GOOD = {"clip_fraction": 0.1, "entropy": 1.0, "value_loss": 1.0, "policy_loss": 0.01, "approx_kl_k3": 0.01,
        "explained_variance": 0.5}


@pytest.mark.parametrize("change,key", [
    ({"clip_fraction": 0.8}, "clip_fraction"),
    ({"entropy": 0.05}, "entropy_collapse"),
    ({"value_loss": 500.0}, "value_scale"),
    ({"approx_kl_k3": 0.5}, "kl"),
    ({"explained_variance": -2.0}, "value_fit"),
])
def test_each_check_fires_on_its_symptom_alone(change, key):
    kwargs = dict(progress=0.21, initial_entropy=1.0, target_kl=None, normalize_reward=False, shared_trunk=True)
    assert health_warnings(GOOD, **kwargs) == []
    assert [k for k, _ in health_warnings({**GOOD, **change}, **kwargs)] == [key]


def test_the_monitor_logs_a_warning_once_after_it_persists_and_saves_its_state(caplog):
    monitor = HealthMonitor(target_kl=0.01, normalize_reward=False, shared_trunk=False)
    bad = {**GOOD, "approx_kl_k3": 1.0}
    with caplog.at_level(logging.WARNING, logger="ppokit"):
        logging.getLogger("ppokit").setLevel(logging.WARNING)
        for update in range(1, 3):
            assert monitor.check(dict(bad), 0.1, update)  # in the metrics row every time ...
        assert not caplog.records  # ... but not yet on the console
        state = monitor.state_dict()
        resumed = HealthMonitor(target_kl=0.01, normalize_reward=False, shared_trunk=False)
        resumed.load_state_dict(state)
        record = dict(bad)
        resumed.check(record, 0.1, 3)
        assert "warnings" in record and len(caplog.records) == 1 and "update 3" in caplog.text
        resumed.check(dict(bad), 0.1, 4)
        assert len(caplog.records) == 1  # once per kind
        resumed.check(dict(GOOD), 0.1, 5)
        assert resumed.streaks == {}
    assert monitor.initial_entropy == 1.0


def test_rlhf_runs_get_the_same_live_warnings(tmp_path, monkeypatch, caplog, tiny_lm):
    from ppokit.rlhf.config import RLHFConfig
    from ppokit.rlhf.ppo.trainer import RLHFTrainer
    from tests.rlhf.helpers import PROMPTS

    seen = []

    def checks(stats, **kwargs):
        seen.append((dict(stats), kwargs))
        return [("kl", "approx KL far above the target")]

    monkeypatch.setattr(health, "health_warnings", checks)
    config = RLHFConfig(policy=tiny_lm, rewards=["tests.rlhf.helpers:pleasant_minus_unpleasant"],
                        total_updates=3, batch_size=4, max_new_tokens=4, progress=False, tensorboard=False,
                        device="cpu", sample_every=0, target_kl=0.05, value_model="head")
    trainer = RLHFTrainer(config, prompts=PROMPTS, run_dir=tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="ppokit"):
        logging.getLogger("ppokit").setLevel(logging.WARNING)
        trainer.learn()
    assert all(r["warnings"] == ["approx KL far above the target"] for r in trainer.history)
    stats, kwargs = seen[0]
    assert kwargs["target_kl"] == 0.05 and kwargs["shared_trunk"] is True
    for key in ("approx_kl_k3", "clip_fraction", "entropy", "value_loss", "explained_variance"):
        assert key in stats
    assert "update 3: approx KL far above the target" in caplog.text
