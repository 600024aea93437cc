"""The fields several configs share, each declared once: one doc and one rule, whichever config has it.

A config declares such a field with :func:`shared` and its own default (``learning_rate`` is 3e-4 for
control and 1e-5 for RLHF PPO, but means the same and is checked the same way)::

    learning_rate: float = shared("learning_rate", default=3e-4)

Where a field's meaning depends on the front end (what ``batch_size`` counts), the one doc says so.
A field only one config has is declared there, with :func:`ppokit.configuration.doc`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ppokit.configuration import AT_LEAST_1, FRACTION, NON_NEGATIVE, OPEN_UNIT, POSITIVE, UNIT, Rule

#: Seeds must fit the generators that take them (NumPy's legacy seed is 32 bits).
MAX_SEED = 2**32 - 1
#: Upper bound of torch_threads: far more threads than any machine has cores crash torch's pool.
MAX_THREADS = 1024
DEVICES = ("cpu", "auto", "cuda", "mps")

#: ``name: (doc, rule)`` of every shared field.
SHARED: dict[str, tuple[str, Rule | None]] = {
    # --- where and how a run goes ---
    "seed": ("Seed of every random generator the run draws from: torch, NumPy, Python, the environments or the "
             "data order.", Rule(lambda v: 0 <= v <= MAX_SEED, f"in [0, {MAX_SEED}]")),
    "device": ("'auto' (CUDA when available, else the CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'.",
               Rule(lambda v: v in DEVICES or v.startswith("cuda:"), "'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'")),
    "torch_threads": ("torch's intra-op threads, and NumPy's BLAS threads (the NumPy fast path's products); 0 keeps "
                      "the libraries' defaults, or with N processes on one machine (--nproc, "
                      "torchrun) gives each its share of the cores (small MLPs run fastest on 1).",
                      Rule(lambda v: 0 <= v <= MAX_THREADS, f"in [0, {MAX_THREADS}]")),
    "dist_backend": ("torch.distributed backend with several processes (--nproc, torchrun): 'auto' (NCCL on CUDA, "
                     "gloo on a CPU), 'gloo' or 'nccl'.", None),
    "dist_timeout": ("Seconds a process waits for the others in a collective before the job fails (a process that "
                     "stopped answering).", POSITIVE),
    "run_dir": ("Where the run is written; null picks runs/<env or stage>__seed<N>__<time>.", None),
    "tensorboard": ("Write TensorBoard event files into the run directory.", None),
    "trackers": ("Experiment trackers that also get the config, metrics, final evaluation or summary, and model: "
                 "[wandb], [mlflow] or both.", None),
    "progress": ("Show a progress bar (with env steps/s and the recent return, or the score or loss).", None),
    "checkpoint_every": ("Save a resumable checkpoint every this many updates (optimiser steps for SFT and reward "
                         "training); 0: only by time, at the end and on Ctrl-C.", NON_NEGATIVE),
    "checkpoint_minutes": ("Also save one when this many minutes have passed since the last; 0 disables.",
                           NON_NEGATIVE),
    "keep_checkpoints": ("How many periodic checkpoints to keep (oldest removed first).", AT_LEAST_1),
    "on_nonfinite": ("A NaN/inf loss or gradient: 'stop' the run with an error, or 'skip' that minibatch and "
                     "count it.", None),
    "eval_every": ("Evaluate every this many updates (control: episodes on separate envs, logged as eval_return, "
                   "the best policy kept in RUN_DIR/best; SFT and reward training: the held-out loss every this many "
                   "optimiser steps); 0: control never, supervised stages at the end of each epoch only.",
                   NON_NEGATIVE),
    # --- the optimiser ---
    "learning_rate": ("Adam(W) learning rate (the initial one when scheduled).", POSITIVE),
    "lr_schedule": ("'constant' or 'linear' (annealed to 0 over the run).", None),
    "weight_decay": ("AdamW weight decay.", NON_NEGATIVE),
    "max_grad_norm": ("Global gradient-norm clip; 0 disables it.", NON_NEGATIVE),
    "gradient_accumulation_steps": ("Micro-batches each (mini)batch is split into, each differentiated as soon as it "
                                    "is computed and weighted by its share of the entries (tokens, pairs): the "
                                    "same step with less activation memory.", AT_LEAST_1),
    # --- PPO ---
    "num_epochs": ("K: PPO epochs over each batch.", AT_LEAST_1),
    "num_minibatches": ("Minibatches per epoch; must divide the batch (num_envs * num_steps for control, batch_size "
                        "for RLHF, and each process's share of it).", AT_LEAST_1),
    "gamma": ("Discount γ (over env steps, or over a completion's tokens).", UNIT),
    "gae_lambda": ("GAE λ: 0 is one-step TD, 1 is Monte-Carlo.", UNIT),
    "clip_range": ("ε of the clipped surrogate: the probability ratio is clipped to [1 - ε, 1 + ε] (the initial "
                   "value when scheduled or adaptive).", OPEN_UNIT),
    "clip_range_vf": ("Clip the value update to ±this around the values of the rollout; null disables.", POSITIVE),
    "vf_coef": ("c1: weight of the value loss.", NON_NEGATIVE),
    "ent_coef": ("c2: weight of the entropy bonus. Control's null chooses it from the action space: 0.01 when every "
                 "action is discrete (a categorical's entropy is bounded, so the bonus keeps it exploring), else 0 "
                 "(a Gaussian's entropy grows without bound with its std).", NON_NEGATIVE),
    "kl_coef": ("β: weight of the KL. Control: the KL to the previous policy in the penalty loss (loss: penalty). "
                "RLHF: the KL to the reference, a per-token penalty in the reward or a loss term (kl_in). The "
                "initial value when adaptive.", NON_NEGATIVE),
    "adaptive_kl": ("Adapt β towards kl_target after each update: the PPO paper's rule (control, loss: penalty), or "
                    "the proportional controller of Ziegler et al. (RLHF).", None),
    "kl_target": ("The KL the adaptive controllers aim for: per update for control's adaptive β and ε; per "
                  "completion (nats summed over its tokens) for RLHF's adaptive β.", POSITIVE),
    "target_kl": ("Stop the epoch loop early when a minibatch's KL to the rollout policy exceeds 1.5× this; null "
                  "disables.", POSITIVE),
    "whiten_advantages": ("Whiten the advantages: control within each minibatch; RLHF's gae over the valid tokens of "
                          "the whole batch, once per update (grpo and rloo keep their own normalisation, "
                          "reinforce_pp always whitens).", None),
    # --- LoRA ---
    "lora": ("Train LoRA adapters (peft) instead of all the weights (a new value or reward head trains whole); the "
             "saved model has them merged in and the adapter alone is saved beside it. RLHF's reference is then "
             "the adapter-free base.", None),
    "lora_r": ("LoRA rank.", AT_LEAST_1),
    "lora_alpha": ("LoRA scaling α (peft takes an integer).", POSITIVE),
    "lora_dropout": ("LoRA dropout.", FRACTION),
    "lora_target_modules": ("Module names that get adapters; null lets peft pick for known architectures.", None),
    # --- the supervised stages' data ---
    "model": ("Hub id or local directory of the model to start from (for a reward model, usually the SFT model).",
              None),
    "data": ("JSONL, JSON, CSV or Parquet file of the rows: prompt/response pairs (SFT), preferences (reward "
             "training) or prompts (RLHF PPO).", None),
    "eval_data": ("Held-out file of rows like data's for the evaluation; null holds out eval_fraction of the prompts.",
                  None),
    "max_length": ("Maximum tokens of prompt + response; longer rows are an error (or skipped).", AT_LEAST_1),
    "epochs": ("Passes over the training rows.", AT_LEAST_1),
    "batch_size": ("Rows per optimiser step (SFT: sequences; reward training: pairs or rated rows), or prompts per "
                   "PPO update (RLHF), over all processes: each of N processes takes its share.", AT_LEAST_1),
    "eval_fraction": ("Fraction of the prompts held out for evaluation when eval_data is null (0: none).", FRACTION),
    "prompt_column": ("Column holding the prompt text.", None),
    "response_column": ("Column holding the response text (SFT), or the rated response (reward ratings).", None),
}


def shared(name: str, **default: Any) -> Any:
    """The dataclass field of shared field ``name``, with this config's default (``default=`` or
    ``default_factory=``)."""
    help_text, rule = SHARED[name]
    return dataclasses.field(metadata={"help": help_text, "rule": rule, "shared": True}, **default)
