"""A reward URL's credentials never show (issue 30, class 2): every place ppokit prints or writes a
reward URL, other than config.yaml (which resume needs), × every kind of credential a URL carries.
Loopback only.

Measured without the fix (ppokit before issue 30): all 40 generated cases fail (every surface
showed the secret; the ftp:// URLs were taken for a 'module:function')."""

import dataclasses
import json
import logging
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from ppokit.errors import PPOKitError
from ppokit.urls import redact_text, redact_url

SECRET = "s3cr3t-Value"
#: How a URL carries a secret: (name, a function of host:port -> URL)
KINDS = {
    "token query": lambda hp: f"http://{hp}/score?token={SECRET}&x=1",
    "api_key among others": lambda hp: f"http://{hp}/score?model=a&api_key={SECRET}",
    "user:pass@": lambda hp: f"http://alice:{SECRET}@{hp}/score",
    "token as the user": lambda hp: f"http://{SECRET}@{hp}/score",
}


class Server:
    """Answers each POST with ``reply`` = (status, body, headers)."""

    def __init__(self, reply):
        owner = self
        self.reply = reply

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                status, body, headers = owner.reply
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.hp = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _client_surface(reply, retries=0):
    def show(url, caplog, tmp_path, monkeypatch):
        from ppokit.rlhf.rewards.remote import HTTPReward

        server = Server(reply)
        try:
            with caplog.at_level(logging.WARNING, logger="ppokit"), pytest.raises(PPOKitError) as err:
                HTTPReward(url(server.hp), timeout=2, retries=retries, backoff=0)(["p"], ["c"])
        finally:
            server.close()
        return str(err.value) + "\n" + caplog.text
    return show


def _scheme_refusal(url, caplog, tmp_path, monkeypatch):
    from ppokit.rlhf.config import RLHFConfig

    with pytest.raises(PPOKitError) as err:
        RLHFConfig(policy="x", rewards=[url("127.0.0.1:1").replace("http://", "ftp://")])
    return str(err.value)


class _Recorder:
    """Stands in for a tracker's client and keeps everything it was sent."""

    sent: list = []

    def __init__(self, *args, **kwargs):
        _Recorder.sent.append(("init", args, kwargs))

    def __getattr__(self, name):
        def record(*args, **kwargs):
            _Recorder.sent.append((name, args, kwargs))
            return types.SimpleNamespace(experiment_id="1", info=types.SimpleNamespace(run_id="r"), id="r",
                                         define_metric=lambda *a, **k: None)
        return record


def _tracker_params(name):
    def show(url, caplog, tmp_path, monkeypatch):
        from ppokit.io import trackers

        _Recorder.sent = []
        if name == "mlflow":
            pytest.importorskip("mlflow")
            monkeypatch.setattr("mlflow.tracking.MlflowClient", _Recorder)
        else:
            fake = types.ModuleType("wandb")
            fake.init = lambda **kw: (_Recorder.sent.append(("init", (), kw)),
                                      types.SimpleNamespace(id="r", define_metric=lambda *a, **k: None))[1]
            fake.Settings = lambda **kw: kw
            monkeypatch.setitem(sys.modules, "wandb", fake)
            monkeypatch.setattr(trackers, "check_trackers", lambda names: None)
        trackers.open_trackers([name], tmp_path, {"rewards": [url("127.0.0.1:1")], "seed": 0}, resuming=False)
        return repr(_Recorder.sent)
    return show


def _model_card(url, caplog, tmp_path, monkeypatch):
    from ppokit.hub.model_card import LMFacts, lm_card

    facts = LMFacts("rlhf ppo", {"policy": "p", "data": "d.jsonl", "rewards": [url("127.0.0.1:1")], "seed": 0},
                    "final", [], "note", None, "p", None, None, "out", "apache-2.0", updates=2)
    return lm_card(facts)


def _info(url, caplog, tmp_path, monkeypatch):
    from ppokit.io.run_info import describe_run

    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"policy": "p", "data": "d.jsonl", "seed": 0,
                                                          "rewards": [url("127.0.0.1:1")], "total_updates": 2}))
    return "\n".join(describe_run(tmp_path))


def _resume_refusal(url, caplog, tmp_path, monkeypatch):
    from ppokit.configuration import check_unchanged
    from ppokit.rlhf.config import RLHFConfig

    saved = RLHFConfig(policy="p", rewards=[url("127.0.0.1:1")])
    with pytest.raises(PPOKitError) as err:
        check_unchanged(saved, dataclasses.replace(saved, rewards=[url("127.0.0.1:2")]), frozenset(), "config.yaml")
    return str(err.value)


def _saved_rlhf_run(url, tmp_path):
    """A copy of the saved RLHF LoRA run whose config.yaml names the reward server ``url``."""
    import shutil

    from tests.fixtures.make_saved_runs import ROOT

    saved = __import__("pathlib").Path(__file__).resolve().parent / "fixtures" / "saved_runs"
    shutil.copytree(saved, tmp_path / "runs")
    for path in (tmp_path / "runs").rglob("*"):
        if path.suffix in (".yaml", ".json", ".jsonl") and path.is_file() and str(ROOT) in path.read_text():
            path.write_text(path.read_text().replace(str(ROOT), str(tmp_path / "runs")))
    run = tmp_path / "runs" / "rlhf_lora"
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["rewards"] = [url("127.0.0.1:1")]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def _package(url, caplog, tmp_path, monkeypatch):
    """Every text file of a package (what is meant to be published), not only its card."""
    pytest.importorskip("peft")
    from ppokit.hub.package import package_run

    out = package_run(_saved_rlhf_run(url, tmp_path), tmp_path / "pkg")
    return "\n".join(f.read_text(errors="replace") for f in sorted(out.rglob("*"))
                     if f.is_file() and f.suffix in (".md", ".yaml", ".json", ".txt"))


def _resume_consent(url, caplog, tmp_path, monkeypatch, capsys=None):
    """``ppokit resume`` refusing to contact the server the run names without consent."""
    pytest.importorskip("peft")
    from ppokit.errors import UntrustedCodeError
    from ppokit.rlhf.ppo.trainer import RLHFTrainer

    with pytest.raises(UntrustedCodeError) as err:
        RLHFTrainer.resume(_saved_rlhf_run(url, tmp_path))
    return str(err.value)


SURFACES = {
    "warning on a retry, error after the retries": _client_surface((503, b"busy", {}), retries=1),
    "error on a bad answer": _client_surface((200, b'{"scores": "x"}', {})),
    "error on a 4xx": _client_surface((401, b"bad token", {})),
    "error on a redirect": _client_surface((302, b"", {"Location": f"http://u:{SECRET}@elsewhere/?token={SECRET}"})),
    "unsupported scheme refusal": _scheme_refusal,
    "MLflow params": _tracker_params("mlflow"),
    "W&B config": _tracker_params("wandb"),
    "model card": _model_card,
    "ppokit info": _info,
    "resume refusal": _resume_refusal,
    "package (every text file)": _package,
    "resume consent refusal": _resume_consent,
}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("surface", list(SURFACES))
def test_a_reward_urls_secret_never_shows(surface, kind, caplog, tmp_path, monkeypatch):
    shown = SURFACES[surface](KINDS[kind], caplog, tmp_path, monkeypatch)
    assert SECRET not in shown, shown
    assert "***" in shown, shown  # the URL is there, redacted (the check is not passing vacuously)


def test_redaction_keeps_what_is_not_secret():
    assert redact_url("https://a:b@host:8/p/q?x=1&y&z=2#f") == "https://***@host:8/p/q?x=***&y&z=***#f"
    assert redact_url("rm/dir") == "rm/dir" and redact_url("module:function") == "module:function"
    assert redact_text(f"at 'http://h/s?token={SECRET}': no") == "at 'http://h/s?token=***': no"
    assert json.loads(json.dumps(redact_text("plain"))) == "plain"
