"""Every network wait ppokit has, against every kind of silent peer (issue 30, class 3): each ends by
its deadline (plus a small slack) with one clear line. Loopback only; deadlines of about a second.

The waits: the HTTP reward client's POST, an MLflow tracker starting and one logging mid-run, and the
reward server reading a request from a client. The peers: one that accepts and never answers, one
that drips a byte every 0.2 s (each read succeeds: a per-read timeout never fires), and a closed
port (clients only; a server has no port to dial).

Measured without the fix (ppokit before issue 30, these tests unchanged but for the server's old
app): 6 of the 12 cases fail. The reward POST, MLflow's start and MLflow mid-run against the dripping
peer (per-read timeouts: they ran until the peer gave up, 30 s and 15 s against deadlines of 2 s),
and the server's three waits (no timeout before a connection's first request: 6 s, until the test
gave up). The silent and closed peers passed for MLflow because the case sets MLflow's own variables;
``test_mlflow_waits_get_ppokit_defaults_unless_set`` covers the defaults (MLflow's: minutes)."""

import asyncio
import json
import logging
import socket
import threading
import time

import pytest
import torch

from ppokit.errors import ConfigError, TrainingError

SLACK_S = 1.5
#: The longest a peer keeps a connection: the bound on each case, if the wait under test has none.
PEER_GIVES_UP_S = 15.0


class Peer:
    """A loopback peer of one kind: 'silent' (accepts, reads, never answers), 'drip' (answers a byte
    every 0.2 s, forever) or 'closed' (a port nothing listens on)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.stop = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        if kind == "closed":
            self.sock.close()
            return
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(0.2)
            try:
                conn.recv(65536)
            except OSError:
                pass
            reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
            i = 0
            ends = time.monotonic() + PEER_GIVES_UP_S
            while not self.stop.is_set() and time.monotonic() < ends:
                if self.kind == "drip":
                    try:
                        conn.send(reply[i:i + 1] if i < len(reply) else b" ")
                    except OSError:
                        return
                    i += 1
                time.sleep(0.2)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


# ---- the client waits: each returns (deadline, a callable that must raise) -------------------------


def reward_post(peer, monkeypatch, tmp_path=None):
    from ppokit.rlhf.rewards.remote import HTTPReward

    reward = HTTPReward(peer.url + "/score", timeout=1.0, retries=1, backoff=0.1)
    return reward.longest_s, lambda: reward(["p"], ["c"]), TrainingError, r"reward server http://127\.0\.0\.1:\d+/score: "


def _mlflow_env(peer, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", peer.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    from ppokit.io.trackers import mlflow_deadline

    return mlflow_deadline()


def mlflow_start(peer, monkeypatch, tmp_path=None):
    from ppokit.io.trackers import open_trackers

    deadline = _mlflow_env(peer, monkeypatch)

    def start():
        open_trackers(["mlflow"], tmp_path, {"seed": 0}, resuming=False)

    return deadline, start, ConfigError, "trackers: could not start mlflow"


def mlflow_mid_run(peer, monkeypatch, tmp_path=None):
    from mlflow.tracking import MlflowClient

    from ppokit.io.trackers import MlflowTracker, TrackerSet

    deadline = _mlflow_env(peer, monkeypatch)
    tracker = MlflowTracker.__new__(MlflowTracker)  # as if it had started, before the server went quiet
    tracker.client, tracker.run_id, tracker.deadline = MlflowClient(peer.url), "0" * 32, deadline
    tracker._pending, tracker._last_flush = [], 0.0
    trackers = TrackerSet([tracker])

    def log():
        trackers.log({"loss": 1.0}, 1)
        assert not trackers, "the tracker was not dropped"
        raise TrainingError("dropped")  # what the case checks: it came back, in time, and dropped it

    return deadline, log, TrainingError, "dropped"


CLIENT_WAITS = {"reward POST": reward_post, "MLflow start": mlflow_start, "MLflow log mid-run": mlflow_mid_run}


@pytest.mark.parametrize("peer_kind", ["silent", "drip", "closed"])
@pytest.mark.parametrize("wait", list(CLIENT_WAITS))
def test_every_client_wait_ends_at_its_deadline_with_one_line(wait, peer_kind, monkeypatch, tmp_path, caplog):
    peer = Peer(peer_kind)
    try:
        deadline, act, error, phrase = CLIENT_WAITS[wait](peer, monkeypatch, tmp_path)
        assert deadline < 10  # the case's settings took effect
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="ppokit"), pytest.raises(error, match=phrase) as raised:
            act()
        elapsed = time.monotonic() - started
    finally:
        peer.close()
    assert elapsed <= deadline + SLACK_S, (wait, peer_kind, elapsed, deadline)
    message = str(raised.value)
    assert "\n" not in message and "Traceback" not in message
    for record in caplog.records:  # warnings on the way (a retry, a dropped tracker) are one line too
        assert "\n" not in record.getMessage(), record.getMessage()


# ---- the server's waits: a client that is the silent peer --------------------------------------------


@pytest.fixture
def reward_server():
    """`serve-reward`'s app and protocol (ServerLimits.idle_timeout = 1 s) on loopback, in this process."""
    import uvicorn

    from ppokit.rlhf.rewards.server import ServerLimits, _protocol, make_app

    limits = ServerLimits(idle_timeout=1.0)
    app = make_app(lambda p, c: torch.zeros(len(c)), "fake", limits=limits)
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off", http=_protocol(limits),
                                           timeout_keep_alive=1))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: loop.run_until_complete(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1], limits.idle_timeout
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


SERVER_WAITS = {
    "nothing sent": [],
    "headers dripped": [b"POST /score HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: 1\r\n", b"X-B: 2\r\n"] * 5,
    "body dripped": [b'POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\n{"prompts": ['] + [b'"a",'] * 20,
}


@pytest.mark.parametrize("wait", list(SERVER_WAITS))
def test_the_reward_server_ends_each_wait_on_a_silent_client(reward_server, wait):
    port, idle = reward_server
    started = time.monotonic()
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.settimeout(0.2)
        pieces = list(SERVER_WAITS[wait])
        while time.monotonic() - started < idle + 5:
            if pieces:
                try:
                    sock.sendall(pieces.pop(0))
                except OSError:
                    break
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break  # the server closed it
            answer += data
    elapsed = time.monotonic() - started
    assert elapsed <= idle + SLACK_S, (wait, elapsed)
    if answer:  # a body too slow is told so, in one JSON line
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer[:200]
        assert "idle-timeout" in json.loads(body)["error"]


def test_mlflow_waits_get_ppokit_defaults_unless_set(monkeypatch):
    """MLflow's own defaults (120 s a read, 7 retries, doubling backoff) let one call take minutes."""
    from ppokit.io.trackers import MLFLOW_HTTP_DEFAULTS, mlflow_deadline

    for name in [*MLFLOW_HTTP_DEFAULTS, "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"]:
        monkeypatch.delenv(name, raising=False)
    assert mlflow_deadline() == 10 * 3 + (2 + 1) + (4 + 1)
    import os

    assert {name: os.environ[name] for name in MLFLOW_HTTP_DEFAULTS} == MLFLOW_HTTP_DEFAULTS
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")  # the user's choice stands
    assert mlflow_deadline() == 60 * 3 + 8
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "lots")
    with pytest.raises(ConfigError, match="MLFLOW_HTTP_REQUEST_MAX_RETRIES='lots': expected a number"):
        mlflow_deadline()
