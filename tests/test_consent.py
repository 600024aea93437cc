"""Resuming a run from its directory alone uses nothing its config.yaml names until the user allows it
(issue 30, class 2): not code (a ``module:function`` reward, ``trust_remote_code``), not a data file
(``data``, ``eval_data``: any path on the disk), not a reward server (which would be sent every prompt
and completion). The members are generated: every stage that resumes from its directory × every
such thing its config can name × {nothing given, named again, --trust}.

A refused resume must say what it would have used, in one line, and must not have used it: the data
file is moved away first (a resume that read it would fail on the missing file instead), the reward
server counts requests, and the module reward leaves a trace when it is imported or called."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from ppokit.cli.main import main
from tests.fixtures.make_saved_runs import ROOT

pytest.importorskip("transformers")
pytest.importorskip("peft")

SAVED = Path(__file__).resolve().parent / "fixtures" / "saved_runs"
SECRET = "s3cret-token"


class RewardServer:
    """A reward server on loopback that answers 0 for every completion and counts the requests."""

    def __init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests += 1
                answer = json.dumps({"scores": [0.0] * len(body["completions"])}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.requests = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/score?token={SECRET}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def server() -> Iterator[RewardServer]:
    s = RewardServer()
    yield s
    s.httpd.shutdown()


@pytest.fixture(scope="module")
def reward_run(tiny_lm, tmp_path_factory) -> Path:
    """A reward-model run stopped after its first step, with a checkpoint to resume from."""
    from ppokit.rlhf.config import RewardConfig
    from ppokit.rlhf.supervised.reward_model import train_reward_model
    from tests.rlhf.test_supervised import PAIRS

    root = tmp_path_factory.mktemp("reward")
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    config = RewardConfig(model=tiny_lm, data=str(data), epochs=1, batch_size=4, max_length=32, checkpoint_every=1,
                          progress=False, tensorboard=False, device="cpu", run_dir=str(root / "run"))
    train_reward_model(config, callback=lambda r: r["step"] < 1)
    return root / "run"


def _copy(stage: str, tmp_path: Path, reward_run: Path) -> Path:
    """A copy of a resumable run of ``stage``, the paths in its files pointing into the copy."""
    if stage == "reward":
        out = tmp_path / "runs" / reward_run.name
        shutil.copytree(reward_run.parent, out.parent)
        old, new = str(reward_run.parent), str(out.parent)
    else:
        shutil.copytree(SAVED, tmp_path / "runs")
        out = tmp_path / "runs" / {"ppo": "rlhf_lora", "sft": "sft"}[stage]
        old, new = str(ROOT), str(tmp_path / "runs")
    for path in out.parent.rglob("*"):
        if path.suffix in (".yaml", ".json", ".jsonl") and path.is_file() and old in path.read_text():
            path.write_text(path.read_text().replace(old, new))
    return out


#: What each stage's config.yaml can name that a resume would use: stage -> item -> how the item is put
#: into the config (a function of the run and the server), and the CLI flags that name it again
#: (None: only --trust allows it).
ITEMS = {
    "ppo": ("data", "reward_server", "reward_module", "trust_remote_code"),
    "sft": ("data", "eval_data", "trust_remote_code"),
    "reward": ("data", "eval_data", "trust_remote_code"),
}


def _with_item(run: Path, item: str, server: RewardServer) -> dict:
    """Put ``item`` into the run's config.yaml; every stage already names its data file."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    if "rewards" in config:  # PPO: the server is the reward unless the item is another one
        config["rewards"] = ["tests.trace_code:reward"] if item == "reward_module" else [server.url]
    if item == "eval_data":
        copy = run.parent / "held_out.jsonl"
        shutil.copy(config["data"], copy)
        config["eval_data"] = str(copy)
    if item == "trust_remote_code":
        config["trust_remote_code"] = True
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def _named_again(config: dict, skip: str | None = None) -> list[str]:
    """The flags that name again every data file and reward source of ``config`` (but ``skip``)."""
    flags = []
    if skip != "data":
        flags += ["--data", config["data"]]
    if config.get("eval_data") and skip != "eval_data":
        flags += ["--eval-data", config["eval_data"]]
    for spec in config.get("rewards") or []:
        if skip not in ("reward_server", "reward_module"):
            flags += ["--reward", spec]
    return flags


MEMBERS = [(stage, item) for stage, items in ITEMS.items() for item in items]


@pytest.mark.parametrize(("stage", "item"), MEMBERS, ids=[f"{s}-{i}" for s, i in MEMBERS])
def test_a_resume_uses_nothing_the_config_names_without_consent(stage, item, tmp_path, reward_run, server, capsys,
                                                                monkeypatch):
    trace = tmp_path / "trace"
    monkeypatch.setenv("PPOKIT_TRACE", str(trace))
    run = _copy(stage, tmp_path, reward_run)
    config = _with_item(run, item, server)
    if item in ("data", "eval_data"):  # a resume that read it would fail on the missing file, not refuse
        Path(config[item]).rename(Path(config[item]).with_suffix(".away"))
    before = server.requests
    flags = _named_again(config, skip=item) if item != "trust_remote_code" else _named_again(config)
    assert main(["resume", str(run), "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ppokit: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    named = {"data": "data file", "eval_data": "eval_data file", "reward_server": "reward server",
             "reward_module": "reward 'tests.trace_code:reward'", "trust_remote_code": "trust_remote_code: true"}
    assert named[item] in lines[0] and "--trust" in lines[0], lines[0]
    assert SECRET not in err  # a token in a reward URL stays out of the terminal
    assert server.requests == before and not trace.exists()


@pytest.mark.parametrize("stage", list(ITEMS))
@pytest.mark.parametrize("consent", ["named_again", "trust"])
def test_a_resume_goes_ahead_once_the_user_allows_it(stage, consent, tmp_path, reward_run, server, capsys):
    run = _copy(stage, tmp_path, reward_run)
    # (A reward run's held-out rows are split from its data: naming an eval_data would change its training rows.)
    config = _with_item(run, {"ppo": "reward_server", "sft": "eval_data", "reward": "data"}[stage], server)
    before = server.requests
    flags = _named_again(config) if consent == "named_again" else ["--trust"]
    assert main(["resume", str(run), "--no-progress", *flags]) == 0, capsys.readouterr().err
    assert "resuming" in capsys.readouterr().err
    if stage == "ppo":
        assert server.requests > before  # the server the user allowed is the reward


def test_a_resume_on_a_changed_prompt_file_is_refused(tiny_lm, tmp_path, server, capsys):
    from ppokit.rlhf.config import RLHFConfig
    from ppokit.rlhf.ppo.trainer import RLHFTrainer
    from tests.rlhf.helpers import PROMPTS

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    config = RLHFConfig(policy=tiny_lm, data=str(data), rewards=[server.url], total_updates=1, batch_size=4,
                        max_new_tokens=4, progress=False, tensorboard=False, device="cpu", sample_every=0)
    RLHFTrainer(config, run_dir=tmp_path / "run").learn()
    with data.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"prompt": "one more prompt"}) + "\n")
    flags = ["--data", str(data), "--reward", server.url, "--total-updates", "2"]
    assert main(["resume", str(tmp_path / "run"), "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert "is not the file the run was trained on" in err and "sha256" in err and "Traceback" not in err


def test_the_python_api_asks_for_the_same_consent(tmp_path, reward_run, server):
    from ppokit.errors import UntrustedCodeError
    from ppokit.rlhf.ppo.trainer import RLHFTrainer
    from tests.rlhf.helpers import PROMPTS

    run = _copy("ppo", tmp_path, reward_run)
    config = _with_item(run, "reward_server", server)
    with pytest.raises(UntrustedCodeError, match="data file"):
        RLHFTrainer.resume(run, rewards=[server.url])
    with pytest.raises(UntrustedCodeError, match="reward server"):
        RLHFTrainer.resume(run, prompts=PROMPTS)
    trainer = RLHFTrainer.resume(run, data=config["data"], rewards=[server.url])
    assert trainer.num_updates == 1


@pytest.mark.parametrize(("fields", "flags"), [
    ({"data": "/d/p.jsonl"}, " --data /d/p.jsonl"),
    ({"data": "/d/p q.jsonl", "eval_data": "/d/e.jsonl"}, " --data '/d/p q.jsonl' --eval-data /d/e.jsonl"),
    ({"data": "/d/p.jsonl", "rewards": ["/models/rm"]}, " --data /d/p.jsonl"),  # a model directory runs no code
    ({"data": "/d/p.jsonl", "rewards": [f"http://h/s?token={SECRET}"]}, " --trust"),  # never print the token
    ({"data": "/d/p.jsonl", "rewards": ["tests.trace_code:reward"]}, " --trust"),
    ({"data": "/d/p.jsonl", "trust_remote_code": True}, " --trust"),
    ({"data": ""}, ""),  # prompts given in Python: the command line cannot resume it anyway
])
def test_the_resume_command_printed_at_an_interruption_has_the_consent_it_needs(fields, flags):
    from types import SimpleNamespace

    from ppokit.rlhf.consent import resume_flags
    from ppokit.rlhf.rewards.sources import reward_import

    config = SimpleNamespace(**{"rewards": [], "trust_remote_code": False, "data": "", "eval_data": None, **fields})
    assert resume_flags(config, reward_import) == flags
