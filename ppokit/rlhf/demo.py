"""An example, not a part of the library: ``ppokit rlhf demo``, the whole RLHF pipeline on a CPU in
minutes, with no model hub. Read it as a script that uses the public API.

A made-up little language describes animals and things: prompts ``describe the cat :``, responses
``the cat is happy and big .``. A *hidden rule* decides which responses people prefer: the number
of pleasant words minus the number of unpleasant ones. The demo

1. builds a word tokenizer and a small GPT-2 from scratch,
2. fine-tunes it (SFT) on responses that use every kind of word alike,
3. trains a reward model on pairs labelled only by the hidden rule's preferences,
4. runs PPO against that reward model,

and reports the hidden rule's own score of the completions before and after: if it rises, the
policy learned what the preferences meant, not just how to please the reward model.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("ppokit")

NOUNS = ("cat", "dog", "bird", "fish", "horse", "tree", "house", "garden", "river", "city")
PLEASANT = ("good", "happy", "kind", "bright", "lovely", "warm", "gentle", "calm")
UNPLEASANT = ("bad", "sad", "cruel", "dark", "awful", "grim", "cold", "nasty")
NEUTRAL = ("big", "small", "old", "young", "tall", "short", "red", "green")
FUNCTION_WORDS = ("describe", "the", "is", "and", "very", ":", ".")
WORDS = FUNCTION_WORDS + NOUNS + PLEASANT + UNPLEASANT + NEUTRAL


def hidden_rule(prompt: str, completion: str) -> float:
    """What the imaginary raters want: pleasant words count +1, unpleasant −1."""
    words = completion.split()
    return float(sum(w in PLEASANT for w in words) - sum(w in UNPLEASANT for w in words))


def hidden_rule_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """The hidden rule as a reward function (``ppokit.rlhf.demo:hidden_rule_reward``)."""
    return [hidden_rule(p, c) for p, c in zip(prompts, completions)]


def make_prompt(rng: random.Random) -> tuple[str, str]:
    noun = rng.choice(NOUNS)
    return f"describe the {noun} :", noun


def make_response(rng: random.Random, noun: str) -> str:
    adjectives = []
    for _ in range(rng.randint(1, 3)):
        adjective = rng.choice(PLEASANT + UNPLEASANT + NEUTRAL)
        adjectives.append(f"very {adjective}" if rng.random() < 0.2 else adjective)
    return f"the {noun} is {' and '.join(adjectives)} ."


def sft_rows(n: int, rng: random.Random) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for _ in range(n):
        prompt, noun = make_prompt(rng)
        rows.append({"prompt": prompt, "response": make_response(rng, noun)})
    return rows


def preference_rows(n: int, rng: random.Random) -> list[dict[str, str]]:
    """Pairs of responses to one prompt, the one the hidden rule scores higher marked chosen."""
    rows: list[dict[str, str]] = []
    while len(rows) < n:
        prompt, noun = make_prompt(rng)
        a, b = make_response(rng, noun), make_response(rng, noun)
        sa, sb = hidden_rule(prompt, a), hidden_rule(prompt, b)
        if sa == sb:
            continue
        chosen, rejected = (a, b) if sa > sb else (b, a)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


@torch.no_grad()
def hidden_score_of(model_dir: str | Path, prompts: list[str], max_new_tokens: int, temperature: float,
                    seed: int) -> tuple[float, list[tuple[str, str]]]:
    """Mean hidden-rule score of completions sampled from a saved model, and a few of them."""
    from ppokit.rlhf.models.generation import decode, encode_prompts, sample
    from ppokit.rlhf.models.loading import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    model = load_causal_lm(str(model_dir), torch.float32, torch.device("cpu"))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        ids, mask = encode_prompts(tokenizer, prompts, torch.device("cpu"))
        batch, _ = sample(model, tokenizer, ids, mask, max_new_tokens, temperature)
    completions = decode(tokenizer, batch.completion_ids, batch.completion_mask)
    scores = hidden_rule_reward(prompts, completions)
    return sum(scores) / len(scores), list(zip(prompts, completions))


def run_demo(run_dir: str | Path = "runs/rlhf-demo", seed: int = 0, ppo_updates: int = 60, overwrite: bool = False,
             progress: bool = True, echo: Any = print,
             plot: Callable[[Any, Path], Any] | None = None) -> dict[str, Any]:
    """Run the four stages into ``run_dir``; returns a summary (also written to summary.json).
    ``plot(run_dirs, png)``: draws the PPO run's curves into ``run_dir/training.png``
    (``ppokit rlhf demo`` passes :func:`ppokit.analysis.plots.plot_runs`)."""
    from ppokit.errors import CheckpointError, ConfigError
    from ppokit.io.atomic import atomic_write_json
    from ppokit.io.run_dir import holds_run
    from ppokit.rlhf.config import RewardConfig, RLHFConfig, SFTConfig
    from ppokit.rlhf.ppo.trainer import RLHFTrainer
    from ppokit.rlhf.supervised.reward_model import train_reward_model
    from ppokit.rlhf.supervised.sft import train_sft
    from ppokit.rlhf.tiny import build_tiny_gpt2

    out = Path(run_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--run-dir {out}: exists and is not a directory")
    if (out / "summary.json").exists() and not overwrite:
        raise CheckpointError(f"{out} already holds a demo; pass --overwrite to run it again there")
    for stage in ("sft", "reward", "ppo"):
        if holds_run(out / stage) and not overwrite:
            raise CheckpointError(f"{out / stage} already holds a run; pass --overwrite to run the demo again there")
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    started = time.perf_counter()
    common: dict[str, Any] = dict(seed=seed, device="cpu", progress=progress, torch_threads=0)

    echo(f"[1/4] building a word tokenizer ({len(WORDS)} words) and a 2-layer GPT-2 from scratch")
    base = build_tiny_gpt2(out / "base_model", WORDS, n_layer=2, n_embd=64, n_head=4, n_positions=48, seed=seed)

    echo("[2/4] supervised fine-tuning on 3000 descriptions that use every kind of adjective alike")
    sft = train_sft(SFTConfig(model=str(base), epochs=3, batch_size=32, learning_rate=3e-3, max_length=32, **common),
                    data=sft_rows(3000, rng), run_dir=out / "sft", overwrite=overwrite)
    echo(f"      final loss {sft['final_loss']:.3f}")

    echo("[3/4] training a reward model on 3000 preference pairs labelled by the hidden rule")
    reward = train_reward_model(
        RewardConfig(model=sft["model_dir"], epochs=3, batch_size=32, learning_rate=1e-3, max_length=32,
                     eval_fraction=0.0, **common),
        data=preference_rows(3000, rng), eval_data=preference_rows(500, rng), run_dir=out / "reward", overwrite=overwrite)
    echo(f"      held-out pairwise accuracy {reward['eval_accuracy']:.3f}")

    prompts = [f"describe the {noun} :" for noun in NOUNS]
    eval_prompts = prompts * 10
    before, samples_before = hidden_score_of(sft["model_dir"], eval_prompts, 16, 1.0, seed + 1)

    echo(f"[4/4] PPO against the reward model for {ppo_updates} updates")
    config = RLHFConfig(
        # The hidden rule rides along with weight 0: it does not train, it is logged (score_1) and plotted.
        policy=sft["model_dir"], rewards=[reward["model_dir"], "ppokit.rlhf.demo:hidden_rule_reward"], reward_weights=[1.0, 0.0],
        total_updates=ppo_updates, batch_size=32,
        num_minibatches=2, num_epochs=4, max_new_tokens=16, learning_rate=5e-4, kl_coef=0.05,
        missing_eos_penalty=1.0, sample_every=10, **common,
    )
    trainer = RLHFTrainer(config, prompts=[{"prompt": p} for p in prompts], run_dir=out / "ppo", overwrite=overwrite)
    ppo = trainer.learn()
    after, samples_after = hidden_score_of(Path(ppo["run_dir"]) / "policy", eval_prompts, 16, 1.0, seed + 1)
    try:
        plotted = plot is not None and plot([out / "ppo"], out / "training.png") is not None
    except ConfigError:  # matplotlib is not installed: the demo's numbers do not need it
        plotted = False

    summary = {
        "reward_model_eval_accuracy": reward["eval_accuracy"],
        "hidden_score_before": before, "hidden_score_after": after,
        "reward_score_first": ppo["score_first"], "reward_score_last": ppo["score_last"],
        "kl_last": ppo["kl_last"], "ppo_mean_update_s": ppo["mean_update_s"],
        "seconds": time.perf_counter() - started,
        "samples_before": samples_before[:5], "samples_after": samples_after[:5],
        "plot": str(out / "training.png") if plotted else None,
    }
    atomic_write_json(out / "summary.json", summary)
    echo("")
    echo("samples before PPO (SFT model):")
    for p, y in samples_before[:4]:
        echo(f"  {p} {y}")
    echo("samples after PPO:")
    for p, y in samples_after[:4]:
        echo(f"  {p} {y}")
    echo("")
    echo(f"hidden rule's score of sampled completions: {before:+.2f} before PPO -> {after:+.2f} after")
    echo(f"reward-model score over PPO: {ppo['score_first']:+.2f} -> {ppo['score_last']:+.2f}; "
         f"final KL to the reference {ppo['kl_last']:.2f} nats")
    if plotted:
        echo(f"plot: {out / 'training.png'}")
    echo(f"done in {summary['seconds']:.0f} s; everything is in {out}")
    return summary
