"""Supervised fine-tuning: teach a causal LM to answer prompts, with the loss on the response only.

.. math:: L = -\\frac{1}{|R|}\\sum_{t \\in R} \\log \\pi_\\theta(y_t \\mid x, y_{<t})

where :math:`R` is the set of response tokens (the prompt is context, not a target). With several
processes (``--nproc``, ``torchrun``) each takes its share of every batch and :math:`|R|` counts the
response tokens of all of them, so the step is the one a single process takes on the whole batch.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from ppokit.io.atomic import atomic_write_dir
from ppokit.rlhf import data as rdata
from ppokit.rlhf import data_parallel
from ppokit.rlhf.common import (
    join,
    open_run,
    optimizer_step,
    pad_right,
    progress_bar,
    runtime,
    shuffled_batches,
    step_optimizer,
    supervised_setup,
)
from ppokit.rlhf.config import SFTConfig
from ppokit.rlhf.generation import token_logprobs
from ppokit.rlhf.models import (
    check_tokenizes,
    length_limit,
    load_causal_lm,
    load_tokenizer,
    model_positions,
    position_ids_from_mask,
)

log = logging.getLogger("ppokit")


def tokenize_sft(tokenizer: Any, rows: list[dict], add_eos: bool) -> list[tuple[list[int], int]]:
    """``(ids, prompt_length)`` per row: prompt and response tokenised apart and joined, as generation
    produces them, with EOS after the response so the model learns to stop."""
    prompts = tokenizer([r["prompt"] for r in rows], add_special_tokens=True)["input_ids"]
    responses = tokenizer([r["response"] for r in rows], add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if add_eos else []
    return [(p + r + eos, len(p)) for p, r in zip(prompts, responses)]


def sft_loss(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the target (response) tokens."""
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False).logits
    logp = token_logprobs(logits[:, :-1], ids[:, 1:])
    targets = target_mask[:, 1:].to(logp.dtype)
    return -(logp * targets).sum() / targets.sum().clamp_min(1.0)


def train_sft(config: SFTConfig, data: Any = None, run_dir: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune ``config.model`` on prompt/response rows; saves ``<run_dir>/model``.

    ``data`` (a ``datasets.Dataset`` or list of dicts) replaces ``config.data`` when given.
    Returns a summary with the run directory, the model directory and the final loss.
    """
    device, dtype = runtime(config)
    collective = join(config, device)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    loaded = rdata.load(
        data if data is not None else config.data,
        {"prompt": (config.prompt_column, "text"), "response": (config.response_column, "text")},
        config.skip_bad_rows,
    )
    check_tokenizes(tokenizer, [r["prompt"] + " " + r["response"] for r in loaded.rows], config.model, "SFT data")

    def lengths_of(rows: list[dict[str, Any]]) -> list[int]:
        for row, tokens in zip(rows, tokenize_sft(tokenizer, rows, config.add_eos)):
            row["_tokens"] = tokens
        return [len(r["_tokens"][0]) for r in rows]

    limit = length_limit(config.max_length, config.model, model_positions(config.model, config.trust_remote_code))
    loaded = rdata.drop_long(loaded, lengths_of, limit,
                             "prompt + response", "max_length (capped to the model's positions)"
                             if limit < config.max_length else "max_length", config.skip_bad_rows)
    encoded = [r["_tokens"] for r in loaded.rows]
    model = load_causal_lm(config.model, dtype, device, config.trust_remote_code)
    model.train()
    data_parallel.start(model, config.seed, collective)

    path, metrics = open_run(config, "sft", run_dir, overwrite, collective)
    total, optimizer, scheduler, generator = supervised_setup(model, config, len(encoded))
    stepper = step_optimizer(optimizer, collective)
    bar = progress_bar(config.progress and collective.is_main, total, "sft")
    step, loss_value, start = 0, float("nan"), time.perf_counter()
    with metrics:  # open until the model is saved, so the trackers get it
        try:
            for epoch in range(config.epochs):
                for batch in shuffled_batches(len(encoded), config.batch_size, generator):
                    rows = data_parallel.local_slice(batch, collective)  # all of it with one process
                    t0 = time.perf_counter()
                    loss, tokens = None, 0.0
                    if rows:
                        ids, mask = pad_right([encoded[i][0] for i in rows], tokenizer.pad_token_id)
                        target = mask.clone()
                        for j, i in enumerate(rows):
                            target[j, : encoded[i][1]] = 0
                        ids, mask, target = ids.to(device), mask.to(device), target.to(device)
                        loss = sft_loss(model, ids, mask, target)
                        tokens = float(target[:, 1:].sum())  # the tokens the loss averages over
                    loss_value, grad_norm = optimizer_step(loss, tokens, stepper, collective, config.max_grad_norm,
                                                           f"SFT step {step + 1}")
                    scheduler.step()
                    step += 1
                    tokens = collective.sum_floats(tokens)[0] if collective.active else tokens
                    metrics.log({"step": step, "epoch": epoch, "loss": loss_value, "grad_norm": grad_norm,
                                 "learning_rate": scheduler.get_last_lr()[0],
                                 "tokens_per_s": tokens / max(time.perf_counter() - t0, 1e-9)}, step)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.3f}")
        finally:
            bar.close()
        model_dir = path / "model"
        def write(tmp: Path) -> None:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)

        # Complete or absent: a kill mid-save must never leave weights without their tokenizer.
        if collective.is_main:  # the weights are the same in every process
            atomic_write_dir(model_dir, write)
        summary = {"run_dir": str(path), "model_dir": str(model_dir), "steps": step, "final_loss": loss_value,
                   "rows": len(encoded), "skipped_rows": loaded.skipped, "seconds": time.perf_counter() - start}
        metrics.finish(summary, model_dir)
    log.info("SFT: %d steps, final loss %.4f; model saved to %s", step, loss_value, model_dir)
    return summary
