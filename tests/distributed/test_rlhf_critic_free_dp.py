"""Critic-free advantages on 2 CPU processes (gloo) against one process: grpo's groups stay within a
process, reinforce_pp whitens over every process's tokens, and the KL loss term is weighted like the
rest of the loss.

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.distributed.test_rlhf_critic_free_dp OUT_DIR MODEL

runs the processes' side (:func:`two_processes`); the test runs the one-process side and compares.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.distributed import rlhf_scenarios as scenarios
from tests.distributed.test_rlhf_dp import ENV, JOB_TIMEOUT, ROOT, max_diff, ranks

pytest.importorskip("transformers")

#: The runs compared, as config changes. The shared scenarios' helpers know runs by name (KINDS), so
#: these are added to that table, here and in the processes; with G = 2 the update's 8 completions
#: are 4 prompts' (each process: 2 prompts, 4 completions, the scenarios' row split).
CRITIC_FREE_KINDS = {
    "grpo": {"advantage": "grpo", "num_generations": 2, "batch_size": 4},
    "reinforce_pp": {"advantage": "reinforce_pp", "gamma": 0.9},
}
scenarios.KINDS.update(CRITIC_FREE_KINDS)


def logprobs(trainer, params: dict[str, torch.Tensor], batch) -> torch.Tensor:
    """The policy's log-probs of the batch's tokens with ``params`` loaded (there are no values)."""
    from ppokit.rlhf.models.logprobs import token_logprobs

    trainer.models.trainable.load_state_dict(params)
    with torch.no_grad():
        logits, _ = trainer.models.policy_forward(batch.sequences)
        return token_logprobs(logits, batch.tokens, trainer.config.temperature) * batch.mask


def two_processes(out: Path, policy: str) -> None:
    """Each process updates on its half of each saved batch, then collects one batch of its own."""
    from ppokit.rlhf.ppo.trainer import RLHFTrainer

    results = {}
    for kind in CRITIC_FREE_KINDS:
        trainer = RLHFTrainer(scenarios.ppo_config(policy, out / f"run-{kind}", **CRITIC_FREE_KINDS[kind]),
                              prompts=scenarios.write_prompts(out / f"prompts-{kind}.jsonl"))
        rank, local = trainer.collective.rank, scenarios.BATCH // scenarios.WORLD
        saved = torch.load(out / f"batch-{kind}.pt", weights_only=False)["batch"]
        torch.manual_seed(1000 + rank)
        record = trainer.update_on(scenarios.rows(saved, rank * local, (rank + 1) * local))
        trainer.save(out / f"saved-{kind}")
        results[kind] = {"params": scenarios.trainable_params(trainer), "record": record, "kl_coef": trainer.kl_coef}
        if kind == "grpo":
            trainer.update()  # this process's 2 prompts, each sampled twice
            results["own_prompts"] = trainer.last_batch[0]
    torch.save(results, out / f"rank{trainer.collective.rank}.pt")


@pytest.mark.parametrize("kind", list(CRITIC_FREE_KINDS))
def test_two_processes_take_the_critic_free_update_of_one_process(kind, tiny_lm, tmp_path_factory):
    out = _job(tiny_lm, tmp_path_factory)
    got = ranks(out)
    trainer, record, kl_coef = scenarios.reference_step(tiny_lm, out, kind)
    saved = torch.load(out / f"batch-{kind}.pt", weights_only=False)
    want = logprobs(trainer, scenarios.trainable_params(trainer), saved["batch"])
    assert float((want - logprobs(trainer, saved["start"], saved["batch"])).abs().max()) > 1e-2  # it moved
    assert max_diff(got[0][kind]["params"], got[1][kind]["params"]) == 0.0
    for rank in got:
        assert float((logprobs(trainer, rank[kind]["params"], saved["batch"]) - want).abs().max()) < 1e-4
    for name in ("score", "kl", "non_score_reward", "entropy", "response_length", "eos_rate", "policy_loss",
                 "approx_kl_k3", "clip_fraction", "grad_norm", "epochs", "minibatch_steps"):
        assert got[0][kind]["record"][name] == pytest.approx(record[name], rel=1e-4, abs=1e-6), name
    for name in ("value_loss", "value_mean", "explained_variance"):
        assert name not in got[0][kind]["record"] and name not in record
    assert got[0][kind]["kl_coef"] == pytest.approx(kl_coef, rel=1e-9) and kl_coef != 0.05
    assert (out / f"saved-{kind}" / "policy").is_dir() and not (out / f"saved-{kind}" / "value_model").exists()
    if kind == "grpo":  # each process sampled its own prompts twice: no group spans the processes
        for rank in got:
            own = rank["own_prompts"]
            assert len(own) == 4 and own[0] == own[1] and own[2] == own[3] and own[0] != own[2]
        assert not set(got[0]["own_prompts"]) & set(got[1]["own_prompts"])


_JOBS: dict[str, Path] = {}


def _job(policy: str, tmp_path_factory) -> Path:
    """The batches, and the one torchrun job both tests read (run once)."""
    if policy not in _JOBS:
        out = tmp_path_factory.mktemp("critic_free_dp")
        for kind in CRITIC_FREE_KINDS:
            scenarios.collect_batch(policy, out, kind)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "-m", "tests.distributed.test_rlhf_critic_free_dp", str(out), policy]
        proc = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=JOB_TIMEOUT)
        assert proc.returncode == 0, proc.stderr[-4000:]
        _JOBS[policy] = out
    return _JOBS[policy]


if __name__ == "__main__":
    from ppokit.launch import leave_processes

    two_processes(Path(sys.argv[1]), sys.argv[2])
    leave_processes()
