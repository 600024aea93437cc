"""Supervised fine-tuning: teach a causal LM to answer prompts, with the loss on the response only.

.. math:: L = -\\frac{1}{|R|}\\sum_{t \\in R} \\log \\pi_\\theta(y_t \\mid x, y_{<t})

where :math:`R` is the set of response tokens of the batch (the prompt is context, not a target).
With gradient accumulation each micro-batch's mean is weighted by its share of :math:`R`; with
several processes (``--nproc``, ``torchrun``) each takes its share of every batch and :math:`|R|`
counts the response tokens of all of them; either way the step is the one a single process takes
on the whole batch. The evaluation loss is the same token mean over the held-out rows.

:class:`SFTTrainer` runs in the loop of :mod:`ppokit.rlhf.supervised.loop` (checkpoints, exact resume,
evaluation); :func:`train_sft` is the one-call form.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch

from ppokit.io.atomic import atomic_write_dir
from ppokit.io.loop import Callback
from ppokit.rlhf import data as rdata
from ppokit.rlhf import data_parallel
from ppokit.rlhf.config import SFTConfig
from ppokit.rlhf.data import split_by_prompt
from ppokit.rlhf.models.loading import (
    check_tokenizes,
    length_limit,
    load_causal_lm,
    load_tokenizer,
    model_positions,
    pad_right,
    position_ids_from_mask,
)
from ppokit.rlhf.models.logprobs import token_logprobs
from ppokit.rlhf.models.lora import save_adapter, with_lora
from ppokit.rlhf.supervised.loop import SupervisedTrainer, data_fingerprint
from ppokit.rlhf.supervised.steps import MicroBatch

log = logging.getLogger("ppokit")

#: Where a LoRA run's adapter alone is saved, next to the merged ``model/``.
ADAPTER_DIR = "model_adapter"


def tokenize_sft(tokenizer: Any, rows: list[dict], add_eos: bool) -> list[tuple[list[int], int]]:
    """``(ids, prompt_length)`` per row: prompt and response tokenised apart and joined, as generation
    produces them, with EOS after the response so the model learns to stop."""
    prompts = tokenizer([r["prompt"] for r in rows], add_special_tokens=True)["input_ids"]
    responses = tokenizer([r["response"] for r in rows], add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if add_eos else []
    return [(p + r + eos, len(p)) for p, r in zip(prompts, responses)]


def response_nll(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                 target_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(summed negative log-likelihood, count)`` of the target (response) tokens."""
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False).logits
    logp = token_logprobs(logits[:, :-1], ids[:, 1:])
    targets = target_mask[:, 1:].to(logp.dtype)
    return -(logp * targets).sum(), targets.sum()


def sft_loss(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the target (response) tokens."""
    nll, count = response_nll(model, ids, mask, target_mask)
    return nll / count.clamp_min(1.0)


class SFTTrainer(SupervisedTrainer[SFTConfig]):
    """Fine-tune ``config.model`` on prompt/response rows.

    ``data`` / ``eval_data`` (a ``datasets.Dataset`` or list of dicts) replace ``config.data`` /
    ``config.eval_data``. ``resume=True`` continues the run in ``run_dir`` from its latest checkpoint
    (bit-identically on one CPU thread), or starts it when there is none yet.
    """

    stage = "sft"
    rate = "tokens_per_s"

    def __init__(self, config: SFTConfig, data: Any = None, eval_data: Any = None, run_dir: str | Path | None = None,
                 overwrite: bool = False, resume: bool = False) -> None:
        super().__init__(config, run_dir, overwrite, resume)
        c = config
        self.tokenizer = load_tokenizer(c.model, c.trust_remote_code)
        loaded = self._load(data if data is not None else c.data)
        if eval_data is not None or c.eval_data:
            train_rows, eval_rows = loaded.rows, self._load(eval_data if eval_data is not None else c.eval_data).rows
        else:
            train_rows, eval_rows = split_by_prompt(loaded.rows, c.eval_fraction, c.seed)
        self.skipped_rows = loaded.skipped
        self.encoded = [r["_tokens"] for r in train_rows]
        self.eval_encoded = [r["_tokens"] for r in eval_rows]
        model = load_causal_lm(c.model, self.dtype, self.device, c.trust_remote_code)
        if c.lora:
            model = with_lora(model, c, "CAUSAL_LM")
        model.train()
        data_parallel.start(model, c.seed, self.collective)
        self._start(model, len(self.encoded), data_fingerprint(self.encoded))

    def _load(self, source: Any) -> rdata.Loaded:
        """Rows of prompt/response text, tokenised (``_tokens``), over-long ones refused (or skipped)."""
        c, tokenizer = self.config, self.tokenizer
        loaded = rdata.load(source, {"prompt": (c.prompt_column, "text"), "response": (c.response_column, "text")},
                            c.skip_bad_rows)
        check_tokenizes(tokenizer, [r["prompt"] + " " + r["response"] for r in loaded.rows], c.model, "SFT data")

        def lengths_of(rows: list[dict[str, Any]]) -> list[int]:
            for row, tokens in zip(rows, tokenize_sft(tokenizer, rows, c.add_eos)):
                row["_tokens"] = tokens
            return [len(r["_tokens"][0]) for r in rows]

        limit = length_limit(c.max_length, c.model, model_positions(c.model, c.trust_remote_code))
        return rdata.drop_long(loaded, lengths_of, limit, "prompt + response", "max_length (capped to the model's "
                               "positions)" if limit < c.max_length else "max_length", c.skip_bad_rows)

    def _tensors(self, rows: list[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(ids, mask, target mask)`` of tokenised rows, right-padded, on the device."""
        ids, mask = pad_right([tokens for tokens, _ in rows], self.tokenizer.pad_token_id)
        target = mask.clone()
        for j, (_, prompt_length) in enumerate(rows):
            target[j, :prompt_length] = 0
        return ids.to(self.device), mask.to(self.device), target.to(self.device)

    def micro_batch(self, rows: list[int]) -> MicroBatch:
        ids, mask, target = self._tensors([self.encoded[i] for i in rows])
        tokens = float(target[:, 1:].sum())  # the tokens the loss averages over
        return MicroBatch(tokens, lambda: (sft_loss(self.model, ids, mask, target), {}))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        """Token-mean NLL of the held-out responses (each process scores its share of the rows)."""
        if not self.eval_encoded:
            return None
        c = self.config
        size = -(-c.batch_size // c.gradient_accumulation_steps)  # a micro-batch's rows: memory is known to fit
        local = data_parallel.local_slice(self.eval_encoded, self.collective)
        self.model.eval()
        nll, tokens = 0.0, 0.0
        for start in range(0, len(local), size):
            part_nll, part_tokens = response_nll(self.model, *self._tensors(local[start:start + size]))
            nll, tokens = nll + float(part_nll), tokens + float(part_tokens)
        self.model.train()
        if self.collective.active:
            nll, tokens = self.collective.sum_floats(nll, tokens)
        return {"eval_loss": nll / max(tokens, 1.0)}

    def finish(self) -> tuple[dict[str, Any], Path]:
        """Save ``model/`` (LoRA merged in) and, with LoRA, the adapter alone in ``model_adapter/``."""
        assert self.run_dir is not None
        model_dir, tokenizer = self.run_dir / "model", self.tokenizer
        model: Any = self.model  # a transformers causal LM, or a peft model around one

        def write(tmp: Path) -> None:
            merged = copy.deepcopy(model).merge_and_unload() if self.config.lora else model
            merged.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)

        # Complete or absent: a kill mid-save must never leave weights without their tokenizer.
        if self.collective.is_main:  # the weights are the same in every process
            if self.config.lora:
                atomic_write_dir(self.run_dir / ADAPTER_DIR, lambda tmp: save_adapter(model, tmp, tokenizer))
            atomic_write_dir(model_dir, write)
        final = self.final_eval()
        summary = {"run_dir": str(self.run_dir), "model_dir": str(model_dir), "steps": self.num_updates,
                   "total_steps": self.batches.total,
                   "final_loss": self.last_loss, "eval_loss": final.get("eval_loss", float("nan")),
                   "rows": len(self.encoded), "eval_rows": len(self.eval_encoded), "skipped_rows": self.skipped_rows,
                   "seconds": self.seconds()}
        if self.config.lora:
            summary["adapter_dir"] = str(self.run_dir / ADAPTER_DIR)
        log.info("SFT: %d steps, final loss %.4f; model saved to %s", self.num_updates, self.last_loss, model_dir)
        return summary, model_dir


def train_sft(config: SFTConfig, data: Any = None, run_dir: str | Path | None = None, overwrite: bool = False,
              resume: bool = False, *, eval_data: Any = None, callback: Callback | None = None) -> dict[str, Any]:
    """Fine-tune ``config.model`` on prompt/response rows; saves ``<run_dir>/model`` and ``summary.json``.

    ``data`` / ``eval_data`` (a ``datasets.Dataset`` or list of dicts) replace ``config.data`` /
    ``config.eval_data`` when given. ``resume=True`` continues the run in ``run_dir`` from its latest
    checkpoint. ``callback`` gets each step's metrics row; returning False stops (and checkpoints).
    Returns a summary with the run directory, the model directory, the final and evaluation losses.
    """
    return SFTTrainer(config, data, eval_data, run_dir, overwrite, resume).learn(callback)
