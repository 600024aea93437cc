"""A reward source that is an HTTP endpoint: ppokit posts the texts, the server answers the scores.

The protocol, one request per batch of at most ``reward_batch_size`` completions::

    POST <url>    {"prompts": ["...", ...], "completions": ["...", ...]}    (Content-Type: application/json)
    200 OK        {"scores": [0.3, -1.2, ...]}                              one real number per completion, in order

``ppokit rlhf serve-reward`` (:mod:`ppokit.rlhf.rewards.server`) serves a reward model this way; any
other server that speaks it (an LLM judge, a sandbox that runs code) works the same.

Failures that may pass (the connection, a timeout, an HTTP 5xx) are retried ``reward_retries`` times
with exponential backoff; an HTTP 4xx (the request is wrong, so sending it again cannot help) and an
answer that is not the protocol's stop the run at once with a :class:`~ppokit.errors.TrainingError`
naming the URL and what was wrong. Only the standard library is used (``urllib``), so the client
needs nothing the rest of ppokit does not.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import torch
from torch import Tensor

from ppokit.errors import ConfigError, TrainingError

log = logging.getLogger("ppokit")

#: The longest wait between two attempts, whatever the backoff has grown to.
MAX_BACKOFF_S = 30.0


def is_url(spec: object) -> bool:
    """Whether a reward spec names an HTTP(S) endpoint rather than a directory or a ``module:function``."""
    return isinstance(spec, str) and spec.lower().startswith(("http://", "https://"))


def _first_line(text: str, limit: int = 200) -> str:
    lines = text.strip().splitlines()
    line = lines[0].strip() if lines else ""
    return line if len(line) <= limit else line[:limit] + "..."


class _Retryable(Exception):
    """A failure worth another attempt: the connection, a timeout, an HTTP 5xx."""


class HTTPReward:
    """Scores from the reward server at ``url`` (the protocol above).

    A call splits the completions into requests of ``batch_size``, sends up to ``workers`` of them at
    once (threads), and gives each ``timeout`` seconds (the socket's: no byte for that long fails the
    attempt) and ``retries`` more attempts after ``backoff``, ``2·backoff``, ``4·backoff``… seconds.
    """

    def __init__(self, url: str, *, timeout: float = 60.0, retries: int = 3, batch_size: int = 64,
                 workers: int = 1, backoff: float = 0.5) -> None:
        parts = urlsplit(url)
        try:
            _ = parts.port  # parsing it is the check: a port that is not a number raises
        except ValueError as err:
            raise ConfigError(f"reward {url!r}: not a usable URL ({err})") from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"reward {url!r}: not a usable URL (expected http://host[:port]/path or https://...)")
        if timeout <= 0 or retries < 0 or batch_size < 1 or workers < 1 or backoff < 0:
            raise ConfigError(f"reward {url!r}: timeout must be positive, retries and backoff non-negative, "
                              f"batch_size and workers at least 1 (got {timeout}, {retries}, {backoff}, "
                              f"{batch_size}, {workers})")
        self.name = self.url = url
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.batch_size = int(batch_size)
        self.workers = int(workers)
        self.backoff = float(backoff)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise TrainingError(f"reward server {self.url}: {len(prompts)} prompts for {len(completions)} completions")
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
        body = json.dumps({"prompts": prompts, "completions": completions}).encode("utf-8")
        attempts = self.retries + 1
        for attempt in range(attempts):
            try:
                answer = self._post(body)
            except _Retryable as failure:
                if attempt + 1 == attempts:
                    raise TrainingError(
                        f"reward server {self.url}: {failure} (gave up after {attempts} attempt"
                        f"{'s' if attempts > 1 else ''}; reward_retries = {self.retries}, reward_timeout = "
                        f"{self.timeout:g} s)") from None
                wait = min(self.backoff * 2 ** attempt, MAX_BACKOFF_S)
                log.warning("reward server %s: %s; retrying in %.2g s (attempt %d of %d)", self.url, failure, wait,
                            attempt + 2, attempts)
                time.sleep(wait)
            else:
                return self._scores(answer, len(completions))
        raise AssertionError("unreachable")  # the loop returns or raises

    def _post(self, body: bytes) -> bytes:
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Accept": "application/json", "User-Agent": "ppokit"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data: bytes = response.read()
                return data
        except urllib.error.HTTPError as err:
            text = _first_line(err.read().decode("utf-8", "replace")) if err.fp is not None else ""
            what = f"HTTP {err.code} {err.reason}" + (f": {text}" if text else "")
            if err.code >= 500:
                raise _Retryable(f"answered {what}") from None
            # 4xx: the request itself is wrong (or refused); the same request would fail the same way.
            raise TrainingError(f"reward server {self.url}: answered {what}") from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, TimeoutError):
                raise _Retryable(f"no answer within reward_timeout = {self.timeout:g} s") from None
            raise _Retryable(f"could not connect ({err.reason})") from None
        except TimeoutError:
            raise _Retryable(f"no answer within reward_timeout = {self.timeout:g} s") from None
        except (http.client.HTTPException, OSError) as err:
            raise _Retryable(f"the connection failed ({type(err).__name__}: {err})") from None

    def _scores(self, answer: bytes, count: int) -> list[float]:
        """The scores in a 200 answer, or a TrainingError saying how it breaks the protocol."""
        def bad(what: str) -> TrainingError:
            return TrainingError(f"reward server {self.url}: {what}; expected {{\"scores\": [one number per "
                                 f"completion]}} for {count} completion{'s' if count != 1 else ''}")

        try:
            data: Any = json.loads(answer)
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
            raise bad(f"answered {len(scores)} scores")
        for i, value in enumerate(scores):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad(f"score {i} is {json.dumps(value)[:40]}, not a number")
            if not math.isfinite(value):
                raise bad(f"score {i} is not finite ({value})")
        return [float(v) for v in scores]


def _results_in_order(futures: list[Future[list[float]]]) -> list[list[float]]:
    """Each future's result, in order; at the first failure, the requests not yet sent are dropped."""
    try:
        return [future.result() for future in futures]
    except BaseException:
        for future in futures:
            future.cancel()
        raise
