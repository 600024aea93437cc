"""Critic-free advantages (grpo, rloo, reinforce_pp) in the RLHF trainer: G completions per prompt, no
critic built, trained or saved, the KL in the reward or the loss, exact resume, and each estimator
raising a rule-based reward on the tiny demo model (fixed seeds, step budgets, real thresholds)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from ppokit.cli.main import main
from ppokit.errors import ConfigError
from ppokit.rlhf.config import RLHFConfig
from ppokit.rlhf.demo import WORDS
from ppokit.rlhf.ppo import trainer as trainer_module
from ppokit.rlhf.ppo.trainer import RLHFTrainer
from ppokit.rlhf.tiny import build_tiny_gpt2
from tests.rlhf.helpers import PROMPTS

pytest.importorskip("transformers")


def _config(policy, **changes):
    values = dict(policy=policy, rewards=["tests.rlhf.helpers:pleasant_minus_unpleasant"], total_updates=3,
                  batch_size=4, num_generations=2, num_minibatches=2, max_new_tokens=6, learning_rate=1e-3,
                  kl_coef=0.05, advantage="grpo", progress=False, tensorboard=False, torch_threads=1, device="cpu",
                  seed=0, sample_every=0)
    values.update(changes)
    return RLHFConfig(**values)


def _spy_on_the_update(monkeypatch):
    seen = {}
    real = trainer_module.ppo_update

    def spy(batch, evaluate, optimizer, settings):
        fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
        seen.update(batch={k: v.clone() for k, v in fields.items() if v is not None}, settings=settings)
        return real(batch, evaluate, optimizer, settings)

    monkeypatch.setattr(trainer_module, "ppo_update", spy)
    return seen


def test_each_prompt_is_sampled_g_times_in_adjacent_rows_and_no_critic_is_built(tiny_lm, tmp_path, monkeypatch):
    seen = _spy_on_the_update(monkeypatch)
    trainer = RLHFTrainer(_config(tiny_lm, num_generations=3), prompts=PROMPTS, run_dir=tmp_path / "run")
    assert trainer.models.critic is None and trainer.models.with_head is None
    assert all(k.startswith("policy.") for k in trainer.models.trainable.state_dict())
    trainer.update()
    record = trainer.update()  # the first moved the policy away from the reference
    prompts = trainer.last_batch[0]
    assert len(prompts) == 4 * 3 and all(prompts[3 * g] == prompts[3 * g + 1] == prompts[3 * g + 2] for g in range(4))
    # grpo puts the KL in the loss (kl_in: auto): the update weighs it with β and gets no value targets;
    # the reward is the score alone.
    assert set(seen["batch"]) == {"logp", "advantages", "mask", "ref_logp"}
    assert seen["settings"].ref_kl_coef == 0.05
    assert record["non_score_reward"] == 0.0 and record["total_reward"] == record["score"]
    assert record["kl"] > 0  # the rollout's k3 KL to the reference, summed over tokens
    # Nothing about a critic is reported, so nothing about one can warn.
    for key in ("value_loss", "value_mean", "explained_variance"):
        assert key not in record
    assert not any("value" in w or "explained" in w for w in record.get("warnings", []))


def test_rloo_keeps_the_kl_in_the_reward_and_grpo_can_too(tiny_lm, tmp_path, monkeypatch):
    seen = _spy_on_the_update(monkeypatch)
    for method, kl_in in (("rloo", "auto"), ("grpo", "reward"), ("reinforce_pp", "auto")):
        trainer = RLHFTrainer(_config(tiny_lm, advantage=method, kl_in=kl_in, total_updates=1), prompts=PROMPTS,
                              run_dir=tmp_path / f"{method}_{kl_in}")
        trainer.update()  # after update 0 the policy is the reference: the KL and its penalty are 0
        record = trainer.update()
        assert seen["settings"].ref_kl_coef == 0.0, method
        assert record["non_score_reward"] == pytest.approx(-0.05 * record["kl"]), method
        assert record["kl"] != 0.0


def test_a_critic_free_run_writes_no_value_model_and_resumes_bit_identically(tiny_lm, tmp_path):
    config = _config(tiny_lm, total_updates=4, adaptive_kl=True, lr_schedule="linear")
    straight = RLHFTrainer(config, prompts=PROMPTS, run_dir=tmp_path / "straight")
    summary = straight.learn()
    assert summary["value_model_dir"] is None
    assert (tmp_path / "straight" / "policy").is_dir() and not (tmp_path / "straight" / "value_model").exists()
    assert straight.kl_coef != 0.05  # the adaptive β moves the loss term's weight
    first = RLHFTrainer(config, prompts=PROMPTS, run_dir=tmp_path / "split")
    first.learn(callback=lambda record: record["update"] < 2)
    checkpoint = sorted((tmp_path / "split" / "checkpoints").iterdir())[-1]
    assert (checkpoint / "policy").is_dir() and not (checkpoint / "value_model").exists()
    resumed = RLHFTrainer(config, prompts=PROMPTS, run_dir=tmp_path / "split", resume=True)
    assert resumed.num_updates == 2
    resumed.learn()
    a, b = resumed.models.trainable.state_dict(), straight.models.trainable.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.kl_coef == straight.kl_coef


def test_grpo_with_one_generation_is_refused_in_one_line(tiny_lm, tmp_path, capsys):
    with pytest.raises(ConfigError, match="num_generations"):
        _config(tiny_lm, num_generations=1)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    code = main(["rlhf", "ppo", "--policy", tiny_lm, "--reward", "tests.rlhf.helpers:pleasant_minus_unpleasant",
                 "--data", str(data), "--run-dir", str(tmp_path / "run"), "--no-progress", "--set", "advantage=grpo",
                 "--set", "num_generations=1"])  # set by the user: refused (left unset, it adapts)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "'advantage' = 'grpo'" in err and "num_generations" in err
    assert not (tmp_path / "run").exists()


# ---- learning -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """The learning tests' wider tiny model (as in test_learning.py)."""
    return str(build_tiny_gpt2(tmp_path_factory.mktemp("base"), WORDS, n_layer=2, n_embd=64, n_head=4, seed=0))


@pytest.mark.learning
@pytest.mark.parametrize("method", ["grpo", "rloo", "reinforce_pp"])
def test_critic_free_ppo_raises_a_rule_based_reward_while_kl_stays_bounded(base_model, tmp_path, method):
    # 4 prompts × G = 4: the 16 completions per update of the gae learning test, in groups.
    config = _config(base_model, advantage=method, total_updates=30, batch_size=4, num_generations=4,
                     max_new_tokens=8)
    trainer = RLHFTrainer(config, prompts=PROMPTS, run_dir=tmp_path / "run")
    trainer.learn()
    first = sum(r["score"] for r in trainer.history[:3]) / 3
    last = sum(r["score"] for r in trainer.history[-5:]) / 5
    # The score counts pleasant minus unpleasant words of 8: about 0 at the start, 8 at best.
    assert last > first + 4.0, (method, first, last)
    # Bounded, as in test_learning: a policy collapsed onto one token would cost 8·log(41) ≈ 30 nats.
    assert all(r["kl"] < 20.0 for r in trainer.history), [round(r["kl"], 2) for r in trainer.history]
    assert trainer.models.critic is None and not (tmp_path / "run" / "value_model").exists()


def test_the_health_checks_have_nothing_to_say_about_a_critic_that_is_not_there():
    from ppokit.core.health import health_warnings

    # A critic-free row: no value_loss, value_mean or explained_variance (late in training, where the
    # value-fit check would apply).
    row = {"policy_loss": 0.001, "entropy": 1.0, "approx_kl_k3": 0.01, "clip_fraction": 0.1, "minibatch_steps": 8.0}
    assert health_warnings(row, progress=0.9, initial_entropy=1.0, target_kl=None, normalize_reward=False,
                           shared_trunk=True) == []
