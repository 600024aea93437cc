"""Every JSON ppokit prints or writes for users is standard JSON: no NaN or Infinity tokens, which
strict parsers (``jq``, JavaScript, Go, ``json.loads(..., parse_constant=...)``) reject."""

import json
import math
from pathlib import Path

import pytest

from ppokit.cli.main import main
from ppokit.io.atomic import strict_json

TINY = ["--total-steps", "256", "--set", "num_envs=2", "--set", "num_steps=64", "--set", "num_minibatches=2",
        "--set", "num_epochs=1", "--set", "eval_episodes=2", "--no-progress"]


def _no_constants(token):
    raise ValueError(f"non-standard JSON constant {token}")


def strict_loads(text: str):
    return json.loads(text, parse_constant=_no_constants)


def _check_json_files(run_dir: Path) -> list[str]:
    """Parse every .json and .jsonl file under ``run_dir`` strictly; returns their names."""
    seen = []
    for path in sorted(run_dir.rglob("*.json*")):
        if path.suffix == ".jsonl":
            for line in path.read_text(encoding="utf-8").splitlines():
                strict_loads(line)
        elif path.suffix == ".json":
            strict_loads(path.read_text(encoding="utf-8"))
        seen.append(path.name)
    return seen


def test_strict_json_writes_nan_and_infinities_as_null_at_any_depth():
    data = {"a": math.nan, "b": [math.inf, 1.5, (-math.inf,)], "c": {"d": math.nan, "e": "NaN"}}
    text = strict_json(data)
    assert strict_loads(text) == {"a": None, "b": [None, 1.5, [None]], "c": {"d": None, "e": "NaN"}}
    assert strict_json({"x": 1}, indent=2) == '{\n  "x": 1\n}'


def test_train_and_eval_write_standard_json(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "CartPole-v1", "--run-dir", str(run), *TINY]) == 0
    assert main(["eval", str(run), "--episodes", "1", "--out", str(tmp_path / "e.json")]) == 0
    capsys.readouterr()
    assert {"eval.json", "metrics.jsonl", "state.json"} <= set(_check_json_files(run))
    strict_loads((tmp_path / "e.json").read_text())


def test_rlhf_commands_print_and_write_standard_json(tiny_lm, tmp_path, capsys):
    pytest.importorskip("transformers")
    from tests.distributed.rlhf_scenarios import supervised_data, write_prompts

    sft, pairs = supervised_data(tmp_path)
    common = ["--no-progress", "--set", "device=cpu", "--set", "torch_threads=1"]
    commands = {
        # No held-out rows (eval_fraction 0): the held-out loss is NaN, and the final line printed NaN.
        "sft": ["rlhf", "sft", "--model", tiny_lm, "--data", str(sft), "--run-dir", str(tmp_path / "sft"), *common],
        "reward": ["rlhf", "reward", "--model", tiny_lm, "--data", str(pairs), "--run-dir", str(tmp_path / "reward"),
                   *common],
        "ppo": ["rlhf", "ppo", "--policy", tiny_lm, "--reward", "tests.rlhf.helpers:pleasant_minus_unpleasant",
                "--data", str(write_prompts(tmp_path / "prompts.jsonl")), "--total-updates", "1",
                "--set", "batch_size=4", "--set", "max_new_tokens=3", "--run-dir", str(tmp_path / "ppo"), *common],
    }
    for stage, args in commands.items():
        assert main(args) == 0, stage
        last = capsys.readouterr().err.strip().splitlines()[-1]
        summary = strict_loads(last)  # the final machine-readable line
        assert isinstance(summary, dict), stage
        if stage == "sft":
            assert summary["eval_loss"] is None and summary["eval_rows"] == 0
        assert _check_json_files(tmp_path / stage), stage


def test_a_sweep_writes_standard_json(tmp_path, capsys):
    pytest.importorskip("optuna")
    out = tmp_path / "sweep"
    assert main(["tune", "CartPole-v1", "--total-steps", "512", "--set", "num_envs=2", "--set", "num_steps=64",
                 "--set", "num_minibatches=2", "--eval-every", "256", "--eval-episodes", "2", "--pruner", "none",
                 "--trials", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert {"trials.jsonl", "eval.json", "metrics.jsonl"} <= set(_check_json_files(out))
