"""Training a reward model from human preferences (Bradley-Terry), or from ratings by regression.

Pairs come from ``chosen``/``rejected`` columns, from K-way rankings expanded into all their pairs
(InstructGPT), or from ratings within a prompt. The loss is
:func:`ppokit.core.losses.bradley_terry_loss`; ratings fitted by regression use the squared error
to the standardised rating. After training, the model's output is normalised to mean 0 and std 1
over the training responses, and that normalisation is saved with it.

With several processes (``--nproc``, ``torchrun``) each takes its share of every batch of pairs (the
loss is the mean over all of them, the gradients are averaged) and of the evaluation and
normalisation passes; rank 0 writes the run.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import torch

from ppokit.core.collective import SINGLE, Collective
from ppokit.core.losses import bradley_terry_loss
from ppokit.errors import TrainingError
from ppokit.io.atomic import atomic_write_dir, atomic_write_json
from ppokit.rlhf import data as rdata
from ppokit.rlhf import data_parallel
from ppokit.rlhf.common import (
    join,
    open_run,
    optimizer_step,
    progress_bar,
    runtime,
    shuffled_batches,
    step_optimizer,
    supervised_setup,
)
from ppokit.rlhf.config import RewardConfig
from ppokit.rlhf.models import (
    RewardModel,
    check_tokenizes,
    length_limit,
    load_tokenizer,
    model_positions,
    new_reward_model,
)
from ppokit.rlhf.rewards import encode_pairs

log = logging.getLogger("ppokit")


def split_by_prompt(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out whole prompts (not single pairs), so no held-out prompt was seen in training."""
    prompts = sorted({r["prompt"] for r in rows})
    if fraction <= 0 or len(prompts) < 2:
        return rows, []
    random.Random(seed).shuffle(prompts)
    n_eval = max(1, round(len(prompts) * fraction))
    held = set(prompts[:n_eval])
    return [r for r in rows if r["prompt"] not in held], [r for r in rows if r["prompt"] in held]


@torch.no_grad()
def score_texts(model: RewardModel, tokenizer: Any, prompts: list[str], responses: list[str],
                device: torch.device, batch_size: int = 64, raw: bool = True) -> torch.Tensor:
    """Rewards of ``prompt + response`` texts (unnormalised when ``raw``)."""
    was_training = model.training
    model.eval()
    out = []
    for s in range(0, len(prompts), batch_size):
        ids, mask = encode_pairs(tokenizer, prompts[s:s + batch_size], responses[s:s + batch_size], device)
        out.append((model.raw(ids, mask) if raw else model(ids, mask)).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def pairwise_accuracy(model: RewardModel, tokenizer: Any, pairs: list[dict], device: torch.device,
                      collective: Collective = SINGLE) -> float:
    """Fraction of pairs where the chosen response gets the higher reward (ties count as wrong).
    With several processes each scores its share of the pairs (every process passes all of them)."""
    if not pairs:
        return float("nan")
    local = data_parallel.local_slice(pairs, collective)
    prompts = [p["prompt"] for p in local]
    chosen = score_texts(model, tokenizer, prompts, [p["chosen"] for p in local], device)
    rejected = score_texts(model, tokenizer, prompts, [p["rejected"] for p in local], device)
    if not collective.active:
        return float((chosen > rejected).float().mean())
    correct, n = collective.sum_floats(float((chosen > rejected).sum()), float(len(local)))
    return correct / n


def output_scale(model: RewardModel, tokenizer: Any, prompts: list[str], responses: list[str], device: torch.device,
                 collective: Collective = SINGLE) -> tuple[float, float]:
    """The mean and standard deviation of the model's raw output over these texts (each process
    scores its share of them)."""
    if not collective.active:
        raw = score_texts(model, tokenizer, prompts, responses, device)
        return float(raw.mean()), float(raw.std().clamp_min(1e-6)) if raw.numel() > 1 else 1.0
    raw = score_texts(model, tokenizer, data_parallel.local_slice(prompts, collective),
                      data_parallel.local_slice(responses, collective), device)
    _, total, mean, var = collective.moments(raw)
    return float(mean), float(var.sqrt().clamp_min(1e-6)) if float(total) > 1 else 1.0


def train_reward_model(config: RewardConfig, data: Any = None, eval_data: Any = None,
                       run_dir: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Train a reward model; saves ``<run_dir>/model`` and writes ``eval.json`` with the held-out
    pairwise accuracy. Returns that summary."""
    device, dtype = runtime(config)
    collective = join(config, device)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    tokenizer.padding_side = "right"
    fmt, loaded = rdata.load_preferences(data if data is not None else config.data, config)
    texts_key = ("chosen", "rejected") if fmt == "pairs" else ("response",)
    check_tokenizes(tokenizer, [r["prompt"] + " " + r[texts_key[0]] for r in loaded.rows], config.model,
                    "preference data")
    limit = length_limit(config.max_length, config.model, model_positions(config.model, config.trust_remote_code))

    def lengths_of(rows: list[dict[str, Any]]) -> list[int]:
        return [max(len(tokenizer(r["prompt"])["input_ids"]) + len(tokenizer(r[k], add_special_tokens=False)["input_ids"])
                    for k in texts_key) for r in rows]

    loaded = rdata.drop_long(loaded, lengths_of, limit, "prompt + response", "max_length (capped to the model's positions)"
                             if limit < config.max_length else "max_length", config.skip_bad_rows)

    if eval_data is not None or config.eval_data:
        eval_fmt, eval_loaded = rdata.load_preferences(eval_data if eval_data is not None else config.eval_data, config)
        train_rows, eval_rows = loaded.rows, eval_loaded.rows
        if eval_fmt == "ratings":
            eval_rows = rdata.ratings_to_pairs(eval_rows)
    else:
        train_rows, eval_rows = split_by_prompt(loaded.rows, config.eval_fraction, config.seed)
        if fmt == "ratings":
            eval_rows = rdata.ratings_to_pairs(eval_rows)
    if not train_rows:
        raise TrainingError("no training rows left after holding out the evaluation prompts; lower eval_fraction")

    model = new_reward_model(config.model, config.head, dtype, device, tokenizer.pad_token_id, config.trust_remote_code)
    model.train()
    data_parallel.start(model, config.seed, collective)  # the new head is random: rank 0's for all
    rating_mean, rating_std = 0.0, 1.0
    if fmt == "ratings":
        ratings = torch.tensor([r["rating"] for r in train_rows])
        rating_mean, rating_std = float(ratings.mean()), float(ratings.std().clamp_min(1e-6)) if len(ratings) > 1 else 1.0

    path, metrics = open_run(config, "reward", run_dir, overwrite, collective)
    total, optimizer, scheduler, generator = supervised_setup(model, config, len(train_rows))
    stepper = step_optimizer(optimizer, collective)
    bar = progress_bar(config.progress and collective.is_main, total, "reward")
    step, start = 0, time.perf_counter()
    history = []
    with metrics:  # open until the model is saved, so the trackers get it
        try:
            for epoch in range(config.epochs):
                for batch in shuffled_batches(len(train_rows), config.batch_size, generator):
                    rows = [train_rows[i] for i in data_parallel.local_slice(batch, collective)]
                    prompts = [r["prompt"] for r in rows]
                    loss, figures = None, {}
                    if rows and fmt == "pairs":
                        # chosen and rejected in one forward pass
                        ids, mask = encode_pairs(tokenizer, prompts + prompts,
                                                 [r["chosen"] for r in rows] + [r["rejected"] for r in rows], device)
                        rewards = model.raw(ids, mask).float()
                        loss, accuracy = bradley_terry_loss(rewards[: len(rows)], rewards[len(rows):])
                        figures = {"accuracy": float(accuracy),
                                   "margin": float((rewards[: len(rows)] - rewards[len(rows):]).mean().detach())}
                    elif rows:
                        ids, mask = encode_pairs(tokenizer, prompts, [r["response"] for r in rows], device)
                        target = (torch.tensor([r["rating"] for r in rows], device=device) - rating_mean) / rating_std
                        loss = 0.5 * (model.raw(ids, mask).float() - target).square().mean()
                    if collective.active and fmt == "pairs":  # means over every process's pairs
                        sums = collective.sum_floats(*(figures.get(k, 0.0) * len(rows) for k in ("accuracy", "margin")),
                                                     float(len(rows)))
                        figures = {"accuracy": sums[0] / sums[2], "margin": sums[1] / sums[2]}
                    loss_value, grad_norm = optimizer_step(loss, float(len(rows)), stepper, collective,
                                                           config.max_grad_norm, f"reward-model step {step + 1}")
                    record = {"loss": loss_value, **figures, "grad_norm": grad_norm}
                    scheduler.step()
                    step += 1
                    record.update(step=step, epoch=epoch, learning_rate=scheduler.get_last_lr()[0])
                    metrics.log(record, step)
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.3f}")
                eval_accuracy = pairwise_accuracy(model, tokenizer, eval_rows, device, collective)
                history.append(eval_accuracy)
                metrics.log({"step": step, "epoch": epoch, "eval_accuracy": eval_accuracy}, step, prefix="eval")
                log.info("reward model: epoch %d, held-out pairwise accuracy %.3f", epoch + 1, eval_accuracy)
        finally:
            bar.close()

        # Normalise the output over the training responses: the PPO stage then sees scores of mean 0
        # and std 1 whatever scale the model drifted to.
        prompts, responses = [], []
        for r in train_rows:
            for k in texts_key:
                prompts.append(r["prompt"])
                responses.append(r[k])
        model.mean, model.std = output_scale(model, tokenizer, prompts, responses, device, collective)

        train_pairs = train_rows if fmt == "pairs" else rdata.ratings_to_pairs(train_rows)
        train_accuracy = pairwise_accuracy(model, tokenizer, train_pairs[:2048], device, collective)
        model_dir = path / "model"
        tokenizer.padding_side = "left"
        # Complete or absent: a kill mid-save must never leave weights without their tokenizer or metadata.
        if collective.is_main:  # the weights are the same in every process
            atomic_write_dir(model_dir, lambda tmp: model.save(tmp, tokenizer))
        summary = {
            "run_dir": str(path), "model_dir": str(model_dir), "format": fmt, "steps": step,
            "train_pairs": len(train_pairs), "eval_pairs": len(eval_rows),
            "train_accuracy": train_accuracy, "eval_accuracy": history[-1] if history else float("nan"),
            "eval_accuracy_per_epoch": history, "reward_mean": model.mean, "reward_std": model.std,
            "skipped_rows": loaded.skipped, "seconds": time.perf_counter() - start,
        }
        if collective.is_main:
            atomic_write_json(path / "eval.json", summary)
        metrics.finish(summary, model_dir)
    log.info("reward model saved to %s (held-out accuracy %.3f)", model_dir, summary["eval_accuracy"])
    return summary
