"""A reward source that is an HTTP endpoint: ppokit posts the texts, the server answers the scores.

The protocol, one request per batch of at most ``reward_batch_size`` completions::

    POST <url>    {"prompts": ["...", ...], "completions": ["...", ...]}    (Content-Type: application/json)
    200 OK        {"scores": [0.3, -1.2, ...]}                              one real number per completion, in order

``ppokit rlhf serve-reward`` (:mod:`ppokit.rlhf.rewards.server`) serves a reward model this way; any
other server that speaks it (an LLM judge, a sandbox that runs code) works the same.

Failures that may pass (the connection, a timeout, an HTTP 5xx) are retried ``reward_retries`` times
with exponential backoff; an HTTP 4xx (the request is wrong, so sending it again cannot help), a
redirect (3xx: never followed, since a redirected POST may come back as a bodiless GET) and an
answer that is not the protocol's stop the run at once with a :class:`~ppokit.errors.TrainingError`
naming the URL (its credentials hidden, :func:`ppokit.urls.redact_url`) and what was wrong.

``reward_timeout`` is a **deadline per attempt**: connecting, sending, the headers and the whole
body must be done within it (a server that drips one byte a second fails at the deadline, not at
the first silent second). The longest a request can take, all attempts and backoffs together, is
``(retries + 1) · timeout + Σ min(backoff · 2^i, 30 s)``; the final error states it. Only the
standard library is used (``urllib``, which honours the usual proxy variables), so the client needs
nothing the rest of ppokit does not.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import torch
from torch import Tensor

from ppokit.errors import ConfigError, TrainingError
from ppokit.urls import redact_text, redact_url, url_scheme

log = logging.getLogger("ppokit")

#: The longest wait between two attempts, whatever the backoff has grown to.
MAX_BACKOFF_S = 30.0
#: The largest magnitude a score may have: scores become float32 tensors.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def is_url(spec: object) -> bool:
    """Whether a reward spec names an HTTP(S) endpoint rather than a directory or a ``module:function``."""
    return isinstance(spec, str) and spec.lower().startswith(("http://", "https://"))


def check_reward_url(spec: object, where: str = "reward") -> None:
    """Refuse a URL-looking reward spec whose scheme ppokit cannot call (``ftp://``, ``file://``...)
    in one line, rather than reading it as a directory or a ``module:function``."""
    scheme = url_scheme(spec)
    if scheme is not None and scheme not in ("http", "https"):
        raise ConfigError(f"{where} {redact_url(str(spec))!r}: unsupported URL scheme {scheme!r}; a reward server is "
                          "http://host[:port]/path or https://...")


def _first_line(text: str, limit: int = 200) -> str:
    lines = text.strip().splitlines()
    line = lines[0].strip() if lines else ""
    return line if len(line) <= limit else line[:limit] + "..."


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class _Retryable(Exception):
    """A failure worth another attempt: the connection, a timeout, an HTTP 5xx."""


class _Deadline:
    """One attempt's deadline: when it passes, the attempt's connections are shut down, so a read
    blocked on a silent or dripping server returns at once (a socket timeout alone is per read)."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._connections: list[http.client.HTTPConnection] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return max(self.end - time.monotonic(), 0.001)

    def watch(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._connections.append(connection)
            expired = self.expired
        if expired:
            _shut(connection)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            connections = list(self._connections)
        for connection in connections:
            _shut(connection)

    def cancel(self) -> None:
        self._timer.cancel()


def _shut(connection: http.client.HTTPConnection) -> None:
    sock = connection.sock
    if sock is not None:
        try:
            sock.shutdown(2)  # SHUT_RDWR: a blocked recv returns, the peer sees the close
        except OSError:
            pass


def _watched(base: type[http.client.HTTPConnection], deadline: _Deadline) -> Any:
    """``base`` whose connections connect within the deadline's remaining time and are watched by it."""
    class Watched(base):  # type: ignore[valid-type, misc]
        def connect(self) -> None:
            current: Any = getattr(self, "timeout", None)
            setattr(self, "timeout", min(current, deadline.remaining()) if isinstance(current, (int, float))  # noqa: B010
                    else deadline.remaining())
            super().connect()
            deadline.watch(self)

    return Watched


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: Any) -> Any:
        return self.do_open(_watched(http.client.HTTPConnection, self.deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req: Any) -> Any:
        context = getattr(self, "_context", None)
        return self.do_open(_watched(http.client.HTTPSConnection, self.deadline), req, context=context)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Every 3xx comes back as an HTTPError: urllib would turn a 302/303 into a bodiless GET."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class HTTPReward:
    """Scores from the reward server at ``url`` (the protocol above).

    A call splits the completions into requests of ``batch_size``, sends up to ``workers`` of them at
    once (threads), and gives each attempt ``timeout`` seconds in all (a deadline: connect, send,
    headers and body) and ``retries`` more attempts after ``backoff``, ``2·backoff``, ``4·backoff``…
    seconds (each at most 30 s). :attr:`name` is the URL with its credentials hidden; it is what
    messages show.
    """

    def __init__(self, url: str, *, timeout: float = 60.0, retries: int = 3, batch_size: int = 64,
                 workers: int = 1, backoff: float = 0.5) -> None:
        shown = redact_url(url)
        check_reward_url(url)
        parts = urlsplit(url)
        try:
            _ = parts.port  # parsing it is the check: a port that is not a number raises
        except ValueError as err:
            raise ConfigError(f"reward {shown!r}: not a usable URL ({redact_text(str(err))})") from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"reward {shown!r}: not a usable URL (expected http://host[:port]/path or https://...)")
        if timeout <= 0 or retries < 0 or batch_size < 1 or workers < 1 or backoff < 0:
            raise ConfigError(f"reward {shown!r}: timeout must be positive, retries and backoff non-negative, "
                              f"batch_size and workers at least 1 (got {timeout}, {retries}, {backoff}, "
                              f"{batch_size}, {workers})")
        self.url = url
        self.name = shown
        # urllib reads a user:pass@ as part of the host name: send it as HTTP basic auth instead.
        self._target, self._headers = url, {"Content-Type": "application/json", "Accept": "application/json",
                                             "User-Agent": "ppokit"}
        if "@" in parts.netloc:
            userinfo, _, host = parts.netloc.rpartition("@")
            user, _, password = userinfo.partition(":")
            token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode("ascii")
            self._target = urlunsplit(parts._replace(netloc=host))
            self._headers["Authorization"] = f"Basic {token}"
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.batch_size = int(batch_size)
        self.workers = int(workers)
        self.backoff = float(backoff)

    def __repr__(self) -> str:
        return f"HTTPReward({self.name!r})"

    @property
    def longest_s(self) -> float:
        """The longest one request can take, every attempt and backoff included."""
        waits = sum(min(self.backoff * 2 ** i, MAX_BACKOFF_S) for i in range(self.retries))
        return (self.retries + 1) * self.timeout + waits

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise TrainingError(f"reward server {self.name}: {len(prompts)} prompts for {len(completions)} completions")
        starts = range(0, len(completions), self.batch_size)
        batches = [(prompts[s:s + self.batch_size], completions[s:s + self.batch_size]) for s in starts]
        if self.workers == 1 or len(batches) <= 1:
            parts = [self.score_batch(p, c) for p, c in batches]
        else:
            with ThreadPoolExecutor(min(self.workers, len(batches)), thread_name_prefix="ppokit-reward-http") as pool:
                futures = [pool.submit(self.score_batch, p, c) for p, c in batches]
                parts = _results_in_order(futures)
        return torch.tensor([score for part in parts for score in part], dtype=torch.float32)

    def score_batch(self, prompts: list[str], completions: list[str]) -> list[float]:
        """One request (with its retries): the scores of ``completions``, in order."""
        body = json.dumps({"prompts": prompts, "completions": completions}).encode("utf-8", "surrogatepass")
        attempts = self.retries + 1
        started = time.monotonic()
        for attempt in range(attempts):
            try:
                answer = self._post(body)
            except _Retryable as failure:
                if attempt + 1 == attempts:
                    raise TrainingError(
                        f"reward server {self.name}: {failure} (gave up after {_plural(attempts, 'attempt')} in "
                        f"{time.monotonic() - started:.3g} s; reward_retries = {self.retries}, reward_timeout = "
                        f"{self.timeout:g} s per attempt, at most {self.longest_s:.3g} s in all)") from None
                wait = min(self.backoff * 2 ** attempt, MAX_BACKOFF_S)
                log.warning("reward server %s: %s; retrying in %.2g s (attempt %d of %d)", self.name, failure, wait,
                            attempt + 2, attempts)
                time.sleep(wait)
            else:
                return self._scores(answer, len(completions))
        raise AssertionError("unreachable")  # the loop returns or raises

    def _post(self, body: bytes) -> bytes:
        """One attempt: the body of a 200 answer, within ``timeout`` seconds from the start."""
        late = f"no complete answer within reward_timeout = {self.timeout:g} s"
        deadline = _Deadline(self.timeout)
        opener = urllib.request.build_opener(_HTTPHandler(deadline), _HTTPSHandler(deadline), _NoRedirects())
        request = urllib.request.Request(self._target, data=body, method="POST", headers=self._headers)
        try:
            with opener.open(request, timeout=self.timeout) as response:
                data: bytes = response.read()
            if deadline.expired:  # the deadline cut the body short
                raise _Retryable(late)
            return data
        except urllib.error.HTTPError as err:
            if 300 <= err.code < 400:
                where = err.headers.get("Location") if err.headers is not None else None
                raise TrainingError(
                    f"reward server {self.name}: answered HTTP {err.code} redirecting to "
                    f"{redact_url(where) if where else 'no Location'}; ppokit does not follow redirects of a POST "
                    "(the body could be dropped): put the final URL in 'rewards'") from None
            text = ""
            if err.fp is not None and not deadline.expired:
                try:
                    text = _first_line(err.read(4096).decode("utf-8", "replace"))
                except (OSError, http.client.HTTPException):
                    pass
            what = f"HTTP {err.code} {err.reason}" + (f": {redact_text(text)}" if text else "")
            if err.code >= 500:
                raise _Retryable(f"answered {what}") from None
            # 4xx: the request itself is wrong (or refused); the same request would fail the same way.
            raise TrainingError(f"reward server {self.name}: answered {what}") from None
        except _Retryable:
            raise
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
            if deadline.expired or isinstance(err, TimeoutError) or (
                    isinstance(err, urllib.error.URLError) and isinstance(err.reason, TimeoutError)):
                raise _Retryable(late) from None
            if isinstance(err, urllib.error.URLError):
                raise _Retryable(f"could not connect ({redact_text(str(err.reason))})") from None
            raise _Retryable(f"the connection failed ({type(err).__name__}: {redact_text(str(err))})") from None
        finally:
            deadline.cancel()

    def _scores(self, answer: bytes, count: int) -> list[float]:
        """The scores in a 200 answer, or a TrainingError saying how it breaks the protocol."""
        def bad(what: str) -> TrainingError:
            return TrainingError(f"reward server {self.name}: {what}; expected {{\"scores\": [one number per "
                                 f"completion]}} for {_plural(count, 'completion')}")

        try:
            data: Any = json.loads(answer)
        except RecursionError:
            raise bad("answered JSON nested too deeply to read") from None
        except ValueError:
            shown = _first_line(answer.decode("utf-8", "replace"), 80) or "an empty body"
            raise bad(f"answered something that is not JSON ({shown!r})") from None
        if not isinstance(data, dict) or "scores" not in data:
            got = f"an object with keys {sorted(data)[:5]}" if isinstance(data, dict) else f"a JSON {type(data).__name__}"
            raise bad(f"the answer has no 'scores' (got {got})")
        scores = data["scores"]
        if not isinstance(scores, list):
            raise bad(f"'scores' is a {type(scores).__name__}, not a list")
        if len(scores) != count:
            raise bad(f"answered {_plural(len(scores), 'score')}")
        for i, value in enumerate(scores):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                shown = json.dumps(value) if not isinstance(value, (list, dict)) else f"a JSON {type(value).__name__}"
                raise bad(f"score {i} is {shown[:40]}, not a number")
            if isinstance(value, float) and not math.isfinite(value):
                raise bad(f"score {i} is not finite ({value})")
            if abs(value) > FLOAT32_MAX:  # an int compares exactly, however many digits it has
                shown = f"{value:.3g}" if isinstance(value, float) else f"an integer of {len(str(abs(value)))} digits"
                raise bad(f"score {i} is {shown}, beyond float32's range (±{FLOAT32_MAX:.3g})")
        return [float(v) for v in scores]


def _results_in_order(futures: list[Future[list[float]]]) -> list[list[float]]:
    """Each future's result, in order; at the first failure, the requests not yet sent are dropped."""
    try:
        return [future.result() for future in futures]
    except BaseException:
        for future in futures:
            future.cancel()
        raise
