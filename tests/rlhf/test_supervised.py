"""SFT and reward training: checkpoints and exact resume, LoRA, gradient accumulation, evaluation
during training (tiny GPT-2s built in the tests, one thread, fixed seeds)."""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
from pathlib import Path

import pytest
import torch

from ppokit.cli.main import main
from ppokit.errors import CheckpointError, ConfigError
from ppokit.io.checkpoints import checkpoint_dirs, latest_checkpoint
from ppokit.rlhf.config import RewardConfig, SFTConfig
from ppokit.rlhf.demo import preference_rows, sft_rows
from ppokit.rlhf.supervised.reward_model import RewardTrainer, train_reward_model
from ppokit.rlhf.supervised.sft import SFTTrainer, train_sft

pytest.importorskip("transformers")
pytest.importorskip("peft")

SFT_ROWS = sft_rows(20, random.Random(1))  # 3 batches of 8 per epoch, the last one short
PAIRS = preference_rows(30, random.Random(0))


@pytest.fixture(scope="module")
def no_dropout_lm(tiny_lm, tmp_path_factory) -> str:
    """The shared tiny GPT-2 with dropout off, so a step's result does not depend on how the batch is cut."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("no_dropout")
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    model.config.resid_pdrop = model.config.embd_pdrop = model.config.attn_pdrop = 0.0
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_lm).save_pretrained(out)
    return str(out)


def _sft(model: str, **changes) -> SFTConfig:
    values = dict(model=model, epochs=2, batch_size=8, learning_rate=3e-3, max_length=32, progress=False,
                  tensorboard=False, torch_threads=1, device="cpu", seed=0)
    values.update(changes)
    return SFTConfig(**values)


def _reward(model: str, **changes) -> RewardConfig:
    values = dict(model=model, epochs=2, batch_size=8, learning_rate=3e-3, max_length=32, progress=False,
                  tensorboard=False, torch_threads=1, device="cpu", seed=0, eval_fraction=0.2)
    values.update(changes)
    return RewardConfig(**values)


def _train(stage: str, config, run_dir: Path, **kwargs) -> dict:
    if stage == "sft":
        return train_sft(config, data=SFT_ROWS, run_dir=run_dir, **kwargs)
    return train_reward_model(config, data=PAIRS, run_dir=run_dir, **kwargs)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "model.safetensors"))


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _crash_at(step: int):
    def callback(record):
        if record["step"] == step:
            raise RuntimeError("simulated crash")
    return callback


CASES = [
    ("sft", {}),
    ("sft", {"lora": True, "lora_r": 4, "eval_fraction": 0.2, "eval_every": 2}),
    ("reward", {"eval_every": 2}),
    ("reward", {"lora": True, "lora_r": 4, "head": "value_head"}),
]


@pytest.mark.parametrize(("stage", "changes"), CASES)
def test_a_crashed_run_resumes_bit_identically(tiny_lm, tmp_path, stage, changes):
    config = (_sft if stage == "sft" else _reward)(tiny_lm, checkpoint_every=2, **changes)
    straight = _train(stage, config, tmp_path / "straight")
    n = straight["steps"]
    assert n >= 4 and n % 2 == 0  # two epochs of 2 or more batches
    # Killed after step n-1's row was written; its latest checkpoint is step n-2's, in the second epoch
    # (or at the end of the first).
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(stage, config, tmp_path / "split", callback=_crash_at(n - 1))
    assert latest_checkpoint(tmp_path / "split").name == f"update_{n - 2:012d}"
    assert [r["step"] for r in _rows(tmp_path / "split") if "loss" in r] == list(range(1, n))
    resumed = _train(stage, config, tmp_path / "split", resume=True)
    assert resumed["steps"] == n
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Each step once: the crashed run's step 5 was dropped and written again.
    train_rows = [r for r in _rows(tmp_path / "split") if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, n + 1))
    straight_rows = [r for r in _rows(tmp_path / "straight") if "loss" in r]
    assert [(r["loss"], r["grad_norm"]) for r in train_rows] == [(r["loss"], r["grad_norm"]) for r in straight_rows]
    evals = [r["step"] for r in _rows(tmp_path / "split") if "eval_loss" in r]
    assert evals == sorted(set(evals)) == [r["step"] for r in _rows(tmp_path / "straight") if "eval_loss" in r]
    assert len(checkpoint_dirs(tmp_path / "split")) == 2  # keep_checkpoints
    summary = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert summary["final_loss"] == straight["final_loss"]


def test_a_stopped_run_resumes_and_a_finished_one_stays_finished(tiny_lm, tmp_path):
    config = _sft(tiny_lm, checkpoint_minutes=0)
    stopped = train_sft(config, data=SFT_ROWS, run_dir=tmp_path / "run", callback=lambda r: r["step"] < 2)
    assert stopped["steps"] == 2 and latest_checkpoint(tmp_path / "run").name == "update_000000000002"
    trainer = SFTTrainer(config, data=SFT_ROWS, run_dir=tmp_path / "run", resume=True)
    assert trainer.num_updates == 2 and trainer.batches.state_dict()["index"] == 2
    assert trainer.learn()["steps"] == 6
    again = SFTTrainer(config, data=SFT_ROWS, run_dir=tmp_path / "run", resume=True)
    assert again.num_updates == 6 and again.learn()["steps"] == 6
    assert [r["step"] for r in _rows(tmp_path / "run")] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_a_changed_field_or_other_data(tiny_lm, tmp_path):
    config = _sft(tiny_lm, epochs=1)
    train_sft(config, data=SFT_ROWS, run_dir=tmp_path / "run", callback=lambda r: r["step"] < 1)
    with pytest.raises(CheckpointError, match=r"learning_rate = 0\.003 \(now 0\.01\)"):
        train_sft(_sft(tiny_lm, epochs=1, learning_rate=1e-2), data=SFT_ROWS, run_dir=tmp_path / "run", resume=True)
    with pytest.raises(CheckpointError, match="gradient_accumulation_steps"):
        train_sft(_sft(tiny_lm, epochs=1, gradient_accumulation_steps=2), data=SFT_ROWS, run_dir=tmp_path / "run",
                  resume=True)
    with pytest.raises(CheckpointError, match="trained on other data"):
        train_sft(config, data=SFT_ROWS[:-1], run_dir=tmp_path / "run", resume=True)
    # What only watches or saves the run may change.
    assert train_sft(_sft(tiny_lm, epochs=1, keep_checkpoints=1, eval_every=1), data=SFT_ROWS,
                     run_dir=tmp_path / "run", resume=True)["steps"] == 3


def _first_gradient(trainer) -> dict[str, torch.Tensor]:
    """The gradient the first batch's accumulated step applies (the step itself left out)."""
    from ppokit.core.collective import SINGLE
    from ppokit.core.optim import TorchOptimizer
    from ppokit.rlhf.supervised.steps import accumulated_step, micro_slices

    class NoStep(TorchOptimizer):
        def step(self) -> None:
            pass

    rows = trainer.batches.next()
    micro = [trainer.micro_batch(list(part)) for part in micro_slices(rows, trainer.config.gradient_accumulation_steps)]
    accumulated_step(micro, NoStep(trainer.torch_optimizer), SINGLE, 0.0, "test", trainer.figures)
    trainer.metrics.close()
    return {name: p.grad.clone() for name, p in trainer.trainable.items()}


@pytest.mark.parametrize("stage", ["sft", "reward"])
def test_an_accumulated_gradient_is_the_whole_batch_gradient(no_dropout_lm, tmp_path, stage):
    make, cls = (_sft, SFTTrainer) if stage == "sft" else (_reward, RewardTrainer)
    data = SFT_ROWS if stage == "sft" else PAIRS
    whole = _first_gradient(cls(make(no_dropout_lm), data=data, run_dir=tmp_path / "k1"))
    # 8 rows in 3 micro-batches (2, 3, 3 rows; responses of different lengths): weighting each by 1/3
    # instead of its share of the tokens or pairs would give another gradient.
    split = _first_gradient(cls(make(no_dropout_lm, gradient_accumulation_steps=3), data=data, run_dir=tmp_path / "k3"))
    for name, grad in whole.items():
        assert torch.allclose(split[name], grad, rtol=1e-4, atol=1e-7), name
    assert max(float(g.abs().max()) for g in whole.values()) > 1e-3


@pytest.mark.parametrize("stage", ["sft", "reward"])
def test_gradient_accumulation_trains_the_same_weights(no_dropout_lm, tmp_path, stage):
    make = _sft if stage == "sft" else _reward
    _train(stage, make(no_dropout_lm, epochs=1), tmp_path / "k1")
    _train(stage, make(no_dropout_lm, epochs=1, gradient_accumulation_steps=4), tmp_path / "k4")
    a, b, start = _weights(tmp_path / "k1"), _weights(tmp_path / "k4"), _weights_of(no_dropout_lm)
    # Adam turns a gradient that is zero but for rounding (the reward model's final LayerNorm bias:
    # Bradley-Terry ignores a shift of every reward) into a step of ±lr, so the weights are compared by
    # how far they moved, over all of them (weighting micro-batches 1/k moves them ~20% differently).
    names = [k for k in start if k in a]
    moved_a = torch.cat([(a[k] - start[k]).flatten() for k in names])
    moved_b = torch.cat([(b[k] - start[k]).flatten() for k in names])
    assert float(moved_a.norm()) > 0.1
    assert float((moved_a - moved_b).norm() / moved_a.norm()) < 1e-2
    if stage == "sft":
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    losses = [(r["loss"], s["loss"]) for r, s in zip(_rows(tmp_path / "k1"), _rows(tmp_path / "k4")) if "loss" in r]
    assert all(x == pytest.approx(y, rel=1e-4) for x, y in losses)


def _weights_of(directory: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / "model.safetensors"))


def test_sft_with_lora_saves_the_merged_model_and_the_adapter(tiny_lm, tmp_path):
    from transformers import AutoModelForCausalLM

    trainer = SFTTrainer(_sft(tiny_lm, lora=True, lora_r=4), data=SFT_ROWS, run_dir=tmp_path / "run")
    assert trainer.trainable and all("lora_" in name for name in trainer.trainable)
    summary = trainer.learn()
    merged = AutoModelForCausalLM.from_pretrained(summary["model_dir"])  # a plain model, usable as ever
    assert (Path(summary["adapter_dir"]) / "adapter_config.json").is_file()
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(input_ids=ids).logits
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-5)
        base = AutoModelForCausalLM.from_pretrained(tiny_lm)(input_ids=ids).logits
    assert float((base - expected).abs().max()) > 1e-3  # the adapters trained


@pytest.mark.parametrize("head", ["classification", "value_head"])
def test_reward_lora_trains_the_head_whole_and_saves_a_usable_model(tiny_lm, tmp_path, head):
    from ppokit.rlhf.models.loading import load_reward_model
    from ppokit.rlhf.rewards.sources import encode_pairs

    trainer = RewardTrainer(_reward(tiny_lm, lora=True, lora_r=4, head=head), data=PAIRS, run_dir=tmp_path / "run")
    head_names = [n for n in trainer.trainable if "lora_" not in n]
    assert head_names and all("modules_to_save" in n for n in head_names)  # only the adapters and the head
    initial = {n: trainer.trainable[n].detach().clone() for n in head_names}
    summary = trainer.learn()
    assert any(not torch.equal(initial[n], trainer.trainable[n]) for n in head_names)
    saved = load_reward_model(summary["model_dir"], torch.float32, torch.device("cpu"))
    trainer.tokenizer.padding_side = "right"
    ids, mask = encode_pairs(trainer.tokenizer, ["describe the cat :"] * 2, ["the cat is kind .", "the cat is nasty ."],
                             torch.device("cpu"))
    trainer.reward_model.eval()
    with torch.no_grad():
        assert torch.allclose(saved(ids, mask), trainer.reward_model(ids, mask), atol=1e-5)
    assert (Path(summary["adapter_dir"]) / "adapter_config.json").is_file()


def test_evaluation_is_logged_during_training_and_summarised(tiny_lm, tmp_path):
    sft = train_sft(_sft(tiny_lm, eval_every=2), data=SFT_ROWS, eval_data=SFT_ROWS[:5], run_dir=tmp_path / "sft")
    evals = [r for r in _rows(tmp_path / "sft") if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 3, 4, 6]  # every 2 steps and at each epoch's end (3, 6)
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert sft["eval_loss"] == evals[-1]["eval_loss"] and sft["eval_rows"] == 5
    assert json.loads((tmp_path / "sft" / "summary.json").read_text())["eval_loss"] == sft["eval_loss"]

    reward = train_reward_model(_reward(tiny_lm, eval_every=3), data=PAIRS, run_dir=tmp_path / "rm")
    evals = [r for r in _rows(tmp_path / "rm") if "eval_loss" in r]
    assert [r["step"] for r in evals] == [3, 4, 6, 8]  # 4 steps an epoch
    assert all(0 <= r["eval_accuracy"] <= 1 for r in evals)
    assert reward["eval_accuracy"] == evals[-1]["eval_accuracy"] and reward["eval_loss"] == evals[-1]["eval_loss"]
    assert reward["eval_accuracy_per_epoch"] == [evals[1]["eval_accuracy"], evals[-1]["eval_accuracy"]]
    # The held-out loss is the Bradley-Terry loss: log 2 for a model that cannot tell the two apart.
    assert 0.0 < reward["eval_loss"] < 5.0


def test_ctrl_c_checkpoints_and_ppokit_resume_finishes_the_run(tiny_lm, tmp_path, monkeypatch, capsys):
    from ppokit.rlhf.supervised.loop import SupervisedTrainer

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in SFT_ROWS))
    run = tmp_path / "run"
    args = ["rlhf", "sft", "--model", tiny_lm, "--data", str(data), "--run-dir", str(run), "--no-progress",
            "--set", "batch_size=8", "--set", "epochs=2", "--set", "max_length=32", "--set", "tensorboard=false"]
    real = SupervisedTrainer.after_update

    def interrupt_at_step_2(self, record):
        if record["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the step finishes, a checkpoint is written
        return real(self, record)

    monkeypatch.setattr(SupervisedTrainer, "after_update", interrupt_at_step_2)
    assert main(args) == 130
    err = capsys.readouterr().err
    assert f"ppokit resume {run} --data {data}" in err  # the data file named again: the printed command works
    printed = shlex.split(err.split("resume with: ")[1].splitlines()[0])
    assert latest_checkpoint(run).name == "update_000000000002"
    monkeypatch.setattr(SupervisedTrainer, "after_update", real)
    assert main(["resume", str(run), "--total-updates", "9"]) == 2
    assert "takes no --total-steps or --total-updates" in capsys.readouterr().err
    assert main([*printed[1:], "--no-progress"]) == 0
    assert "resuming SFT at step 2 of 6" in capsys.readouterr().err
    assert [r["step"] for r in _rows(run)] == [1, 2, 3, 4, 5, 6]
    assert (run / "model" / "model.safetensors").is_file()
    # --resume on the finished run has nothing left to do; with --overwrite it is refused.
    assert main([*args, "--resume"]) == 0
    assert main([*args, "--resume", "--overwrite"]) == 2


def test_ppokit_resume_runs_no_remote_code_and_needs_the_data_file(tiny_lm, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    config = _reward(tiny_lm, data=str(data), trust_remote_code=True, epochs=1, run_dir=str(tmp_path / "rm"))
    train_reward_model(config, callback=lambda r: r["step"] < 1)
    assert main(["resume", str(tmp_path / "rm"), "--no-progress"]) == 2
    assert "trust_remote_code: true" in capsys.readouterr().err
    assert main(["resume", str(tmp_path / "rm"), "--no-progress", "--trust"]) == 0
    assert "resuming reward-model training at step 1" in capsys.readouterr().err

    train_sft(_sft(tiny_lm, epochs=1), data=SFT_ROWS, run_dir=tmp_path / "sft", callback=lambda r: r["step"] < 1)
    assert main(["resume", str(tmp_path / "sft"), "--no-progress"]) == 2
    assert "train_sft(config, data=..., resume=True)" in capsys.readouterr().err


@pytest.mark.parametrize(("changes", "field"), [
    ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
    ({"gradient_accumulation_steps": 9}, "gradient_accumulation_steps"),
    ({"eval_every": -1}, "eval_every"),
    ({"eval_fraction": 1.0}, "eval_fraction"),
    ({"keep_checkpoints": 0}, "keep_checkpoints"),
    ({"checkpoint_minutes": -1.0}, "checkpoint_minutes"),
    ({"lora_r": 0}, "lora_r"),
    ({"lora_dropout": 1.0}, "lora_dropout"),
])
@pytest.mark.parametrize("make", [_sft, _reward])
def test_new_fields_are_checked(make, changes, field):
    with pytest.raises(ConfigError, match=field):
        make("some/model", **changes)


def test_two_processes_accumulating_take_the_one_process_step(no_dropout_lm, tmp_path):
    """2 processes × 3 micro-batches each against one process's whole batch: every micro-batch is
    weighted by its share of all the processes' response tokens."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in SFT_ROWS))
    train_sft(_sft(no_dropout_lm, epochs=1, data=str(data)), run_dir=tmp_path / "one")
    command = [sys.executable, "-m", "ppokit", "rlhf", "sft", "--model", no_dropout_lm, "--data", str(data),
               "--run-dir", str(tmp_path / "two"), "--no-progress", "--nproc", "2", "--set", "batch_size=8",
               "--set", "epochs=1", "--set", "learning_rate=3e-3", "--set", "max_length=32", "--set", "device=cpu",
               "--set", "tensorboard=false", "--set", "torch_threads=1", "--set", "gradient_accumulation_steps=3"]
    proc = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    losses = [(r["loss"], s["loss"]) for r, s in zip(_rows(tmp_path / "one"), _rows(tmp_path / "two"))]
    assert len(losses) == 3 and all(x == pytest.approx(y, rel=1e-5) for x, y in losses)
