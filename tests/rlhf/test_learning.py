"""RLHF learning and integration tests on tiny models built in the test (fixed seeds, step budgets,
real thresholds)."""

import json
import random

import pytest
import torch

from ppokit.cli.main import main
from ppokit.rlhf.config import RewardConfig, RLHFConfig, SFTConfig
from ppokit.rlhf.demo import WORDS, preference_rows, run_demo, sft_rows
from ppokit.rlhf.ppo.trainer import RLHFTrainer
from ppokit.rlhf.supervised.reward_model import train_reward_model
from ppokit.rlhf.supervised.sft import train_sft
from ppokit.rlhf.tiny import build_tiny_gpt2
from tests.rlhf.helpers import PROMPTS

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """Wider than the shared tiny_lm: the learning tests need the capacity."""
    return str(build_tiny_gpt2(tmp_path_factory.mktemp("base"), WORDS, n_layer=2, n_embd=64, n_head=4, seed=0))


def _ppo_config(policy, **changes):
    values = dict(policy=policy, rewards=["tests.rlhf.helpers:pleasant_minus_unpleasant"], total_updates=30,
                  batch_size=16, num_minibatches=2, max_new_tokens=8, learning_rate=1e-3, kl_coef=0.05,
                  progress=False, tensorboard=False, torch_threads=1, device="cpu", seed=0, sample_every=0)
    values.update(changes)
    return RLHFConfig(**values)


@pytest.mark.learning
def test_ppo_raises_a_rule_based_reward_while_kl_stays_bounded(base_model, tmp_path):
    trainer = RLHFTrainer(_ppo_config(base_model), prompts=PROMPTS, run_dir=tmp_path / "run")
    summary = trainer.learn()
    first = sum(r["score"] for r in trainer.history[:3]) / 3
    last = sum(r["score"] for r in trainer.history[-5:]) / 5
    assert last > first + 1.5, (first, last)
    # Bounded: the all-pleasant policy costs about 8 * log(41/8) = 13 nats against this uniform
    # reference; a policy collapsed onto one token would cost 8 * log(41) = 30.
    assert all(r["kl"] < 20.0 for r in trainer.history), [round(r["kl"], 2) for r in trainer.history]
    assert summary["updates"] == 30
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 30
    for key in ("score", "kl", "non_score_reward", "total_reward", "entropy", "clip_fraction", "approx_kl_k3",
                "value_loss", "response_length", "eos_rate", "tokens_per_s"):
        assert key in rows[-1], key


@pytest.mark.learning
def test_reward_model_reaches_90_percent_held_out_accuracy(base_model, tmp_path):
    rng = random.Random(0)
    config = RewardConfig(model=base_model, epochs=2, batch_size=32, learning_rate=1e-3, max_length=32,
                          progress=False, tensorboard=False, torch_threads=1, device="cpu", seed=0)
    summary = train_reward_model(config, data=preference_rows(1500, rng), eval_data=preference_rows(300, rng),
                                 run_dir=tmp_path / "rm")
    assert summary["eval_accuracy"] >= 0.9, summary
    assert summary["eval_pairs"] == 300
    meta = json.loads((tmp_path / "rm" / "model" / "ppokit_reward.json").read_text())
    assert meta["std"] > 0 and meta["head"] == "classification"


def test_sft_loss_falls_and_covers_only_the_response(base_model, tmp_path):
    rows = sft_rows(400, random.Random(1))
    config = SFTConfig(model=base_model, epochs=2, batch_size=32, learning_rate=3e-3, max_length=32,
                       progress=False, tensorboard=False, torch_threads=1, device="cpu")
    summary = train_sft(config, data=rows, run_dir=tmp_path / "sft")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.6 * losses[0], (losses[0], losses[-1])
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(summary["model_dir"]) is not None


def test_sft_target_mask_excludes_the_prompt():
    from ppokit.rlhf.supervised.sft import tokenize_sft
    from ppokit.rlhf.tiny import build_word_tokenizer

    tokenizer = build_word_tokenizer(WORDS)
    (ids, prompt_len), = tokenize_sft(tokenizer, [{"prompt": "describe the cat :", "response": "the cat is red ."}], True)
    assert prompt_len == 4 and len(ids) == 4 + 5 + 1 and ids[-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("variant", [dict(value_model="head"), dict(lora=True, lora_r=4), dict(kl_estimator="k3", adaptive_kl=True)])
def test_ppo_variants_run_and_save_transformers_loadable_models(base_model, tmp_path, variant):
    from transformers import AutoModelForCausalLM

    from ppokit.rlhf.models.loading import ScalarHeadModel

    trainer = RLHFTrainer(_ppo_config(base_model, total_updates=3, **variant), prompts=PROMPTS, run_dir=tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    summary = trainer.learn()
    policy = AutoModelForCausalLM.from_pretrained(summary["policy_dir"])
    changed = any(not torch.equal(before[k].cpu(), v) for k, v in policy.state_dict().items() if k in before)
    if variant.get("lora"):
        # The saved policy has the adapter merged in, so its weights differ from the base.
        base = AutoModelForCausalLM.from_pretrained(base_model).state_dict()
        changed = any(not torch.equal(base[k], v) for k, v in policy.state_dict().items())
        assert (tmp_path / "run" / "policy_adapter").is_dir()
        assert trainer.models.reference is None  # the adapter-free base serves as the reference
    assert changed
    value = ScalarHeadModel.load(summary["value_model_dir"], torch.float32, torch.device("cpu"))
    assert value(torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long)).shape == (1, 3)
    if variant.get("adaptive_kl"):
        assert trainer.kl_coef != 0.05


def test_lora_reference_is_the_policy_at_the_start(base_model, tmp_path):
    def first_word_is_pleasant(prompts, completions):  # a plain callable passed in code
        return [float(c.split()[:1] == ["good"]) for c in completions]

    trainer = RLHFTrainer(_ppo_config(base_model, lora=True, total_updates=1), prompts=PROMPTS,
                          rewards=[first_word_is_pleasant], run_dir=tmp_path / "run")
    assert "python callable" in (tmp_path / "run" / "config.yaml").read_text()
    record = trainer.update()
    assert record["kl"] == pytest.approx(0.0, abs=1e-5)  # LoRA B starts at zero: policy == reference


def test_first_epoch_ratio_is_one_with_dropout_models(base_model, tmp_path):
    """Dropout is off during PPO, so the first minibatch's KL to the rollout policy is exactly 0."""
    trainer = RLHFTrainer(_ppo_config(base_model, total_updates=1, num_epochs=1, num_minibatches=1),
                          prompts=PROMPTS, run_dir=tmp_path / "run")
    assert trainer.policy.config.resid_pdrop > 0
    record = trainer.update()
    assert record["approx_kl_k3"] == pytest.approx(0.0, abs=1e-6)
    assert record["clip_fraction"] == 0.0


def test_reward_model_directory_drives_ppo_and_initialises_the_critic(base_model, tmp_path):
    rng = random.Random(2)
    rm = train_reward_model(
        RewardConfig(model=base_model, epochs=1, batch_size=32, learning_rate=1e-3, progress=False,
                     tensorboard=False, device="cpu", torch_threads=1),
        data=preference_rows(200, rng), run_dir=tmp_path / "rm")
    trainer = RLHFTrainer(_ppo_config(base_model, rewards=[rm["model_dir"], "tests.rlhf.helpers:pleasant_minus_unpleasant"],
                                      reward_weights=[1.0, 0.5], total_updates=2), prompts=PROMPTS, run_dir=tmp_path / "ppo")
    from ppokit.rlhf.models.loading import load_reward_model

    reward_model = load_reward_model(rm["model_dir"], torch.float32, torch.device("cpu"))
    head = reward_model.model.score.weight
    assert torch.equal(trainer.models.critic.head.weight.detach(), head.detach())  # critic starts as the reward model
    record = trainer.update()
    assert "score_0" in record and "score_1" in record
    import yaml

    saved = yaml.safe_load((tmp_path / "ppo" / "config.yaml").read_text())
    assert saved["rewards"] == [rm["model_dir"], "tests.rlhf.helpers:pleasant_minus_unpleasant"]


def test_cli_rlhf_ppo_runs_and_bad_data_exits_cleanly(base_model, tmp_path, capsys):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS * 2))
    code = main(["rlhf", "ppo", "--policy", base_model, "--reward", "tests.rlhf.helpers:pleasant_minus_unpleasant",
                 "--data", str(data), "--total-updates", "2", "--run-dir", str(tmp_path / "run"), "--no-progress",
                 "--set", "batch_size=4", "--set", "max_new_tokens=4", "--set", "tensorboard=false"])
    assert code == 0
    assert (tmp_path / "run" / "policy" / "config.json").is_file()
    assert "PPO done" in capsys.readouterr().out
    code = main(["rlhf", "ppo", "--policy", base_model, "--reward", "tests.rlhf.helpers:pleasant_minus_unpleasant",
                 "--data", str(data), "--run-dir", str(tmp_path / "run")])
    assert code == 2
    assert "already holds a run" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "describe the cat :"}\n{"prompt": 3}\n')
    code = main(["rlhf", "ppo", "--policy", base_model, "--reward", "tests.rlhf.helpers:pleasant_minus_unpleasant",
                 "--data", str(bad), "--run-dir", str(tmp_path / "run2")])
    err = capsys.readouterr().err
    assert code == 2 and "bad.jsonl, line 2: prompt must be text" in err and "Traceback" not in err
    code = main(["rlhf", "ppo", "--policy", str(tmp_path / "missing"), "--reward", "x:y", "--data", str(data),
                 "--run-dir", str(tmp_path / "run3")])
    assert code == 2 and "could not load tokenizer" in capsys.readouterr().err


@pytest.mark.learning
def test_demo_hidden_rule_score_rises(tmp_path):
    from ppokit.analysis.plots import plot_runs

    # The hidden rule's score goes from +0.12 to +2.45 in 20 updates (+2.63 in 40): far past the +1.0 asked.
    summary = run_demo(tmp_path / "demo", seed=0, ppo_updates=20, progress=False, echo=lambda *a: None, plot=plot_runs)
    assert summary["reward_model_eval_accuracy"] >= 0.9
    assert summary["hidden_score_after"] > summary["hidden_score_before"] + 1.0, summary
    assert (tmp_path / "demo" / "training.png").is_file()
