"""``ppokit package RUN_DIR OUT_DIR``: a run as a directory for a model hub (weights, config, card).

Tiny runs (a few CartPole updates, two RLHF updates of a 2-layer GPT-2) stand in for real ones: what
is checked is the layout, that the packaged model is the run's own, what the card says, and that a
failure names the path and leaves nothing half-written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ppokit import PPO, ControlConfig, __version__
from ppokit.cli.main import main
from ppokit.hub.model_card import hub_id
from ppokit.hub.package import _base_model
from ppokit.io.checkpoints import latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONTROL_FILES = {"README.md", "config.yaml", "eval.json", "curves.png", "model.safetensors", "state.json"}
PNG = b"\x89PNG\r\n\x1a\n"


def front_matter(card: str) -> dict:
    assert card.startswith("---\n"), card[:80]
    head, _, _ = card[4:].partition("\n---\n")
    return yaml.safe_load(head)


def as_yaml(value: object) -> str:
    """A scalar as YAML writes it; lists and mappings in JSON's flow style."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def package(capsys, *argv: str) -> tuple[int, str, str]:
    """``ppokit package ...`` as the command line runs it: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(["package", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def control_run(tmp_path_factory) -> Path:
    """A finished CartPole run with a final evaluation, a best policy and checkpoints."""
    run = tmp_path_factory.mktemp("control") / "run"
    agent = PPO(ControlConfig(env_id="CartPole-v1", total_steps=512, num_envs=2, num_steps=64, num_minibatches=2,
                              num_epochs=2, eval_every=2, eval_episodes=5, checkpoint_every=2, tensorboard=False,
                              progress=False, run_dir=str(run)))
    agent.learn()
    agent.close()
    return run


@pytest.fixture(scope="module")
def rlhf_run(tmp_path_factory, tiny_lm) -> Path:
    from ppokit.rlhf.config import RLHFConfig
    from ppokit.rlhf.ppo.trainer import RLHFTrainer
    from tests.rlhf.helpers import PROMPTS

    run = tmp_path_factory.mktemp("rlhf") / "run"
    config = RLHFConfig(policy=tiny_lm, rewards=["tests.rlhf.helpers:pleasant_minus_unpleasant"], total_updates=2,
                        batch_size=8, num_minibatches=2, max_new_tokens=6, progress=False, tensorboard=False,
                        torch_threads=1, device="cpu", seed=0, sample_every=0, checkpoint_every=1)
    RLHFTrainer(config, prompts=PROMPTS, run_dir=run).learn()
    return run


# ------------------------------------------------------------------------------------------ control

def test_a_control_run_packages_to_a_directory_ppo_load_reads_as_the_run(control_run, tmp_path, capsys):
    out = tmp_path / "ppo-CartPole-v1"
    code, stdout, _ = package(capsys, control_run, out)
    assert code == 0 and f"hf upload <user>/<repo> {out}" in stdout
    assert {p.name for p in out.iterdir()} == CONTROL_FILES
    assert (out / "curves.png").read_bytes().startswith(PNG)
    assert (out / "model.safetensors").read_bytes() == (control_run / "model" / "model.safetensors").read_bytes()
    assert json.loads((out / "eval.json").read_text()) == json.loads((control_run / "eval.json").read_text())
    obs = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    packaged, original = PPO.load(out), PPO.load(control_run)
    assert np.array_equal(packaged.predict(obs), original.predict(obs))
    rng = np.random.default_rng
    assert np.array_equal(packaged.predict(obs, deterministic=False, rng=rng(1)),
                          original.predict(obs, deterministic=False, rng=rng(1)))
    assert not list(tmp_path.glob(".*")), "the temporary build directory was left behind"


def test_the_card_tells_the_hub_and_the_reader_what_the_model_is(control_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert package(capsys, control_run, out, "--license", "apache-2.0")[0] == 0
    card = (out / "README.md").read_text()
    meta = front_matter(card)
    result = json.loads((control_run / "eval.json").read_text())
    config = yaml.safe_load((control_run / "config.yaml").read_text())
    assert meta["library_name"] == "ppokit" and meta["license"] == "apache-2.0"
    assert {"reinforcement-learning", "ppo", "CartPole-v1"} <= set(meta["tags"])
    (metric,) = meta["model-index"][0]["results"][0]["metrics"]
    assert metric["type"] == "mean_reward"
    assert metric["value"] == f"{result['mean_return']:.2f} +/- {result['std_return']:.2f}"
    assert meta["model-index"][0]["results"][0]["dataset"]["name"] == "CartPole-v1"
    for name, value in config.items():  # every hyperparameter
        assert f"| {name} | {as_yaml(value)} |" in card, name
    assert f"| episodes | {result['episodes']} |" in card and "deterministic (the policy's mode)" in card
    assert f"| training seed | {config['seed']} |" in card and "| evaluation seed | 10001 " in card
    assert f"ppokit {__version__}" in card and "![learning curves](curves.png)" in card
    assert "PPO.load(" in card and "ppokit eval out --episodes 5 --seed 10001" in card
    assert "hf upload <user>/out out" in card


def test_the_card_parses_as_a_hub_model_card(control_run, tmp_path, capsys):
    hub = pytest.importorskip("huggingface_hub")
    assert package(capsys, control_run, tmp_path / "out")[0] == 0
    card = hub.ModelCard((tmp_path / "out" / "README.md").read_text())
    result = json.loads((control_run / "eval.json").read_text())
    assert card.data.library_name == "ppokit" and card.data.license == "mit"
    (evaluation,) = card.data.eval_results
    assert evaluation.metric_type == "mean_reward" and evaluation.dataset_type == "CartPole-v1"
    assert evaluation.metric_value == f"{result['mean_return']:.2f} +/- {result['std_return']:.2f}"


@pytest.mark.parametrize("best", [False, True])
def test_the_seed_on_the_card_plays_the_evaluation_again(control_run, tmp_path, capsys, best):
    out = tmp_path / "out"
    assert package(capsys, control_run, out, *(["--best"] if best else []))[0] == 0
    source = control_run / "best" if best else control_run / "model"
    assert (out / "state.json").read_bytes() == (source / "state.json").read_bytes()
    saved = json.loads((out / "eval.json").read_text())
    assert saved == json.loads(((source if best else control_run) / "eval.json").read_text())
    card = (out / "README.md").read_text()
    (command,) = [line for line in card.splitlines() if line.startswith("ppokit eval")]
    again = tmp_path / "again.json"
    args = command.split("#")[0].split()[1:]  # eval out --episodes N --seed S
    args[1] = str(out)
    assert main([*args, "--out", str(again)]) == 0
    assert json.loads(again.read_text())["returns"] == saved["returns"]


def test_without_matplotlib_there_is_no_picture_and_one_warning(control_run, tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    caplog.set_level(logging.WARNING, logger="ppokit")
    assert package(capsys, control_run, tmp_path / "out")[0] == 0
    assert {p.name for p in (tmp_path / "out").iterdir()} == CONTROL_FILES - {"curves.png"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "matplotlib" in warnings[0] and "\n" not in warnings[0]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "No picture: matplotlib" in card and "curves.png" not in card


def test_a_run_without_an_evaluation_says_so_and_has_no_model_index(control_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(control_run, run)
    (run / "eval.json").unlink()
    assert package(capsys, run, tmp_path / "out")[0] == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert "model-index" not in front_matter(card) and "The run has no evaluation" in card
    assert not (tmp_path / "out" / "eval.json").exists()


def test_a_run_stopped_before_its_end_is_refused_with_the_checkpoint_to_package(control_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(control_run, run)
    shutil.rmtree(run / "model")
    (run / "eval.json").unlink()
    code, _, err = package(capsys, run, tmp_path / "out")
    assert code == 2 and err.count("\n") == 1 and err.startswith("ppokit: error: ")
    assert "no final model" in err and f"ppokit resume {run}" in err and "--checkpoint" in err
    assert not (tmp_path / "out").exists()
    assert package(capsys, run, tmp_path / "out", "--checkpoint")[0] == 0
    latest = latest_checkpoint(run)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (latest / "model.safetensors").read_bytes()
    assert {p.name for p in (tmp_path / "out").iterdir()} == CONTROL_FILES - {"eval.json"}  # no optimizer, no resume
    assert "latest checkpoint" in (tmp_path / "out" / "README.md").read_text()


# ---------------------------------------------------------------------------------------- errors

def _errors(control_run: Path, tmp_path: Path) -> dict[str, tuple[list, str]]:
    not_a_dir = tmp_path / "a_file"
    not_a_dir.write_text("x")
    (tmp_path / "empty").mkdir()
    return {
        "not a run": ([tmp_path / "empty", tmp_path / "out"], "no config.yaml"),
        "missing run": ([tmp_path / "nowhere", tmp_path / "out"], "no such run directory"),
        "inside the model dir": ([control_run, control_run / "model" / "hub"], "which ppokit reads back"),
        "the run itself": ([control_run, control_run, "--overwrite"], "would replace the run"),
        "a parent of the run": ([control_run, control_run.parent, "--overwrite"], "would replace the run"),
        "unwritable": ([control_run, not_a_dir / "out"], f"{not_a_dir} is a file, not a directory"),
        "bad license": ([control_run, tmp_path / "out", "--license", "MIT License"], "not a hub license id"),
    }


@pytest.mark.parametrize("case", ["not a run", "missing run", "inside the model dir", "the run itself",
                                  "a parent of the run", "unwritable", "bad license"])
def test_errors_are_one_line_name_the_path_and_write_nothing(control_run, tmp_path, capsys, case):
    before = sorted(p.relative_to(control_run.parent) for p in control_run.parent.rglob("*"))
    argv, message = _errors(control_run, tmp_path)[case]
    code, _, err = package(capsys, *argv)
    assert code == 2, err
    assert err.startswith("ppokit: error: ") and err.count("\n") == 1 and message in err, err
    assert case == "bad license" or str(argv[1]) in err or str(argv[0]) in err
    assert sorted(p.relative_to(control_run.parent) for p in control_run.parent.rglob("*")) == before
    assert not (tmp_path / "out").exists()


def test_an_existing_out_dir_is_kept_without_overwrite_and_replaced_only_when_complete(control_run, tmp_path,
                                                                                       capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    code, _, err = package(capsys, control_run, out)
    assert code == 2 and f"{out}: exists and is not empty" in err and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]

    import ppokit.hub.package

    def broken(*_args):
        from ppokit.errors import CheckpointError

        raise CheckpointError("disk full, say")

    monkeypatch.setattr(ppokit.hub.package, "control_card", broken)  # fails after the weights were copied
    code, _, err = package(capsys, control_run, out, "--overwrite")
    assert code == 2 and "disk full" in err
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "a half-written directory was left behind"

    monkeypatch.undo()
    assert package(capsys, control_run, out, "--overwrite")[0] == 0
    assert {p.name for p in out.iterdir()} == CONTROL_FILES


def test_best_and_checkpoint_say_when_there_is_none(control_run, rlhf_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(control_run, run)
    shutil.rmtree(run / "best")
    code, _, err = package(capsys, run, tmp_path / "out", "--best")
    assert code == 2 and f"{run / 'best'}: no best policy saved" in err
    code, _, err = package(capsys, rlhf_run, tmp_path / "out", "--best")
    assert code == 2 and "only control runs keep a best policy" in err
    shutil.rmtree(run / "checkpoints")
    code, _, err = package(capsys, run, tmp_path / "out", "--checkpoint")
    assert code == 2 and "no complete checkpoint" in err


def test_packaging_imports_nothing_the_run_names(control_run, rlhf_run, tmp_path):
    """A 'module:Env' env id (config.yaml, state.json) and a 'module:function' reward are shown, never run."""
    control, rlhf = tmp_path / "control", tmp_path / "rlhf"
    shutil.copytree(control_run, control)
    shutil.copytree(rlhf_run, rlhf)
    for file in (control / "config.yaml", control / "model" / "state.json"):
        file.write_text(file.read_text().replace("CartPole-v1", "tests.trace_code:make_env"))
    config = yaml.safe_load((rlhf / "config.yaml").read_text())
    config["rewards"] = ["tests.trace_code:reward"]
    (rlhf / "config.yaml").write_text(yaml.safe_dump(config))
    trace = tmp_path / "trace"
    code = ("import sys\nfrom ppokit.cli.main import main\n"
            f"assert main(['package', {str(control)!r}, {str(tmp_path / 'c')!r}]) == 0\n"
            f"assert main(['package', {str(rlhf)!r}, {str(tmp_path / 'r')!r}]) == 0\n"
            "assert 'tests.trace_code' not in sys.modules\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PPOKIT_TRACE": str(trace)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not trace.exists()
    card = (tmp_path / "c" / "README.md").read_text()
    assert "tests.trace_code:make_env" in card and "--env tests.trace_code:make_env" in card
    assert "`tests.trace_code:reward`" in (tmp_path / "r" / "README.md").read_text()


# ----------------------------------------------------------------------------------- language models

def test_an_rlhf_run_packages_to_a_save_pretrained_directory(rlhf_run, tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "out"
    assert package(capsys, rlhf_run, out)[0] == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "README.md", "curves.png",
            "ppokit_config.yaml"} <= names and any(n.startswith("tokenizer") for n in names)
    assert (out / "curves.png").read_bytes().startswith(PNG)
    ids = AutoTokenizer.from_pretrained(out)("describe the cat :", return_tensors="pt").input_ids
    with torch.no_grad():
        packaged = AutoModelForCausalLM.from_pretrained(out)(ids).logits
        original = AutoModelForCausalLM.from_pretrained(rlhf_run / "policy")(ids).logits
    assert torch.equal(packaged, original)
    card = (out / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "transformers" and meta["license"] == "mit"
    assert meta["tags"] == ["ppo", "rlhf", "ppokit"] and "base_model" not in meta  # started from a local directory
    summary = json.loads((rlhf_run / "summary.json").read_text())
    assert f"| KL to the reference, last 10% of updates | {summary['kl_last']:.4g} |" in card
    assert "AutoModelForCausalLM.from_pretrained(" in card and "| total_updates | 2 |" in card
    assert "Tuned with PPO for 2 updates" in card


def test_an_rlhf_checkpoint_packages_its_own_policy(rlhf_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(rlhf_run, run)
    shutil.rmtree(run / "policy")
    (run / "summary.json").unlink()
    code, _, err = package(capsys, run, tmp_path / "out")
    assert code == 2 and "--checkpoint" in err and "policy" in err
    assert package(capsys, run, tmp_path / "out", "--checkpoint")[0] == 0
    latest = latest_checkpoint(run)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (latest / "policy" / "model.safetensors").read_bytes()
    assert "latest checkpoint" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize("stage", ["sft", "reward"])
def test_sft_and_reward_runs_package_their_model(tiny_lm, tmp_path, capsys, stage):
    from ppokit.rlhf.config import RewardConfig, SFTConfig

    run = tmp_path / "run"
    common = {"model": tiny_lm, "batch_size": 4, "max_length": 32, "progress": False, "tensorboard": False,
              "torch_threads": 1, "device": "cpu"}
    if stage == "sft":
        from ppokit.rlhf.supervised.sft import train_sft

        train_sft(SFTConfig(**common), data=[{"prompt": "describe the cat :", "response": "soft warm"}] * 4, run_dir=run)
    else:
        from ppokit.rlhf.supervised.reward_model import train_reward_model

        rows = [{"prompt": f"describe the {n} :", "chosen": "soft warm", "rejected": "cold wet"}
                for n in ("cat", "dog", "sun", "tree")]
        train_reward_model(RewardConfig(**common), data=rows, eval_data=rows, run_dir=run)
    out = tmp_path / "out"
    assert package(capsys, run, out)[0] == 0
    assert (out / "config.json").is_file() and any(out.glob("*.safetensors"))
    meta = front_matter((out / "README.md").read_text())
    assert meta["library_name"] == "transformers" and ("sft" if stage == "sft" else "reward-model") in meta["tags"]
    if stage == "sft":
        from transformers import AutoModelForCausalLM

        assert AutoModelForCausalLM.from_pretrained(out) is not None
    else:
        assert (out / "ppokit_reward.json").is_file()
        assert "--reward out" in (out / "README.md").read_text()


def test_the_base_model_is_a_hub_id_never_a_local_path(tmp_path):
    assert hub_id("gpt2") == "gpt2" and hub_id("org/model-1.5") == "org/model-1.5"
    assert hub_id("/home/me/model") is None and hub_id("../model") is None and hub_id("tests.x:f") is None
    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / "config.yaml").write_text(yaml.safe_dump({"model": "org/base", "response_column": "response"}))
    assert _base_model(str(sft / "model"))[0] == "org/base"  # an SFT run's model names its own start
    assert _base_model(str(tmp_path / "elsewhere"))[0] is None


# ------------------------------------------------- what a run can hide from the package (issue 30)

SAVED = ROOT / "tests" / "fixtures" / "saved_runs"


def _linked_model(run: Path, elsewhere: Path) -> None:
    """The run's model folder a link to a directory outside it (holding a secret beside the weights)."""
    model = run / ("model" if (run / "model").is_dir() else "policy")
    shutil.copytree(model, elsewhere)
    (elsewhere / "credentials").write_text("secret")
    shutil.rmtree(model)
    model.symlink_to(elsewhere, target_is_directory=True)


def _linked_checkpoint(run: Path, elsewhere: Path) -> None:
    checkpoint = next((run / "checkpoints").iterdir())
    shutil.move(checkpoint, elsewhere)
    (elsewhere / "credentials").write_text("secret")
    checkpoint.symlink_to(elsewhere, target_is_directory=True)


def _linked_file(run: Path, elsewhere: Path) -> None:
    weights = run / ("model" if (run / "model").is_dir() else "policy") / "model.safetensors"
    elsewhere.mkdir()
    shutil.move(weights, elsewhere / "model.safetensors")
    weights.symlink_to(elsewhere / "model.safetensors")


def _damaged_weights(run: Path, elsewhere: Path) -> None:
    weights = run / ("model" if (run / "model").is_dir() else "policy") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _garbage_config(run: Path, elsewhere: Path) -> None:
    (run / "config.yaml").write_text("env_id: [CartPole\nseed: {\n")


HIDDEN = {  # how a run hides something, what --checkpoint it needs, and what the one line must say
    "a linked model folder": (_linked_model, [], "is a symbolic link"),
    "a linked checkpoint": (_linked_checkpoint, ["--checkpoint"], "is a symbolic link"),
    "a linked file": (_linked_file, [], "is a symbolic link"),
    "damaged weights": (_damaged_weights, [], "model.safetensors"),
    "a garbage config.yaml": (_garbage_config, [], "config.yaml, line"),
}


@pytest.mark.parametrize("saved", ["control", "rlhf_lora"])
@pytest.mark.parametrize("case", list(HIDDEN))
def test_package_takes_only_what_is_really_in_the_run_and_checks_it(saved, case, tmp_path, capsys):
    """Every kind of run × every way of handing over something else: a link out of the run (the
    issue's ``RUN/policy -> dir/`` holding ``credentials``), damaged weights, a garbage config.yaml.
    Each is one line naming the file, and nothing is written. Before the fix 8 of these 10 failed
    (the linked folders packaged with their credentials, damaged weights shipped, the YAML error on
    several lines); the linked file was already refused."""
    run = Path(shutil.copytree(SAVED / saved, tmp_path / "run"))
    hide, extra, message = HIDDEN[case]
    hide(run, tmp_path / "elsewhere")
    code, _, err = package(capsys, run, tmp_path / "out", *extra)
    assert code == 2, err
    assert err.startswith("ppokit: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()
    assert {p.name for p in tmp_path.iterdir()} <= {"run", "elsewhere"}  # no scratch directory left either


def test_package_leaves_out_what_a_model_does_not_need(tmp_path, capsys, caplog):
    """A save_pretrained folder gives only weights, configs and tokenizer files (failed before the fix:
    everything in the folder was packaged)."""
    run = Path(shutil.copytree(SAVED / "sft", tmp_path / "run"))
    (run / "model" / "credentials").write_text("secret")
    (run / "model" / "modeling_evil.py").write_text("import os")
    with caplog.at_level(logging.WARNING, logger="ppokit"):
        code, _, err = package(capsys, run, tmp_path / "out")
    assert code == 0, err
    assert {"credentials", "modeling_evil.py"}.isdisjoint(p.name for p in (tmp_path / "out").iterdir())
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in (tmp_path / "out").iterdir()}
    assert "credentials, modeling_evil.py" in caplog.text
