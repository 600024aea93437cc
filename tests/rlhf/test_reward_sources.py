"""Rewards from anywhere: the HTTP reward client against a tiny server in this process, the
`ppokit rlhf serve-reward` server as a subprocess (and PPO against it), and reward functions called
concurrently with a timeout. Loopback only."""

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from ppokit.errors import ConfigError, TrainingError
from ppokit.rlhf.config import RLHFConfig
from ppokit.rlhf.rewards.remote import HTTPReward
from ppokit.rlhf.rewards.sources import CallableReward, build_reward, reward_import, split_batch
from tests.rlhf import helpers

REPO = Path(__file__).resolve().parents[2]


# ---- a tiny reward server in this process ----------------------------------------------------------


class FakeRewardServer:
    """Answers each POST with the next of ``replies`` — ``(status, body)``, or ``("sleep", s)`` to
    stall that long before a good answer — and, once they run out, with the completions' lengths."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.replies: list[tuple] = []
        self.location = ""
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.requests.append(body)
                    reply = owner.replies.pop(0) if owner.replies else ("ok",)
                if reply[0] == "sleep":
                    time.sleep(reply[1])
                if reply[0] in ("ok", "sleep"):
                    status, text = 200, json.dumps({"scores": [len(c) for c in body["completions"]]})
                else:
                    status, text = reply
                try:
                    self.send_response(status)
                    if 300 <= status < 400:
                        self.send_header("Location", owner.location)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(text.encode())
                except OSError:  # the client gave up on a stalled answer
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/score"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    server = FakeRewardServer()
    try:
        yield server
    finally:
        server.close()


def _client(url: str, **options) -> HTTPReward:
    return HTTPReward(url, **{"timeout": 5.0, "retries": 3, "batch_size": 4, "backoff": 0.0, **options})


COMPLETIONS = [" good" * (i % 4 + 1) for i in range(10)]
PROMPTS = [f"p{i}" for i in range(10)]


@pytest.mark.parametrize("workers", [1, 3])
def test_http_reward_batches_and_keeps_the_order(fake, workers):
    scores = _client(fake.url, workers=workers)(PROMPTS, COMPLETIONS)
    assert scores.dtype == torch.float32
    assert scores.tolist() == [float(len(c)) for c in COMPLETIONS]
    assert sorted(len(r["completions"]) for r in fake.requests) == [2, 4, 4]
    sent = sorted((r["prompts"][0], r["prompts"], r["completions"]) for r in fake.requests)
    assert [p for _, ps, _ in sent for p in ps] == PROMPTS  # every prompt went with its own completion
    assert [c for _, _, cs in sent for c in cs] == COMPLETIONS


def test_http_reward_retries_5xx_and_timeouts_then_succeeds(fake):
    fake.replies = [(503, "busy"), ("sleep", 1.5), (500, "oops")]
    scores = _client(fake.url, timeout=0.3, batch_size=10)(PROMPTS, COMPLETIONS)
    assert scores.tolist() == [float(len(c)) for c in COMPLETIONS]
    assert len(fake.requests) == 4


def test_http_reward_gives_up_after_its_retries_with_the_first_line_of_the_answer(fake):
    fake.replies = [(502, "upstream is down\nTraceback (most recent call last):")] * 10
    with pytest.raises(TrainingError) as err:
        _client(fake.url, retries=2)(["p"], ["c"])
    message = str(err.value)
    assert fake.url in message and "HTTP 502" in message and "upstream is down" in message
    assert "Traceback" not in message and "3 attempts" in message
    assert len(fake.requests) == 3


def test_http_reward_does_not_retry_a_4xx(fake):
    fake.replies = [(422, "prompt 0 is too long\nmore detail")]
    with pytest.raises(TrainingError, match=r"HTTP 422 .*: prompt 0 is too long$"):
        _client(fake.url)(["p"], ["c"])
    assert len(fake.requests) == 1


def test_http_reward_retries_a_refused_connection_then_names_it():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/score"
    with pytest.raises(TrainingError, match=r"could not connect .*gave up after 2 attempts") as err:
        _client(url, retries=1)(["p"], ["c"])
    assert url in str(err.value)


@pytest.mark.parametrize("body, problem", [
    ("<html>oops</html>", "not JSON ('<html>oops</html>')"),
    ("", "not JSON ('an empty body')"),
    ('{"score": [1, 2]}', "has no 'scores' (got an object with keys ['score'])"),
    ("[1, 2]", "has no 'scores' (got a JSON list)"),
    ('{"scores": "1 2"}', "'scores' is a str, not a list"),
    ('{"scores": [1]}', "answered 1 score;"),
    ('{"scores": [1, 2, 3]}', "answered 3 scores;"),
    ('{"scores": [1, "2"]}', 'score 1 is "2", not a number'),
    ('{"scores": [true, 2]}', "score 0 is true, not a number"),
    ('{"scores": [1, null]}', "score 1 is null, not a number"),
    ('{"scores": [1, NaN]}', "score 1 is not finite (nan)"),
    ('{"scores": [1e999, 2]}', "score 0 is not finite (inf)"),
    # issue 30: each used to be a traceback (OverflowError, RecursionError) or a "non-finite loss" later
    ('{"scores": [1, ' + "9" * 400 + "]}", "score 1 is an integer of 400 digits, beyond float32's range"),
    ('{"scores": [3.5e38, 2]}', "score 0 is 3.5e+38, beyond float32's range"),
    ('{"scores": [1, -3.5e38]}', "score 1 is -3.5e+38, beyond float32's range"),
    ('{"scores": [1, [2]]}', "score 1 is a JSON list, not a number"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"scores": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
])
def test_http_reward_names_each_bad_answer_and_does_not_retry_it(fake, body, problem):
    fake.replies = [(200, body)]
    with pytest.raises(TrainingError) as err:
        _client(fake.url)(["p", "q"], ["a", "b"])
    assert str(err.value).startswith(f"reward server {fake.url}: ")
    assert problem in str(err.value)
    assert "for 2 completions" in str(err.value)
    assert len(fake.requests) == 1


def test_a_url_is_a_reward_server_not_a_module_to_import():
    url = "http://127.0.0.1:8000/score"
    assert reward_import(url) is None and reward_import("HTTPS://host/score") is None
    assert reward_import("tests.rlhf.helpers:raises") == "tests.rlhf.helpers"  # unchanged
    reward = build_reward([url], None, torch.float32, torch.device("cpu"), timeout=7.0, retries=5, batch_size=16,
                          workers=2)
    (source,) = reward.sources
    assert isinstance(source, HTTPReward)
    assert (source.url, source.timeout, source.retries, source.batch_size, source.workers) == (url, 7.0, 5, 16, 2)
    for bad in ("http://", "http://host:port/score", "https:///score"):
        with pytest.raises(ConfigError, match="not a usable URL"):
            build_reward([bad], None, torch.float32, torch.device("cpu"))


@pytest.mark.parametrize("url", ["ftp://host/score", "file:///tmp/x:y", "gopher://h:1/s", "FTP://u:pw@h/s?token=t"])
def test_a_url_of_another_scheme_is_refused_not_imported(url):
    assert reward_import(url) is None  # never read as 'module:function'
    for build in (lambda: build_reward([url], None, torch.float32, torch.device("cpu")),
                  lambda: RLHFConfig(policy="x", rewards=[url])):
        with pytest.raises(ConfigError, match=r"unsupported URL scheme '(ftp|file|gopher)'") as err:
            build()
        assert "\n" not in str(err.value) and "pw" not in str(err.value) and "token=t" not in str(err.value)


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_is_refused_naming_the_location_not_followed_as_a_get(fake, code):
    fake.replies = [(code, "")]
    fake.location = "http://127.0.0.1:1/elsewhere?token=hidden"
    with pytest.raises(TrainingError) as err:
        _client(fake.url)(["p"], ["c"])
    message = str(err.value)
    assert f"answered HTTP {code} redirecting to http://127.0.0.1:1/elsewhere?token=***" in message, message
    assert "does not follow redirects" in message and "hidden" not in message
    assert len(fake.requests) == 1  # no second request, GET or POST


# ---- slow reward functions: concurrent chunks, a timeout ---------------------------------------------


def test_split_batch_keeps_order_and_sizes():
    chunks = split_batch(PROMPTS, COMPLETIONS, 4)
    assert [len(c) for _, c in chunks] == [3, 3, 2, 2]
    assert [p for ps, _ in chunks for p in ps] == PROMPTS and [c for _, cs in chunks for c in cs] == COMPLETIONS
    assert [len(c) for _, c in split_batch(PROMPTS[:2], COMPLETIONS[:2], 4)] == [1, 1]
    assert split_batch([], [], 4) == [([], [])]


def test_four_workers_call_the_chunks_concurrently_and_join_them_in_order():
    helpers.CHUNK_THREADS.clear()
    reward = CallableReward("tests.rlhf.helpers:meets_three_others", workers=4, timeout=30.0)
    # The function waits at a barrier of four: called one chunk at a time, it would break the barrier.
    scores = reward(PROMPTS, COMPLETIONS)
    assert scores.tolist() == [float(len(c.split())) for c in COMPLETIONS]
    assert len(set(helpers.CHUNK_THREADS)) == 4 and threading.current_thread().name not in helpers.CHUNK_THREADS


def test_one_worker_makes_todays_single_call():
    calls = []

    def rule(prompts, completions):
        calls.append((prompts, completions, threading.current_thread().name))
        return [float(len(c)) + 0.1 * i for i, c in enumerate(completions)]

    today = CallableReward(rule)(PROMPTS, COMPLETIONS)
    timed = CallableReward(rule, workers=1, timeout=30.0)(PROMPTS, COMPLETIONS)
    assert torch.equal(today, timed)
    assert [(p, c) for p, c, _ in calls] == [(PROMPTS, COMPLETIONS)] * 2
    assert calls[0][2] == threading.current_thread().name != calls[1][2]  # the timed call runs in a thread


def test_a_call_over_the_timeout_is_a_named_error_and_its_thread_is_abandoned():
    try:
        with pytest.raises(TrainingError, match=r"waits_for_release did not return within reward_timeout = 0.2 s; "
                                                r"its thread cannot be stopped and is abandoned"):
            CallableReward("tests.rlhf.helpers:waits_for_release", timeout=0.2)(["p"], ["c"])
        with pytest.raises(TrainingError, match=r"within reward_timeout = 0.2 s on chunk 1 of 2 \(1 completions\)"):
            CallableReward("tests.rlhf.helpers:waits_for_release", timeout=0.2, workers=2)(["p", "q"], ["c", "d"])
    finally:
        helpers.RELEASE.set()


def test_errors_in_a_chunk_are_reported_as_before():
    with pytest.raises(TrainingError, match="raised RuntimeError: boom"):
        CallableReward("tests.rlhf.helpers:raises", workers=2, timeout=10.0)(["p", "q"], ["a", "b"])
    with pytest.raises(TrainingError, match="returned 1 scores for 2 completions"):
        CallableReward("tests.rlhf.helpers:wrong_length", workers=2, timeout=10.0)(["p"] * 4, ["a"] * 4)
    def nan_for_bad(prompts, completions):
        return [float("nan") if c == "bad" else 0.0 for c in completions]

    with pytest.raises(TrainingError, match=r"non-finite score \(nan\) for completion 2$"):  # its place in the batch
        CallableReward(nan_for_bad, workers=2, timeout=10.0)(["p"] * 4, ["a", "b", "bad", "d"])


def test_a_process_pool_runs_the_chunks_in_other_processes_in_order():
    reward = CallableReward("tests.rlhf.helpers:length_unless_in_this_process", workers=2, pool="process",
                            timeout=60.0)
    try:
        completions = ["a", "bb", "ccc", "dddd", "eeeee"]
        scores = reward([str(os.getpid())] * 5, completions)  # -1 for a completion scored in this process
        assert scores.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    finally:
        reward.close()


def test_a_process_pool_stops_its_workers_on_a_timeout():
    reward = CallableReward("tests.rlhf.helpers:sleeps_for_the_prompt", workers=2, pool="process", timeout=0.5)
    try:
        with pytest.raises(TrainingError, match="within reward_timeout = 0.5 s on chunk 1 of 2.*worker processes were stopped"):
            reward(["60", "60"], ["a", "b"])
        assert reward._processes is None
    finally:
        reward.close()


def test_a_process_pool_needs_a_module_function():
    with pytest.raises(ConfigError, match="reward_pool: process needs the function as a 'module:function'"):
        CallableReward(helpers.pleasant_minus_unpleasant, workers=2, pool="process")
    with pytest.raises(ConfigError, match="reward_pool"):
        RLHFConfig(policy="x", reward_pool="fork")


# ---- `ppokit rlhf serve-reward`: validation in this process, the real server as a subprocess ----------


def test_the_server_app_validates_requests():
    pytest.importorskip("httpx")  # starlette's TestClient drives the app through httpx
    from starlette.testclient import TestClient

    from ppokit.rlhf.rewards.server import make_app

    client = TestClient(make_app(lambda p, c: torch.tensor([len(x) + 0.5 for x in c]), "fake"))
    assert client.get("/health").json() == {"status": "ok", "model": "fake"}
    answer = client.post("/score", json={"prompts": ["p", "q"], "completions": ["a", "bcd"]})
    assert answer.status_code == 200 and answer.json() == {"scores": [1.5, 3.5]}
    assert client.post("/score", json={"prompts": [], "completions": []}).json() == {"scores": []}
    for body, problem in [
        (b"nope", "not JSON"), (b"[1]", "must be a JSON object"), (b'{"prompts": []}', "no 'completions'"),
        (b'{"prompts": "p", "completions": []}', "'prompts' must be a list of strings, got a JSON str"),
        (b'{"prompts": ["p"], "completions": [3]}', "item 0 is a JSON int"),
        (b'{"prompts": ["p"], "completions": ["a", "b"]}', "1 prompts for 2 completions"),
    ]:
        answer = client.post("/score", content=body)
        assert answer.status_code == 400 and problem in answer.json()["error"], (body, answer.text)
    nan = TestClient(make_app(lambda p, c: torch.tensor([float("nan")] * len(c)), "nan"))
    answer = nan.post("/score", json={"prompts": ["p"], "completions": ["a"]})
    assert answer.status_code == 500 and "non-finite" in answer.json()["error"]


@pytest.fixture(scope="module")
def reward_dir(tiny_lm, tmp_path_factory):
    """A ppokit reward model (random head, a non-trivial normalisation) saved in the test."""
    from ppokit.rlhf.models.loading import load_tokenizer, new_reward_model

    tokenizer = load_tokenizer(tiny_lm)
    torch.manual_seed(0)
    model = new_reward_model(tiny_lm, "classification", torch.float32, torch.device("cpu"), tokenizer.pad_token_id)
    model.mean, model.std = 0.25, 2.0
    path = tmp_path_factory.mktemp("served") / "rm"
    model.save(path, tokenizer)
    return path


def _start_server(model_dir, *extra):
    """`python -m ppokit rlhf serve-reward MODEL_DIR --port 0`: the process and the URL it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ppokit", "rlhf", "serve-reward", str(model_dir), "--port", "0", "--device", "cpu",
         *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        line = lines.get(timeout=180)
    except queue.Empty:
        _stop(proc, signal.SIGKILL)
        pytest.fail("serve-reward printed no URL within 180 s")
    match = re.search(r"(http://\S+/score)", line)
    if match is None:
        _stop(proc, signal.SIGKILL)
        pytest.fail(f"serve-reward printed {line!r}; stderr: {proc.stderr.read()}")
    return proc, match.group(1)


def _stop(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.fixture(scope="module")
def served(reward_dir):
    proc, url = _start_server(reward_dir)
    try:
        yield url
    finally:
        _stop(proc, signal.SIGKILL)


def test_served_scores_equal_the_reward_model_scorers(served, reward_dir):
    from ppokit.rlhf.rewards.sources import RewardModelScorer

    health = json.loads(urllib.request.urlopen(served.replace("/score", "/health"), timeout=30).read())
    assert health == {"status": "ok", "model": str(reward_dir)}
    prompts = [r["prompt"] for r in helpers.PROMPTS[:6]]
    completions = [" good day", " bad", "", " the cat is good good good", " awful", " nice nice"]
    remote = HTTPReward(served, timeout=60.0, batch_size=64)(prompts, completions)
    local = RewardModelScorer(str(reward_dir), torch.float32, torch.device("cpu"))(prompts, completions)
    assert remote.dtype == local.dtype == torch.float32
    assert torch.equal(remote, local), (remote, local)
    assert remote.std() > 0  # not a constant


def test_the_server_answers_a_bad_body_with_400(served):
    request = urllib.request.Request(served, data=b'{"prompts": ["p"]}', method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code == 400
    assert json.loads(err.value.read()) == {"error": "the body has no 'completions'"}


def test_ppo_trains_against_the_server_and_resumes_once_named_again(served, reward_dir, tiny_lm, tmp_path):
    from ppokit.errors import UntrustedCodeError
    from ppokit.rlhf.ppo.trainer import RLHFTrainer
    from ppokit.rlhf.rewards.sources import RewardModelScorer

    config = RLHFConfig(policy=tiny_lm, rewards=[served], total_updates=2, batch_size=4, num_epochs=1,
                        max_new_tokens=4, progress=False, tensorboard=False, torch_threads=1, device="cpu", seed=0,
                        sample_every=0, checkpoint_minutes=0, reward_batch_size=2, reward_workers=2)
    trainer = RLHFTrainer(config, prompts=helpers.PROMPTS, run_dir=tmp_path / "run")
    summary = trainer.learn()
    assert summary["updates"] == 2 and all(torch.isfinite(torch.tensor(r["score"])) for r in trainer.history)
    prompts, completions, scores = trainer.last_batch
    local = RewardModelScorer(str(reward_dir), torch.float32, torch.device("cpu"))(prompts, completions)
    torch.testing.assert_close(torch.tensor(scores), local, rtol=0, atol=1e-5)
    # A server the saved config names is contacted again only with consent: named again, or trust=True.
    with pytest.raises(UntrustedCodeError, match="reward server"):
        RLHFTrainer.resume(tmp_path / "run", prompts=helpers.PROMPTS, total_updates=3)
    resumed = RLHFTrainer.resume(tmp_path / "run", prompts=helpers.PROMPTS, rewards=[served], total_updates=3)
    assert resumed.learn()["updates"] == 3


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_reward_stops_cleanly_on_a_signal(reward_dir, sig):
    proc, url = _start_server(reward_dir)
    try:
        assert urllib.request.urlopen(url.replace("/score", "/health"), timeout=30).status == 200
    finally:
        code = _stop(proc, sig)
    stderr = proc.stderr.read()
    assert code == 0, stderr
    assert f"reward server stopped ({sig.name})" in stderr and "Traceback" not in stderr


def _cli_error(capsys, *argv):
    from ppokit.cli.main import main

    code = main(["rlhf", "serve-reward", *map(str, argv)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.startswith("ppokit: error: ") and "\n" not in err, (code, err)
    return err


def test_serve_reward_errors_are_one_line(capsys, tmp_path, reward_dir):
    assert "not a model directory (no config.json)" in _cli_error(capsys, tmp_path, "--port", 0)
    assert "no such directory" in _cli_error(capsys, tmp_path / "missing", "--port", 0)
    (tmp_path / "config.json").write_text("{")
    assert "could not load" in _cli_error(capsys, tmp_path, "--port", 0, "--device", "cpu")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert "is already in use" in _cli_error(capsys, reward_dir, "--port", port, "--device", "cpu")
    assert "a port is a number from 0 to 65535" in _cli_error(capsys, reward_dir, "--port", 70000)
    for flag in ("--max-body-bytes", "--max-texts", "--max-text-chars", "--max-requests", "--max-connections",
                 "--idle-timeout"):
        assert f"{flag} 0: must be positive" in _cli_error(capsys, reward_dir, "--port", 0, flag, 0)
