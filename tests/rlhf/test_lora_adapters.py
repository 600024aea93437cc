"""LoRA adapters load from anywhere: every adapter ppokit saves (SFT's and reward training's
``model_adapter/``, PPO's ``policy_adapter/``, a checkpoint's too) records its base model by a path
that resolves from any working directory (a hub id kept as it is) and has the tokenizer beside it,
so ``peft.AutoPeftModel*.from_pretrained(adapter_dir)`` and ``AutoTokenizer`` take it as it is."""

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from ppokit.rlhf.demo import preference_rows, sft_rows  # noqa: E402
from ppokit.rlhf.models.lora import base_path  # noqa: E402
from tests.distributed.rlhf_scenarios import ppo_config, write_prompts  # noqa: E402

IDS = torch.tensor([[3, 4, 5, 6, 7]])


@pytest.fixture
def relative_base(tiny_lm, tmp_path, monkeypatch):
    """The tiny model as a user names a local model: a path relative to where they train."""
    train_here = tmp_path / "project"
    shutil.copytree(tiny_lm, train_here / "runs" / "base")
    monkeypatch.chdir(train_here)
    return "runs/base"


def _load_elsewhere(adapter_dir: Path, tmp_path: Path, monkeypatch, auto_class: str, **kwargs):
    """The adapter and its tokenizer, loaded by peft and transformers from another directory."""
    from transformers import AutoTokenizer

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model = getattr(peft, auto_class).from_pretrained(str(adapter_dir), **kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    assert tokenizer("describe the cat :")["input_ids"]
    return model


def _recorded_base(adapter_dir: Path) -> str:
    return json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]


def test_a_local_base_is_recorded_absolute_and_a_hub_id_as_it_is(tmp_path, monkeypatch):
    (tmp_path / "runs" / "sft" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert base_path("runs/sft/model") == str(tmp_path.resolve() / "runs" / "sft" / "model")
    assert base_path("gpt2") == "gpt2" and base_path("org/model") == "org/model"
    assert base_path(str(tmp_path)) == str(tmp_path.resolve()) and base_path(None) is None


def test_an_sft_adapter_loads_with_its_tokenizer_from_another_directory(relative_base, tmp_path, monkeypatch):
    from ppokit.rlhf.config import SFTConfig
    from ppokit.rlhf.supervised.sft import train_sft

    config = SFTConfig(model=relative_base, lora=True, lora_r=4, epochs=1, batch_size=8, learning_rate=3e-3,
                       max_length=32, progress=False, tensorboard=False, torch_threads=1, device="cpu", seed=0)
    summary = train_sft(config, data=sft_rows(16, random.Random(1)), run_dir="runs/sft")
    adapter = Path(summary["adapter_dir"]).resolve()
    assert Path(_recorded_base(adapter)).is_absolute()
    model = _load_elsewhere(adapter, tmp_path, monkeypatch, "AutoPeftModelForCausalLM")
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(adapter.parent / "model")).eval()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=IDS).logits, merged(input_ids=IDS).logits, atol=1e-5)


def test_a_reward_adapter_loads_with_its_tokenizer_from_another_directory(relative_base, tmp_path, monkeypatch):
    from ppokit.rlhf.config import RewardConfig
    from ppokit.rlhf.models.loading import load_reward_model
    from ppokit.rlhf.supervised.reward_model import train_reward_model

    config = RewardConfig(model=relative_base, lora=True, lora_r=4, epochs=1, batch_size=8, learning_rate=3e-3,
                          max_length=32, progress=False, tensorboard=False, torch_threads=1, device="cpu", seed=0,
                          eval_fraction=0.2)
    summary = train_reward_model(config, data=preference_rows(20, random.Random(0)), run_dir="runs/reward")
    adapter = Path(summary["adapter_dir"]).resolve()
    assert Path(_recorded_base(adapter)).is_absolute()
    model = _load_elsewhere(adapter, tmp_path, monkeypatch, "AutoPeftModelForSequenceClassification", num_labels=1)
    model.config.pad_token_id = model.config.eos_token_id
    saved = load_reward_model(str(adapter.parent / "model"), torch.float32, torch.device("cpu"))
    mask = torch.ones_like(IDS)
    with torch.no_grad():  # the raw score; the saved reward model's normalisation aside
        raw = saved.model(input_ids=IDS, attention_mask=mask).logits.squeeze(-1)
        assert torch.allclose(model(input_ids=IDS, attention_mask=mask).logits.squeeze(-1), raw, atol=1e-5)


def test_a_ppo_policy_adapter_loads_with_its_tokenizer_from_another_directory(relative_base, tmp_path, monkeypatch):
    from ppokit.rlhf.ppo.trainer import RLHFTrainer

    prompts = write_prompts(Path("prompts.jsonl"))
    trainer = RLHFTrainer(ppo_config(relative_base, Path("runs/ppo"), lora=True, lora_r=4, total_updates=1,
                                     checkpoint_every=1, data=str(prompts)))
    summary = trainer.learn()
    run = Path(summary["policy_dir"]).resolve().parent
    checkpoint = sorted((run / "checkpoints").iterdir())[-1] / "policy_adapter"
    for adapter in (run / "policy_adapter", checkpoint):
        assert _recorded_base(adapter) == str(Path(relative_base).resolve())
        assert (adapter / "tokenizer_config.json").is_file()
    model = _load_elsewhere(run / "policy_adapter", tmp_path, monkeypatch, "AutoPeftModelForCausalLM")
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(run / "policy")).eval()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=IDS).logits, merged(input_ids=IDS).logits, atol=1e-5)
