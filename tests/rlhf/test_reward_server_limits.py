"""`ppokit rlhf serve-reward` under a bounded local load (issue 30, classes 3 and 5): each limit answers
in one JSON line, a request whose client left is cancelled and the others go on, SIGTERM exits
within its stated time. The server runs as a subprocess on loopback; every wait has a timeout.

Measured without the fix (the server before issue 30, started with only ``--batch-size 4`` since it
had none of the limit flags): all 19 tests fail, the 14 limit cases among them (plain-text or 500
answers, server tracebacks, no limit at all), the abandoned request held the model, and SIGTERM
waited for the whole request."""

import http.client
import json
import signal
import socket
import time
from urllib.parse import urlsplit

import pytest

from ppokit.rlhf.rewards.server import GRACEFUL_SHUTDOWN_S
from tests.rlhf.test_reward_sources import _start_server, _stop, reward_dir  # noqa: F401 - a fixture

IDLE_S = 2.0
LIMITS = ["--batch-size", "4", "--max-texts", "60000", "--max-text-chars", "3000", "--max-body-bytes", "4000000",
          "--max-requests", "3", "--max-connections", "12", "--idle-timeout", str(IDLE_S)]
#: Texts in a request that takes the tiny model many seconds to score in chunks of 4.
LONG = 40_000


@pytest.fixture(scope="module")
def server(reward_dir):  # noqa: F811 - the imported fixture
    proc, url = _start_server(reward_dir, *LIMITS)
    parts = urlsplit(url)
    try:
        yield proc, parts.hostname, parts.port
    finally:
        _stop(proc, signal.SIGKILL)


def _body(n: int, text: str = "a b") -> bytes:
    return json.dumps({"prompts": ["p"] * n, "completions": [text] * n}).encode()


def _post(host, port, body: bytes, path="/score", headers=None, timeout=30.0, chunked=False):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", path, body=iter([body]) if chunked else body, encode_chunked=chunked,
                     headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _raw(host, port, data: bytes, wait: float = 0.0) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=30)
    if data:
        sock.sendall(data)
    time.sleep(wait)
    return sock


def _read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except TimeoutError:
        pass
    return b"".join(chunks)


def _hold_long_requests(host, port, count):
    """``count`` sockets, each with a long request in flight (sent whole, answer not read)."""
    body = _body(LONG)
    head = f"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return [_raw(host, port, head.encode() + body) for _ in range(count)]


def _too_many_requests(host, port):
    held = _hold_long_requests(host, port, 3)
    try:
        time.sleep(1.0)
        return _post(host, port, _body(1))
    finally:
        for sock in held:
            sock.close()


def _too_many_connections(host, port):
    idle = [_raw(host, port, b"") for _ in range(12)]
    try:
        time.sleep(0.3)
        extra = _raw(host, port, b"")
        answer = _read_all(extra, 5.0)
        extra.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.decode().partition(":") for line in head.split(b"\r\n")[1:])}
        return status, headers, body
    finally:
        for sock in idle:
            sock.close()


def _slow_body(host, port):
    sock = _raw(host, port, b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    answer = _read_all(sock, IDLE_S + 5)
    sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), {}, body


#: (case, what to do, expected status, a phrase of the error)
CASES = [
    ("declared body too large", lambda h, p: _post(h, p, b"{}", headers={"Content-Length": "4000001"}), 413,
     "--max-body-bytes"),
    ("streamed body too large", lambda h, p: _post(h, p, b"[" + b" " * 4_000_001 + b"]", chunked=True), 413,
     "--max-body-bytes"),
    ("not HTTP", lambda h, p: _post(h, p, b"{}", headers={"Content-Length": "x"}), 400, "not an HTTP request"),
    ("too many texts", lambda h, p: _post(h, p, _body(60_001, "")), 413, "--max-texts 60000"),
    ("text too long", lambda h, p: _post(h, p, _body(1, "x" * 3001)), 413, "--max-text-chars 3000"),
    ("not JSON", lambda h, p: _post(h, p, b"{nope"), 400, "not JSON"),
    ("deeply nested", lambda h, p: _post(h, p, b"[" * 200_000 + b"]" * 200_000), 400, "nested too deeply"),
    ("nested in a field", lambda h, p: _post(h, p, b'{"prompts": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"), 400,
     "nested too deeply"),
    ("lone surrogate", lambda h, p: _post(h, p, b'{"prompts": ["\\ud800"], "completions": ["a"]}'), 400,
     "lone surrogate"),
    ("unknown path", lambda h, p: _post(h, p, b"{}", path="/nowhere"), 404, "/nowhere"),
    ("wrong method", lambda h, p: _post(h, p, b"{}", path="/health"), 405, "/health"),
    ("requests in flight", _too_many_requests, 503, "--max-requests 3"),
    ("connections", _too_many_connections, 503, "--max-connections 12"),
    ("body slower than the idle timeout", _slow_body, 408, "--idle-timeout"),
]


@pytest.mark.parametrize("case, act, status, phrase", CASES, ids=[c[0] for c in CASES])
def test_each_limit_answers_in_one_json_line(server, case, act, status, phrase):
    proc, host, port = server
    started = time.monotonic()
    got, headers, body = act(host, port)
    assert time.monotonic() - started < 20
    assert got == status, (case, got, body[:200])
    text = body.decode()
    assert "\n" not in text.strip() and list(json.loads(text)) == ["error"], text
    assert phrase in json.loads(text)["error"]
    if status == 503:
        assert {k.lower(): v for k, v in headers.items()}.get("retry-after") == "1"
    assert proc.poll() is None


def test_texts_longer_than_the_model_are_cut_off_not_a_500(server):
    _, host, port = server
    status, _, body = _post(host, port, _body(2, "word " * 590))  # past the tiny model's positions
    assert status == 200 and len(json.loads(body)["scores"]) == 2


def test_an_idle_connection_is_closed_after_the_idle_timeout(server):
    _, host, port = server
    sock = _raw(host, port, b"POST /score HTTP/1.1\r\n")  # headers begun, never finished
    started = time.monotonic()
    assert _read_all(sock, IDLE_S + 5) == b""  # closed without an answer
    assert time.monotonic() - started < IDLE_S + 2
    sock.close()


def test_an_abandoned_request_is_cancelled_and_the_next_one_answers(server):
    proc, host, port = server
    (held,) = _hold_long_requests(host, port, 1)
    time.sleep(1.0)
    held.close()  # the client leaves
    started = time.monotonic()
    status, _, body = _post(host, port, _body(3), timeout=15)
    assert status == 200 and len(json.loads(body)["scores"]) == 3
    assert time.monotonic() - started < 5, "the abandoned request still held the model"


def test_sigterm_stops_within_the_graceful_time_and_one_chunk(reward_dir):  # noqa: F811
    proc, url = _start_server(reward_dir, *LIMITS)
    parts = urlsplit(url)
    try:
        held = _hold_long_requests(parts.hostname, parts.port, 2)
        time.sleep(1.0)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(GRACEFUL_SHUTDOWN_S + 10)
        elapsed = time.monotonic() - started
        answers = [_read_all(sock, 2) for sock in held]
    finally:
        code = _stop(proc, signal.SIGKILL)
    stderr = proc.stderr.read()
    assert code == 0 and elapsed < GRACEFUL_SHUTDOWN_S + 3, (elapsed, stderr)
    assert "reward server stopping (SIGTERM)" in stderr and "reward server stopped (SIGTERM)" in stderr
    assert "Traceback" not in stderr, stderr
    assert stderr.index("stopping") < stderr.index("stopped after") < stderr.index("server stopped")
    for answer in answers:  # each held request was told why, in one JSON line
        assert answer.startswith(b"HTTP/1.1 503") and b'"error":"cancelled after' in answer, answer[:300]


def test_the_server_log_has_no_traceback(server):
    """Last: everything above (disconnects, refusals, cancellations) left no traceback behind."""
    proc, _, _ = server
    proc.send_signal(signal.SIGTERM)
    proc.wait(GRACEFUL_SHUTDOWN_S + 10)
    stderr = proc.stderr.read()
    assert "Traceback" not in stderr and "Exception" not in stderr, stderr
    assert "its client left" in stderr
