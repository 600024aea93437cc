"""Data-parallel RLHF (PPO, SFT, reward models) on 2 CPU processes (gloo), and FSDP, against one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ppokit.errors import ConfigError
from tests.distributed import rlhf_scenarios as scenarios

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
#: No test here may wait longer than this for a job: a hang fails the test instead of the CI run.
JOB_TIMEOUT = 180
#: Metrics that measure time, not training.
TIMED = ("tokens_per_s", "generate_s", "score_s", "forward_s", "prepare_s", "epochs_s", "update_s")


def torchrun(scenario: str, out: Path, model: str, arg: str = "") -> None:
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "tests.distributed.rlhf_scenarios", scenario, str(out), model, arg]
    proc = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=JOB_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]


def ranks(out: Path) -> list[dict]:
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


# ----------------------------------------------------------------------------- one PPO update


@pytest.mark.parametrize("variant", list(scenarios.VARIANTS))
def test_two_processes_take_the_ppo_update_of_one_process_on_their_union(variant, tiny_lm, tmp_path):
    """Each process holds 4 of the 8 completions (different lengths, so different shares of the
    tokens); after 2 epochs x 2 minibatches the weights equal one process's on all 8, minibatch j
    being the union of the processes' minibatch j, and the metrics row is the whole batch's."""
    kind, sharding = scenarios.VARIANTS[variant]
    scenarios.collect_batch(tiny_lm, tmp_path, kind)
    torchrun("ppo_step", tmp_path, tiny_lm, variant)
    got = ranks(tmp_path)
    trainer, record, kl_coef = scenarios.reference_step(tiny_lm, tmp_path, kind)
    expected = scenarios.trainable_params(trainer)
    saved = torch.load(tmp_path / f"batch-{kind}.pt", weights_only=False)
    assert got[0]["sharded"] == (sharding == "fsdp")
    if sharding == "none":  # every process takes the same step
        assert max_diff(got[0]["params"], got[1]["params"]) == 0.0
    # What the weights compute on the batch: the log-probs and values of its tokens.
    want = scenarios.outputs(trainer, expected, saved["batch"])
    assert float((want - scenarios.outputs(trainer, saved["start"], saved["batch"])).abs().max()) > 1e-2  # it moved
    for rank in got:
        # 5e-7 here; 0.2 when the processes' losses are not weighted by their shares of the tokens.
        assert float((scenarios.outputs(trainer, rank["params"], saved["batch"]) - want).abs().max()) < 1e-4
    for name in ("score", "kl", "non_score_reward", "entropy", "response_length", "eos_rate", "value_mean",
                 "explained_variance", "policy_loss", "value_loss", "approx_kl_k3", "clip_fraction", "grad_norm",
                 "epochs", "minibatch_steps"):
        assert got[0]["record"][name] == pytest.approx(record[name], rel=1e-4, abs=1e-6), name
    assert got[0]["kl_coef"] == pytest.approx(kl_coef, rel=1e-9) and kl_coef != 0.05  # β from the whole batch's KL
    # Rank 0 wrote the (gathered) policy it trained, as one process would.
    from transformers import AutoModelForCausalLM

    written = AutoModelForCausalLM.from_pretrained(tmp_path / f"saved-{variant}" / "policy").state_dict()
    if kind != "lora":  # (with LoRA the policy is written merged)
        prefix = "lm." if kind == "head" else "policy."
        policy = {k[len(prefix):]: v for k, v in got[0]["params"].items() if k.startswith(prefix)}
        assert max_diff({k: written[k] for k in policy}, policy) == 0.0
    from safetensors.torch import load_file

    head = load_file(str(tmp_path / f"saved-{variant}" / "value_model" / "scalar_head.safetensors"))
    prefix = "value_head." if kind == "head" else "critic.head."
    assert max_diff(head, {k[len(prefix):]: v for k, v in got[0]["params"].items() if k.startswith(prefix)}) == 0.0


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize("sharding", ["none", "fsdp"])
def test_a_two_process_rlhf_run_resumes_exactly_and_refuses_another_world_size(sharding, tiny_lm, tmp_path):
    from ppokit.rlhf.ppo.trainer import RLHFTrainer

    whole = tmp_path / "whole"
    torchrun("learn", whole, tiny_lm, sharding)
    run = whole / "run"
    resume = json.loads((run / "checkpoints" / "update_000000000002" / "resume.json").read_text())
    assert resume["world_size"] == 2 and len(resume["ranks"]) == 2
    assert resume["ranks"][0]["rng"] != resume["ranks"][1]["rng"]
    assert "launch:\n  world_size: 2\n  global_batch_size: 8\n" in (run / "config.yaml").read_text()
    first = ranks(whole)
    assert max_diff(first[0]["params"], first[1]["params"]) == 0.0

    # The same run, stopped at its checkpoint of update 2.
    half = tmp_path / "half"
    shutil.copytree(whole, half)
    for name in ("policy", "value_model", "summary.json", "checkpoints/update_000000000004"):
        path = half / "run" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(ConfigError, match="checkpointed by 2 processes and is being resumed by 1"):
        RLHFTrainer.resume(half / "run", trust=True)
    proc = subprocess.run([sys.executable, "-m", "ppokit", "resume", str(half / "run"), "--nproc", "2", "--trust",
                           "--no-progress"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=JOB_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr.count("resuming RLHF PPO at update 2") == 1  # rank 0 alone prints
    final = Path("checkpoints") / "update_000000000004"
    for name in ("trainable.safetensors", "optimizer.pt", "policy/model.safetensors"):
        assert (half / "run" / final / name).read_bytes() == (run / final / name).read_bytes(), name

    def rows(path: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMED}
                for line in path.read_text().splitlines()]

    assert rows(half / "run" / "metrics.jsonl") == rows(run / "metrics.jsonl")
    assert [r["update"] for r in rows(run / "metrics.jsonl")] == [1, 2, 3, 4]  # rank 0 alone wrote them
    samples = rows(run / "samples.jsonl")
    assert rows(half / "run" / "samples.jsonl") == samples and len(samples) == 4 * 3


# ----------------------------------------------------------------------------- SFT and reward models


@pytest.fixture(scope="module")
def supervised_runs(tiny_lm, tmp_path_factory):
    """One 2-process job running SFT and reward training, and the same in this process."""
    model = tmp_path_factory.mktemp("no_dropout") / "model"
    shutil.copytree(tiny_lm, model)
    config = json.loads((model / "config.json").read_text())
    config.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # the same step in every process
    (model / "config.json").write_text(json.dumps(config))
    two, one = tmp_path_factory.mktemp("two"), tmp_path_factory.mktemp("one")
    torchrun("supervised", two, str(model))
    from ppokit.rlhf.supervised.reward_model import train_reward_model
    from ppokit.rlhf.supervised.sft import train_sft

    sft_data, pairs = scenarios.supervised_data(one)
    reference = {"sft": train_sft(scenarios.sft_config(str(model), one / "sft", sft_data)),
                 "reward": train_reward_model(scenarios.reward_config(str(model), one / "reward", pairs))}
    return two, one, ranks(two), reference, model


def _outputs(kind: str, model_dir: Path, data: Path) -> torch.Tensor:
    return scenarios.supervised_outputs(kind, model_dir, data)


def test_sft_on_two_processes_equals_one_process(supervised_runs):
    two, one, got, reference, model = supervised_runs
    assert got[0]["sft"]["steps"] == reference["sft"]["steps"] == 6  # 9 rows in batches of 4, twice
    assert got[0]["sft"]["final_loss"] == pytest.approx(reference["sft"]["final_loss"], rel=1e-5)
    assert got[1]["sft"]["final_loss"] == got[0]["sft"]["final_loss"]
    data = one / "sft.jsonl"
    expected = _outputs("sft", one / "sft" / "model", data)
    assert float((expected - _outputs("sft", model, data)).abs().max()) > 0.1  # it trained
    # 7e-7 here; 0.16 when the processes' losses are not weighted by their shares of the tokens.
    assert float((_outputs("sft", two / "sft" / "model", data) - expected).abs().max()) < 1e-4
    losses = [json.loads(line)["loss"] for line in (two / "sft" / "metrics.jsonl").read_text().splitlines()]
    ref_losses = [json.loads(line)["loss"] for line in (one / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert losses == pytest.approx(ref_losses, rel=1e-5)


def test_reward_training_on_two_processes_equals_one_process(supervised_runs):
    two, one, got, reference, _ = supervised_runs
    for key in ("steps", "train_pairs", "eval_pairs"):
        assert got[0]["reward"][key] == reference["reward"][key], key
    for key in ("eval_accuracy", "train_accuracy"):  # counted over both processes' pairs
        assert got[0]["reward"][key] == pytest.approx(reference["reward"][key], rel=1e-6), key
    # The raw outputs' mean is left out: the pair loss cannot see a shift of every output (ln_f's bias
    # here), so Adam moves the model along it on rounding noise; the normalised outputs below cancel it.
    assert got[0]["reward"]["reward_std"] == pytest.approx(reference["reward"]["reward_std"], rel=1e-4)
    data = one / "pairs.jsonl"
    expected = _outputs("reward", one / "reward" / "model", data)
    assert float((_outputs("reward", two / "reward" / "model", data) - expected).abs().max()) < 1e-4
    assert json.loads((two / "reward" / "eval.json").read_text())["eval_pairs"] == reference["reward"]["eval_pairs"]


def test_a_batch_that_does_not_split_evenly_is_refused():
    from ppokit.core.collective import SINGLE, Collective
    from ppokit.rlhf.data_parallel import check_batch

    two = Collective.__new__(Collective)
    two.world_size, two.rank, two.device = 2, 0, torch.device("cpu")
    check_batch(scenarios.ppo_config("p", Path("r")), SINGLE)
    check_batch(scenarios.ppo_config("p", Path("r")), two)
    with pytest.raises(ConfigError, match="'batch_size' = 7 must be a multiple of the 2 processes"):
        check_batch(scenarios.ppo_config("p", Path("r"), batch_size=7, num_minibatches=1), two)
    with pytest.raises(ConfigError, match="'num_minibatches' = 8 must divide each process's share"):
        check_batch(scenarios.ppo_config("p", Path("r"), num_minibatches=8), two)
