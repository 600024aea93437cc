"""Experiment trackers: W&B in offline mode (its files read back) and MLflow against a real local
tracking server (read back through MLflow's client)."""

from __future__ import annotations

import glob
import json
import logging
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from ppokit.cli.main import main
from ppokit.control.agent import PPO
from ppokit.control.config import ControlConfig
from ppokit.errors import ConfigError
from ppokit.io.trackers import TRACKER_STATE, TrackerSet


def _config(run_dir: Path, **changes: Any) -> ControlConfig:
    values: dict[str, Any] = dict(env_id="CartPole-v1", total_steps=1024, num_envs=2, num_steps=128, num_minibatches=2,
                                  num_epochs=2, eval_episodes=3, tensorboard=False, progress=False, seed=3,
                                  run_dir=str(run_dir))
    values.update(changes)
    return ControlConfig(**values)


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------- W&B


def _wandb_records(run_dir: Path) -> list[Any]:
    """Every record of the run's offline ``.wandb`` files, oldest first.

    The file is W&B's transaction log: a 7-byte header, then LevelDB-style chunks in 32 KiB blocks
    (CRC32, length, type; FULL=1, FIRST=2, MIDDLE=3, LAST=4), each record a protobuf ``Record``."""
    from wandb.proto import wandb_internal_pb2

    records = []
    for path in sorted(glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))):
        data = Path(path).read_bytes()
        assert data[:4] == b":W&B"
        pos, pending = 7, b""
        while pos + 7 <= len(data):
            block_left = 32768 - pos % 32768
            if block_left < 7:  # a block's tail too short for a header is padding
                pos += block_left
                continue
            _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if length == 0 and kind == 0:
                pos += block_left
                continue
            pending += data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):
                record = wandb_internal_pb2.Record()
                record.ParseFromString(pending)
                records.append(record)
                pending = b""
    return records


def _key(item: Any) -> str:
    """A config, history or summary item's name (W&B writes it as ``key`` or as ``nested_key`` parts)."""
    return item.key or "/".join(item.nested_key)


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "ppokit-tests")
    for var, name in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / name))


def test_wandb_offline_gets_the_config_every_row_the_evaluation_and_the_model(tmp_path, wandb_offline):
    run_dir = tmp_path / "run"
    PPO(_config(run_dir, trackers=["wandb"])).learn()
    records = _wandb_records(run_dir)
    kinds = [r.WhichOneof("record_type") for r in records]

    # W&B sends the config with the run record, or (when wandb.init returns before it is sent, as on a
    # loaded machine) in a config record after it: read both.
    config = {_key(item): json.loads(item.value_json) for r in records if r.HasField("run") for item in r.run.config.update}
    config.update({_key(item): json.loads(item.value_json) for r in records if r.HasField("config")
                   for item in r.config.update})
    assert config["env_id"] == "CartPole-v1" and config["num_steps"] == 128 and config["trackers"] == ["wandb"]

    history = [{_key(item): json.loads(item.value_json) for item in r.history.item} for r in records if r.HasField("history")]
    rows = _rows(run_dir)
    assert len(history) == len(rows) == 4
    assert [h["step"] for h in history] == [r["global_step"] for r in rows]
    assert [h["approx_kl_k3"] for h in history] == pytest.approx([r["approx_kl_k3"] for r in rows])

    summary = {_key(item): json.loads(item.value_json) for r in records if r.HasField("summary") for item in r.summary.update}
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert summary["eval/mean_return"] == pytest.approx(evaluation["mean_return"])
    assert summary["eval/episodes"] == 3

    artifacts = [r.artifact for r in records if r.HasField("artifact")]
    assert len(artifacts) == 1 and artifacts[0].type == "model"
    assert {entry.path for entry in artifacts[0].manifest.contents} == {"model.safetensors", "state.json"}
    assert "exit" in kinds and next(r.exit.exit_code for r in records if r.HasField("exit")) == 0


def test_wandb_resume_continues_the_same_tracker_run(tmp_path, wandb_offline):
    run_dir = tmp_path / "run"
    PPO(_config(run_dir, trackers=["wandb"], total_steps=512)).learn()
    first_id = json.loads((run_dir / TRACKER_STATE).read_text())["wandb"]
    PPO.resume(run_dir).learn(total_steps=1024)
    assert json.loads((run_dir / TRACKER_STATE).read_text())["wandb"] == first_id
    runs = [r.run for r in _wandb_records(run_dir) if r.HasField("run")]
    assert len(runs) == 2 and {r.run_id for r in runs} == {first_id}
    steps = [json.loads(i.value_json) for r in _wandb_records(run_dir) if r.HasField("history")
             for i in r.history.item if _key(i) == "step"]
    assert sorted(steps) == [256, 512, 768, 1024]  # each row once: the first run stopped at 512


# ---------------------------------------------------------------------------------------- MLflow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the MLflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
                time.sleep(0.3)
        yield uri
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture
def mlflow_env(mlflow_server, monkeypatch):
    experiment = f"ppokit-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    from mlflow.tracking import MlflowClient

    return MlflowClient(mlflow_server), experiment


def _only_run(client: Any, experiment: str) -> Any:
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return runs[0]


def test_mlflow_server_gets_params_every_metric_row_the_evaluation_and_the_model(tmp_path, mlflow_env):
    client, experiment = mlflow_env
    run_dir = tmp_path / "run"
    assert main(["train", "CartPole-v1", "--no-preset", "--run-dir", str(run_dir), "--total-steps", "1024",
                 "--set", "num_envs=2", "--set", "num_steps=128", "--set", "num_minibatches=2",
                 "--set", "eval_episodes=3", "--set", "tensorboard=false", "--no-progress",
                 "--set", "trackers=[mlflow]"]) == 0
    run = _only_run(client, experiment)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["num_steps"] == "128" and run.data.params["env_id"] == "CartPole-v1"
    assert json.loads(run.data.params["hidden_sizes"]) == [64, 64]

    rows = _rows(run_dir)
    history = client.get_metric_history(run.info.run_id, "approx_kl_k3")
    assert [m.step for m in history] == [r["global_step"] for r in rows]
    assert [m.value for m in history] == pytest.approx([r["approx_kl_k3"] for r in rows])
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert run.data.metrics["eval/mean_return"] == pytest.approx(evaluation["mean_return"])
    assert sorted(f.path for f in client.list_artifacts(run.info.run_id, "model")) == [
        "model/model.safetensors", "model/state.json"]
    assert json.loads((run_dir / TRACKER_STATE).read_text()) == {"mlflow": run.info.run_id}


def test_mlflow_marks_an_interrupted_run_killed_and_resume_finishes_it(tmp_path, mlflow_env):
    client, experiment = mlflow_env
    run_dir = tmp_path / "run"

    def interrupt(row: dict[str, Any]) -> None:
        if row["update"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        PPO(_config(run_dir, trackers=["mlflow"], checkpoint_every=1)).learn(callback=interrupt)
    assert _only_run(client, experiment).info.status == "KILLED"
    PPO.resume(run_dir).learn()
    run = _only_run(client, experiment)  # the same MLflow run, not a second one
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "approx_kl_k3")]
    assert steps[-2:] == [768, 1024] and set(steps) == {256, 512, 768, 1024}


def test_an_rlhf_run_sends_its_scores_and_policy(tmp_path, mlflow_env, tiny_lm):
    from ppokit.rlhf.config import RLHFConfig
    from ppokit.rlhf.ppo.trainer import RLHFTrainer
    from tests.rlhf.helpers import PROMPTS

    client, experiment = mlflow_env
    config = RLHFConfig(policy=tiny_lm, rewards=["tests.rlhf.helpers:pleasant_minus_unpleasant"], total_updates=2,
                        batch_size=4, num_minibatches=2, max_new_tokens=4, progress=False, tensorboard=False,
                        device="cpu", sample_every=0, trackers=["mlflow"])
    summary = RLHFTrainer(config, PROMPTS, run_dir=tmp_path / "rlhf").learn()
    run = _only_run(client, experiment)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "score")] == [1, 2]
    assert run.data.metrics["score_last"] == pytest.approx(summary["score_last"])
    names = {Path(f.path).name for f in client.list_artifacts(run.info.run_id, "model")}
    assert "config.json" in names and "model.safetensors" in names


def test_a_tracker_that_cannot_start_stops_the_run_before_it_writes_a_config(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="could not start mlflow"):
        PPO(_config(run_dir, trackers=["mlflow"])).learn()
    assert not (run_dir / "config.yaml").exists()


# ---------------------------------------------------------------------------------------- any tracker


def test_a_missing_package_or_unknown_tracker_is_refused_by_name(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'ppokit\[wandb\]'"):
        PPO(_config(tmp_path / "run", trackers=["wandb"])).learn()
    assert not (tmp_path / "run").exists()
    assert main(["train", "CartPole-v1", "--set", "trackers=[neptune]", "--run-dir", str(tmp_path / "b")]) == 2
    assert "'trackers'[0]: 'neptune' is not allowed; expected one of 'wandb', 'mlflow'" in capsys.readouterr().err


class _Recorder:
    name = "recorder"
    run_id = "r"

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail_on = fail_on

    def _call(self, what: str, arg: Any) -> None:
        if what == self.fail_on:
            raise ConnectionError("the server went away")
        self.calls.append((what, arg))

    def log(self, row: Any, step: int) -> None:
        self._call("log", (dict(row), step))

    def summary(self, values: Any) -> None:
        self._call("summary", dict(values))

    def artifact(self, directory: Path, name: str) -> None:
        self._call("artifact", name)

    def close(self, status: str) -> None:
        self._call("close", status)


def test_a_tracker_that_fails_mid_run_is_dropped_with_a_warning_and_the_others_go_on(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="ppokit")
    good, bad = _Recorder(), _Recorder(fail_on="log")
    trackers = TrackerSet([bad, good])
    trackers.log({"loss": 0.5, "note": "text", "nan": float("nan"), "flag": True, "missing": None}, 7)
    trackers.log({"loss": 0.25}, 8)
    (tmp_path / "model").mkdir()
    trackers.finish({"eval/mean_return": 12.0, "returns": [1, 2]}, tmp_path / "model")
    trackers.close("finished")
    assert good.calls == [("log", ({"loss": 0.5}, 7)), ("log", ({"loss": 0.25}, 8)),
                          ("summary", {"eval/mean_return": 12.0}), ("artifact", "model"), ("close", "finished")]
    assert bad.calls == []
    assert sum("tracker recorder failed (ConnectionError" in r.message for r in caplog.records) == 1


def test_an_sft_run_sends_its_rows_summary_and_model(tmp_path, mlflow_env, tiny_lm):
    import random

    from ppokit.rlhf.config import SFTConfig
    from ppokit.rlhf.demo import sft_rows
    from ppokit.rlhf.supervised.sft import train_sft

    client, experiment = mlflow_env
    config = SFTConfig(model=tiny_lm, epochs=1, batch_size=8, max_length=32, progress=False, tensorboard=False,
                       device="cpu", trackers=["mlflow"])
    summary = train_sft(config, data=sft_rows(24, random.Random(0)), run_dir=tmp_path / "sft")
    run = _only_run(client, experiment)
    assert run.info.status == "FINISHED" and run.data.params["epochs"] == "1"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]
    assert run.data.metrics["final_loss"] == pytest.approx(summary["final_loss"])
    assert "model/config.json" in {f.path for f in client.list_artifacts(run.info.run_id, "model")}
