"""What each process of the RLHF data-parallel tests' torchrun jobs runs, and the one-process references.

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.distributed.rlhf_scenarios NAME OUT_DIR MODEL [ARG]

Each scenario writes ``OUT_DIR/rank<R>.pt`` for the test to compare.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch

from ppokit.launch import leave_processes
from ppokit.rlhf.config import RewardConfig, RLHFConfig, SFTConfig
from ppokit.rlhf.demo import NOUNS, PLEASANT, UNPLEASANT
from ppokit.rlhf.models.generation import Completions
from ppokit.rlhf.ppo.rollout import RolloutBatch, collect

#: Prompts per update (over all processes), processes, PPO epochs and minibatches of the one-step scenario.
BATCH, WORLD, EPOCHS, MINIBATCHES = 8, 2, 2, 2
REWARD = "tests.rlhf.helpers:pleasant_minus_unpleasant"
#: The models of each kind of run, and each variant's kind and sharding.
KINDS: dict[str, dict[str, Any]] = {"separate": {}, "head": {"value_model": "head"}, "lora": {"lora": True, "lora_r": 4}}
VARIANTS = {"dp": ("separate", "none"), "dp-lora": ("lora", "none"), "fsdp": ("separate", "fsdp"),
            "fsdp-head": ("head", "fsdp")}


def ppo_config(policy: str, run_dir: Path, **changes: Any) -> RLHFConfig:
    values: dict[str, Any] = {
        "policy": policy, "rewards": [REWARD], "total_updates": 4, "batch_size": BATCH, "num_minibatches": MINIBATCHES,
        "num_epochs": EPOCHS, "max_new_tokens": 6, "learning_rate": 3e-3, "kl_coef": 0.05, "adaptive_kl": True,
        "kl_horizon": 100, "progress": False, "tensorboard": False, "torch_threads": 1, "device": "cpu", "seed": 0,
        "sample_every": 0, "checkpoint_minutes": 0, "run_dir": str(run_dir), "vf_coef": 0.5,
    }
    values.update(changes)
    return RLHFConfig(**values)


def write_prompts(path: Path) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"describe the {noun} :"}) + "\n" for noun in NOUNS))
    return path


def rows(batch: RolloutBatch, start: int, stop: int) -> RolloutBatch:
    """Rows ``start:stop`` of a collected batch (its padding width kept)."""
    s = slice(start, stop)
    seq = batch.sequences
    sequences = Completions(input_ids=seq.input_ids[s], attention_mask=seq.attention_mask[s],
                            prompt_length=seq.prompt_length, completion_ids=seq.completion_ids[s],
                            completion_mask=seq.completion_mask[s], has_eos=seq.has_eos[s])
    return dataclasses.replace(
        batch, prompts=batch.prompts[s], completions=batch.completions[s], sequences=sequences,
        scores=batch.scores[s], raw_score_mean=float(batch.scores[s].mean()), logp=batch.logp[s],
        ref_logp=batch.ref_logp[s], values=batch.values[s], entropy=batch.entropy[s])


def rank_orders() -> list[list[torch.Tensor]]:
    """The row permutations each process draws in the update (torch seeded 1000 + rank, as below)."""
    orders = []
    for rank in range(WORLD):
        torch.manual_seed(1000 + rank)
        orders.append([torch.randperm(BATCH // WORLD) for _ in range(EPOCHS)])
    return orders


def trainable_params(trainer: Any) -> dict[str, torch.Tensor]:
    """The full trainable weights (gathered to every process when sharded)."""
    if trainer.models.sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(trainer.models.trainable, options=StateDictOptions(full_state_dict=True))
        return {k: v.detach().clone() for k, v in state.items()}
    return {k: v.detach().clone() for k, v in trainer.models.trainable.state_dict().items()}


def collect_batch(policy: str, out: Path, kind: str) -> Path:
    """One process's batch of ``BATCH`` completions, saved for the processes to split."""
    from ppokit.rlhf.ppo.trainer import RLHFTrainer

    trainer = RLHFTrainer(ppo_config(policy, out / f"collect-{kind}", **KINDS[kind]),
                          prompts=write_prompts(out / "prompts.jsonl"))
    batch = collect(trainer.models, trainer.tokenizer, trainer.reward, trainer.prompts.next(), trainer.config,
                    trainer.device)
    # A reference a little away from the policy, so that the KL (its penalty, β's controller) is not 0.
    noise = 0.3 * torch.randn(batch.ref_logp.shape, generator=torch.Generator().manual_seed(5))
    batch = dataclasses.replace(batch, ref_logp=batch.ref_logp + noise * batch.mask)
    path = out / f"batch-{kind}.pt"
    torch.save({"batch": batch, "start": trainable_params(trainer)}, path)
    return path


def reference_step(policy: str, out: Path, kind: str) -> tuple[Any, dict[str, Any], float]:
    """One process's update on the whole batch, minibatch j of each epoch being the union of every
    process's minibatch j (what the data-parallel update computes); returns that trainer."""
    from ppokit.core.update import AutogradStep, run_epochs
    from ppokit.rlhf.ppo import trainer as trainer_module

    trainer = trainer_module.RLHFTrainer(ppo_config(policy, out / f"reference-{kind}", **KINDS[kind]),
                                         prompts=write_prompts(out / "prompts.jsonl"))
    batch = torch.load(out / f"batch-{kind}.pt", weights_only=False)["batch"]
    orders, local = rank_orders(), BATCH // WORLD

    def minibatches(epoch: int) -> list[torch.Tensor]:
        chunks = [orders[r][epoch].tensor_split(MINIBATCHES) for r in range(WORLD)]
        return [torch.cat([r * local + chunks[r][j] for r in range(WORLD)]) for j in range(MINIBATCHES)]

    def union_update(batch_, evaluate, optimizer, settings):
        return run_epochs(AutogradStep(batch_, evaluate, settings), batch_.rows, optimizer, settings,
                          minibatches=minibatches)

    real = trainer_module.ppo_update
    trainer_module.ppo_update = union_update
    try:
        record = trainer.update_on(batch)
    finally:
        trainer_module.ppo_update = real
    return trainer, record, trainer.kl_coef


def outputs(trainer: Any, params: dict[str, torch.Tensor], batch: RolloutBatch) -> torch.Tensor:
    """The policy's log-probs and the critic's values of the batch's tokens, with ``params`` loaded:
    what the weights compute, blind to directions the loss cannot see (a key bias, where Adam steps
    on rounding noise)."""
    from ppokit.rlhf.models.logprobs import token_logprobs

    models = trainer.models
    models.trainable.load_state_dict(params)
    with torch.no_grad():
        logits, values = models.policy_forward(batch.sequences)
        if values is None:
            values = models.values(batch.sequences)
        logp = token_logprobs(logits, batch.tokens, trainer.config.temperature)
    return torch.stack([logp, values.float()]) * batch.mask


def ppo_step(out: Path, policy: str, variant: str) -> None:
    """Each process updates on its half of the saved batch (``variant``: one of :data:`VARIANTS`)."""
    from ppokit.rlhf.ppo.trainer import RLHFTrainer

    kind, sharding = VARIANTS[variant]
    trainer = RLHFTrainer(ppo_config(policy, out / f"run-{variant}", sharding=sharding, **KINDS[kind]),
                          prompts=write_prompts(out / f"prompts-{variant}.jsonl"))
    rank, local = trainer.collective.rank, BATCH // WORLD
    saved = torch.load(out / f"batch-{kind}.pt", weights_only=False)["batch"]
    batch = rows(saved, rank * local, (rank + 1) * local)
    torch.manual_seed(1000 + rank)
    record = trainer.update_on(batch)
    trainer.save(out / f"saved-{variant}")
    torch.save({"params": trainable_params(trainer), "record": record, "kl_coef": trainer.kl_coef,
                "sharded": trainer.models.sharded}, out / f"rank{rank}.pt")


def learn(out: Path, policy: str, sharding: str) -> None:
    """A 4-update run checkpointed at update 2."""
    from ppokit.rlhf.ppo.trainer import RLHFTrainer

    trainer = RLHFTrainer(ppo_config(policy, out / "run", checkpoint_every=2, sharding=sharding, sample_every=1,
                                     data=str(write_prompts(out / "prompts.jsonl"))))
    trainer.learn()
    torch.save({"params": trainable_params(trainer), "kl_coef": trainer.kl_coef},
               out / f"rank{trainer.collective.rank}.pt")


# ----------------------------------------------------------------------------- the supervised stages


def supervised_outputs(kind: str, model_dir: Path, data: Path) -> torch.Tensor:
    """What a saved SFT model (its response log-probs) or reward model (its normalised scores)
    computes on the training rows."""
    from ppokit.rlhf.models.loading import (
        load_causal_lm,
        load_reward_model,
        load_tokenizer,
        pad_right,
        position_ids_from_mask,
    )
    from ppokit.rlhf.models.logprobs import token_logprobs
    from ppokit.rlhf.supervised.reward_model import score_texts

    tokenizer = load_tokenizer(str(model_dir))
    lines = [json.loads(line) for line in data.read_text().splitlines()]
    cpu = torch.device("cpu")
    if kind == "reward":
        model = load_reward_model(str(model_dir), torch.float32, cpu)
        tokenizer.padding_side = "right"
        prompts = [r["prompt"] for r in lines] * 2
        return score_texts(model, tokenizer, prompts, [r["chosen"] for r in lines] + [r["rejected"] for r in lines],
                           cpu, raw=False)
    lm = load_causal_lm(str(model_dir), torch.float32, cpu).eval()
    ids, mask = pad_right([tokenizer(r["prompt"] + " " + r["response"])["input_ids"] for r in lines],
                          tokenizer.pad_token_id)
    with torch.no_grad():
        logits = lm(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    return token_logprobs(logits[:, :-1], ids[:, 1:]) * mask[:, 1:]


def supervised_data(out: Path) -> tuple[Path, Path]:
    """Nine prompt/response rows (so the last batch of 4 leaves one process empty) and preference pairs."""
    sft, pairs = out / "sft.jsonl", out / "pairs.jsonl"
    lines, pair_lines = [], []
    for i, noun in enumerate(NOUNS[:9]):
        good, bad = PLEASANT[i % len(PLEASANT)], UNPLEASANT[i % len(UNPLEASANT)]
        response = " ".join([good] * (1 + i % 3))  # responses of different lengths: shares of the tokens differ
        lines.append(json.dumps({"prompt": f"describe the {noun} :", "response": response}))
        for j in range(2):
            pair_lines.append(json.dumps({"prompt": f"describe the {noun} :", "chosen": f"a {good} {noun}" + " ." * j,
                                          "rejected": f"a {bad} {noun}"}))
    sft.write_text("\n".join(lines) + "\n")
    pairs.write_text("\n".join(pair_lines) + "\n")
    return sft, pairs


def sft_config(model: str, out: Path, data: Path) -> SFTConfig:
    return SFTConfig(model=model, data=str(data), batch_size=4, epochs=2, learning_rate=1e-2, progress=False,
                     tensorboard=False, device="cpu", torch_threads=1, run_dir=str(out), seed=1)


def reward_config(model: str, out: Path, data: Path) -> RewardConfig:
    return RewardConfig(model=model, data=str(data), batch_size=4, epochs=2, learning_rate=1e-2, progress=False,
                        tensorboard=False, device="cpu", torch_threads=1, run_dir=str(out), seed=1, eval_fraction=0.3)


def supervised(out: Path, model: str, _: str) -> None:
    """SFT, then reward-model training, each on the processes' shares of every batch."""
    from ppokit.rlhf.supervised.reward_model import train_reward_model
    from ppokit.rlhf.supervised.sft import train_sft

    sft_data, pairs = supervised_data(out)
    sft = train_sft(sft_config(model, out / "sft", sft_data))
    reward = train_reward_model(reward_config(model, out / "reward", pairs))
    rank = int(torch.distributed.get_rank())
    torch.save({"sft": sft, "reward": reward}, out / f"rank{rank}.pt")


if __name__ == "__main__":
    name, out_dir, model_dir = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    arg = sys.argv[4] if len(sys.argv) > 4 else ""
    {"ppo_step": ppo_step, "learn": learn, "supervised": supervised}[name](out_dir, model_dir, arg)
    leave_processes()
