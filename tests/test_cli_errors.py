"""The CLI's error table (issue 13, section 4): each bad input is one line naming the problem, exit
code 2, and never a Python traceback. Every case runs in a fresh process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ppokit import PPO, ControlConfig
from ppokit.io.checkpoints import RESUME_FILE, latest_checkpoint
from tests.rlhf.helpers import PROMPTS

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--no-progress", "--set", "num_envs=2", "--set", "num_steps=16", "--set", "num_minibatches=1",
        "--set", "tensorboard=false", "--set", "eval_episodes=1"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ppokit", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_lm) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("errors")
    run = root / "run"
    PPO(ControlConfig(env_id="CartPole-v1", num_envs=2, num_steps=16, num_minibatches=1, total_steps=64,
                      progress=False, tensorboard=False, eval_episodes=0, run_dir=str(run))).learn()
    a_file = root / "a_file"
    a_file.write_text("not a directory")
    no_tokenizer = root / "no_tokenizer"
    shutil.copytree(tiny_lm, no_tokenizer)
    for f in no_tokenizer.iterdir():
        if "token" in f.name or f.name in ("vocab.json", "merges.txt"):
            f.unlink()
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    sft = root / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": p["prompt"], "response": " the cat is happy ."}) + "\n"
                           for p in PROMPTS) + json.dumps({"prompt": "the " * 200, "response": "."}) + "\n")
    return {"root": root, "run": run, "file": a_file, "lm": Path(tiny_lm), "no_tokenizer": no_tokenizer,
            "prompts": prompts, "sft": sft}


def _copy_run(work: dict[str, Path], name: str) -> Path:
    copy = work["root"] / name
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(work["run"], copy)
    return copy


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


CASES = {
    "env id ':'": (lambda w: ["train", ":", *TINY], "expected a registered id"),
    "env id '.foo:Bar'": (lambda w: ["train", ".foo:Bar", *TINY], "expected a registered id"),
    "negative seed": (lambda w: ["train", "CartPole-v1", "--seed", "-1", *TINY], "'seed' = -1"),
    "too many threads": (lambda w: ["train", "CartPole-v1", "--set", "torch_threads=100000", *TINY],
                         "'torch_threads' = 100000"),
    "run dir under a file": (lambda w: ["train", "CartPole-v1", "--run-dir", str(w["file"] / "run"), *TINY],
                             "a_file"),
    "run dir is a file": (lambda w: ["train", "CartPole-v1", "--run-dir", str(w["file"]), *TINY],
                          "not a directory"),
    "eval on an env with other spaces": (lambda w: ["eval", str(w["run"]), "--env", "Acrobot-v1"],
                                         "observation space"),
    "video into a file": (lambda w: ["eval", str(w["run"]), "--video", str(w["file"])], "not a directory"),
    "eval --out a directory": (lambda w: ["eval", str(w["run"]), "--episodes", "1", "--out", str(w["root"])],
                               "is a directory"),
    "demo into a file": (lambda w: ["rlhf", "demo", "--run-dir", str(w["file"]), "--no-progress"],
                         "not a directory"),
    "sft on a model without tokenizer": (lambda w: ["rlhf", "sft", "--model", str(w["no_tokenizer"]), "--data",
                                                    str(w["sft"]), "--run-dir", str(w["root"] / "s1")],
                                         "missing its tokenizer files"),
    "ppo on a policy without tokenizer": (lambda w: ["rlhf", "ppo", "--policy", str(w["no_tokenizer"]), "--data",
                                                     str(w["prompts"]), "--reward",
                                                     "tests.rlhf.helpers:pleasant_minus_unpleasant",
                                                     "--run-dir", str(w["root"] / "p1")],
                                          "missing its tokenizer files"),
    "sft row beyond the model's positions": (lambda w: ["rlhf", "sft", "--model", str(w["lm"]), "--data",
                                                        str(w["sft"]), "--set", "max_length=100000",
                                                        "--run-dir", str(w["root"] / "s2")],
                                             "over the limit of"),
    "ppo generation beyond the model's positions": (
        lambda w: ["rlhf", "ppo", "--policy", str(w["lm"]), "--data", str(w["prompts"]), "--reward",
                   "tests.rlhf.helpers:pleasant_minus_unpleasant", "--set", "max_new_tokens=100000",
                   "--run-dir", str(w["root"] / "p2")],
        "leaves no room for a prompt"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_cli_error_table(work, name):
    args, expected = CASES[name]
    proc = _cli(*args(work))
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ppokit: error:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr[-2000:]


def test_damaged_saved_files_are_one_line_errors(work):
    bad_counters = _copy_run(work, "bad_counters")
    _edit_json(bad_counters / "model" / "state.json", global_step="many")
    bad_spaces = _copy_run(work, "bad_spaces")
    _edit_json(bad_spaces / "model" / "state.json", observation_space=5)
    bad_resume = _copy_run(work, "bad_resume")
    _edit_json(latest_checkpoint(bad_resume) / RESUME_FILE, best_eval_return={"x": 1}, health=[1, 2])
    for args, expected in ((["eval", str(bad_counters)], "bad counters"),
                           (["eval", str(bad_spaces)], "bad saved spaces"),
                           (["resume", str(bad_resume), "--no-progress"], "resume state")):
        proc = _cli(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert expected in proc.stderr


def test_a_checkpoint_that_cannot_be_written_is_named_and_nothing_is_lost(work):
    run = work["root"] / "blocked"
    run.mkdir()
    (run / "checkpoints").write_text("a file where the checkpoints should go")
    proc = _cli("train", "CartPole-v1", "--run-dir", str(run), *TINY, "--total-steps", "64")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "cannot write" in proc.stderr and "nothing already saved was lost" in proc.stderr


def test_a_second_process_on_the_same_run_gets_a_clear_error(work):
    from ppokit.io.lock import RunLock

    run = _copy_run(work, "busy")
    holder = RunLock(run)
    try:
        proc = _cli("resume", str(run), "--no-progress", "--total-steps", "128")
    finally:
        holder.release()
    assert proc.returncode == 2 and "in use by another ppokit process" in proc.stderr, proc.stderr[-2000:]


def test_data_files_with_a_byte_order_mark_are_read(work):
    bom = work["root"] / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + work["prompts"].read_bytes())
    from ppokit.rlhf import data as rdata

    loaded = rdata.load(str(bom), {"prompt": ("prompt", "text")})
    assert [r["prompt"] for r in loaded.rows] == [p["prompt"] for p in PROMPTS]
