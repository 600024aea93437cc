"""docs/reference/metrics.md against real runs: every key a run logs is documented, every documented key
is logged where the page says it is.

The page holds one table per front end (after a ``(metrics-<front end>)=`` label) whose rows are
``| `key` | meaning | logged |``: ``logged`` is "always..." (every run has the key) or the option or
situation that brings it. Tiny runs of each front end (seconds each) are read back from their
``metrics.jsonl``; the variants below turn on the options that bring the conditional keys, and
``NOT_EXERCISED`` names, with the reason, the conditional keys no run here can bring.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "reference" / "metrics.md"
LABEL = re.compile(r"^\(metrics-([a-z0-9-]+)\)=\s*$")
ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|(.*)\|(.*)\|\s*$")

#: Conditional keys no tiny run on a CPU can bring, and why.
NOT_EXERCISED = {
    ("control", "warnings"): "the health monitor fires on trouble (a collapsed entropy, a runaway KL) a tiny run does not reliably have",
    ("rlhf-ppo", "warnings"): "as for control: only when a health check fires",
}


@dataclass
class Documented:
    """One front end's table: key (or pattern such as ``score_<i>``) -> its ``logged`` text."""

    keys: dict[str, str] = field(default_factory=dict)

    def always(self) -> set[str]:
        return {key for key, when in self.keys.items() if when.lower().startswith("always")}

    def conditional(self) -> set[str]:
        return set(self.keys) - self.always()

    def entry_for(self, logged_key: str) -> str | None:
        """The documented key that covers a logged key (``score_1`` is covered by ``score_<i>``)."""
        if logged_key in self.keys:
            return logged_key
        for key in self.keys:
            if "<" in key:
                pattern = r"\d+".join(re.escape(part) for part in re.split(r"<[a-z]+>", key))
                if re.fullmatch(pattern, logged_key):
                    return key
        return None


def read_page() -> dict[str, Documented]:
    tables: dict[str, Documented] = {}
    current: Documented | None = None
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        label = LABEL.match(line)
        if label:
            current = tables.setdefault(label.group(1), Documented())
            continue
        row = ROW.match(line)
        if row and current is not None:
            key, meaning, logged = row.group(1), row.group(2).strip(), row.group(3).strip()
            assert meaning and logged, f"metrics.md: the row of {key!r} needs a meaning and a 'logged' entry"
            assert key not in current.keys, f"metrics.md: {key!r} is listed twice in one table"
            current.keys[key] = logged
    return tables


def logged_keys(run_dir: Path) -> set[str]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert rows, f"{run_dir} logged no rows"
    return set().union(*rows)


@dataclass
class Run:
    """A tiny run of one front end with some options: the keys it must log, and must not."""

    name: str
    train: Callable[[Path, dict[str, Any]], Path]
    options: dict[str, Any] = field(default_factory=dict)
    brings: frozenset[str] = frozenset()
    lacks: frozenset[str] = frozenset()


# --- the runs -------------------------------------------------------------------------------------


def control_run(run_dir: Path, options: dict[str, Any]) -> Path:
    from ppokit import PPO, ControlConfig

    config = ControlConfig(env_id="CartPole-v1", total_steps=256, num_envs=2, num_steps=32, num_minibatches=2,
                           num_epochs=2, eval_episodes=1, progress=False, tensorboard=False, torch_threads=1,
                           **options)
    agent = PPO(config)
    try:
        agent.learn(run_dir=run_dir)
    finally:
        agent.close()
    return run_dir


def rlhf_run(model: str) -> Callable[[Path, dict[str, Any]], Path]:
    def train(run_dir: Path, options: dict[str, Any]) -> Path:
        from ppokit.rlhf.config import RLHFConfig
        from ppokit.rlhf.demo import NOUNS
        from ppokit.rlhf.ppo.trainer import RLHFTrainer

        values: dict[str, Any] = dict(
            policy=model, rewards=["tests.rlhf.helpers:pleasant_minus_unpleasant"], total_updates=2, batch_size=4,
            num_minibatches=2, num_epochs=2, max_new_tokens=4, progress=False, tensorboard=False, device="cpu",
            torch_threads=1, seed=0, sample_every=0)
        values.update(options)
        prompts = [{"prompt": f"describe the {noun} :"} for noun in NOUNS]
        RLHFTrainer(RLHFConfig(**values), prompts=prompts, run_dir=run_dir).learn()
        return run_dir

    return train


def sft_run(model: str) -> Callable[[Path, dict[str, Any]], Path]:
    def train(run_dir: Path, options: dict[str, Any]) -> Path:
        from ppokit.rlhf.config import SFTConfig
        from ppokit.rlhf.demo import sft_rows
        from ppokit.rlhf.supervised.sft import SFTTrainer

        config = SFTConfig(model=model, epochs=1, batch_size=8, max_length=32, progress=False, tensorboard=False,
                           device="cpu", torch_threads=1, seed=0, **options)
        SFTTrainer(config, data=sft_rows(16, random.Random(1)), run_dir=run_dir).learn()
        return run_dir

    return train


def reward_run(model: str) -> Callable[[Path, dict[str, Any]], Path]:
    def train(run_dir: Path, options: dict[str, Any]) -> Path:
        from ppokit.rlhf.config import RewardConfig
        from ppokit.rlhf.demo import preference_rows
        from ppokit.rlhf.supervised.reward_model import RewardTrainer

        rows = preference_rows(20, random.Random(0))
        if options.get("ratings_as") == "regression":  # each pair as two rated rows
            rows = [{"prompt": r["prompt"], "response": r[k], "rating": rating}
                    for r in rows for k, rating in (("chosen", 1.0), ("rejected", 0.0))]
        config = RewardConfig(model=model, epochs=1, batch_size=8, max_length=32, progress=False, tensorboard=False,
                              device="cpu", torch_threads=1, seed=0, eval_fraction=0.2, **options)
        RewardTrainer(config, data=rows, run_dir=run_dir).learn()
        return run_dir

    return train


def runs(front_end: str, model: str | None) -> list[Run]:
    if front_end == "control":
        return [
            Run("defaults", control_run),
            Run("evaluating, adaptive clip", control_run, {"eval_every": 2, "adaptive_clip": True},
                brings=frozenset({"eval_return", "kl_after_update"})),
            Run("PPO-Penalty, adaptive KL", control_run, {"loss": "penalty", "adaptive_kl": True},
                brings=frozenset({"kl_after_update"})),
        ]
    assert model is not None
    if front_end == "rlhf-ppo":
        return [
            Run("gae", rlhf_run(model), brings=frozenset({"value_mean", "value_loss", "explained_variance"})),
            Run("grpo, two rewards, fp16, old log-probs from sampling", rlhf_run(model),
                {"advantage": "grpo", "num_generations": 2, "mixed_precision": "fp16", "dtype": "float32",
                 "rewards": ["tests.rlhf.helpers:pleasant_minus_unpleasant"] * 2, "reward_weights": [1.0, 0.5],
                 "old_logprobs": "sampling"},
                brings=frozenset({"score_0", "score_1", "loss_scale", "loss_scale_overflows", "first_ratio_deviation"}),
                lacks=frozenset({"value_mean", "value_loss", "explained_variance"})),
        ]
    if front_end == "sft":
        return [
            Run("no held-out rows", sft_run(model), lacks=frozenset({"eval_loss"})),
            Run("held-out rows", sft_run(model), {"eval_fraction": 0.25}, brings=frozenset({"eval_loss"})),
        ]
    if front_end == "reward":
        return [
            Run("pairs", reward_run(model), brings=frozenset({"accuracy", "margin", "eval_loss", "eval_accuracy"})),
            Run("ratings by regression", reward_run(model), {"ratings_as": "regression", "format": "ratings"},
                brings=frozenset({"eval_loss"}), lacks=frozenset({"accuracy", "margin"})),
        ]
    raise AssertionError(f"metrics.md has a table for {front_end!r}, which this test does not know how to run")


FRONT_ENDS = ["control", "rlhf-ppo", "sft", "reward"]


def test_the_page_has_a_table_for_each_front_end() -> None:
    tables = read_page()
    assert sorted(tables) == sorted(FRONT_ENDS)
    for name, table in tables.items():
        assert table.always(), f"metrics.md, {name}: no key is logged always?"


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_every_logged_key_is_documented_and_every_documented_key_is_logged(front_end: str, request: Any,
                                                                            tmp_path: Path) -> None:
    pytest.importorskip("gymnasium")
    model = None
    if front_end != "control":
        pytest.importorskip("transformers")
        model = request.getfixturevalue("tiny_lm")
    table = read_page()[front_end]
    seen: set[str] = set()
    problems = []
    for i, run in enumerate(runs(front_end, model)):
        keys = logged_keys(run.train(tmp_path / f"run{i}", run.options))
        seen |= {table.entry_for(k) or k for k in keys}
        where = f"{front_end} run '{run.name}'"
        undocumented = sorted(k for k in keys if table.entry_for(k) is None)
        if undocumented:
            problems.append(f"{where} logs keys docs/reference/metrics.md does not list: {undocumented}")
        missing = sorted(table.always() - {table.entry_for(k) for k in keys})
        if missing:
            problems.append(f"{where} lacks keys the page says are logged always: {missing}")
        not_brought = sorted(run.brings - keys)
        if not_brought:
            problems.append(f"{where} should log {not_brought}")
        still_there = sorted(run.lacks & keys)
        if still_there:
            problems.append(f"{where} should not log {still_there}")
    never = sorted(k for k in table.conditional() - seen if (front_end, k) not in NOT_EXERCISED)
    if never:
        problems.append(f"{front_end}: documented keys no run logged (and not in NOT_EXERCISED): {never}")
    assert not problems, "\n".join(problems)
