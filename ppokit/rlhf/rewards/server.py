"""``ppokit rlhf serve-reward``: a reward model behind the HTTP protocol of :mod:`ppokit.rlhf.rewards.remote`.

::

    POST /score    {"prompts": [...], "completions": [...]}   200 {"scores": [...]}   (RewardModelScorer's scores)
                   a body that is not that                    400 {"error": "..."}
    GET  /health                                              200 {"status": "ok", "model": "..."}

The app is Starlette's, served by uvicorn. The model scores one request at a time (a lock): a GPU
gains nothing from two forward passes fighting over it, and a fast tokenizer refuses to be used
from two threads at once. The scoring runs in a worker thread, so ``/health`` answers during a long
request. Why a socket of our own: a taken port is then a one-line error before the model is loaded,
``--port 0`` can pick a free port and still print the URL, and the URL is printed only once the
socket listens (a client that reads it can connect at once).
"""

from __future__ import annotations

import errno
import json
import math
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from ppokit.errors import ConfigError

#: Seconds requests in flight get to finish after Ctrl-C / SIGTERM before the server closes them.
GRACEFUL_SHUTDOWN_S = 10


def parse_request(body: bytes) -> tuple[list[str], list[str]]:
    """``(prompts, completions)`` from a request body, or a ValueError saying what is wrong with it."""
    try:
        data: Any = json.loads(body)
    except ValueError as err:
        raise ValueError(f"the body is not JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"the body must be a JSON object {{\"prompts\": [...], \"completions\": [...]}}, "
                         f"got a JSON {type(data).__name__}")
    texts = []
    for key in ("prompts", "completions"):
        if key not in data:
            raise ValueError(f"the body has no {key!r}")
        value = data[key]
        if not isinstance(value, list):
            raise ValueError(f"{key!r} must be a list of strings, got a JSON {type(value).__name__}")
        bad = next((i for i, text in enumerate(value) if not isinstance(text, str)), None)
        if bad is not None:
            raise ValueError(f"{key!r} must be a list of strings; item {bad} is a JSON {type(value[bad]).__name__}")
        texts.append(value)
    prompts, completions = texts
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions; give one prompt per completion")
    return prompts, completions


def make_app(score: Callable[[list[str], list[str]], Any], name: str) -> Any:
    """The Starlette app serving ``score(prompts, completions) -> Tensor[B]`` (a reward source)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    lock = threading.Lock()

    def score_locked(prompts: list[str], completions: list[str]) -> list[float]:
        with lock:
            return [float(v) for v in score(prompts, completions).tolist()]

    async def score_route(request: Request) -> JSONResponse:
        try:
            prompts, completions = parse_request(await request.body())
        except ValueError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        if not completions:
            return JSONResponse({"scores": []})
        try:
            scores = await run_in_threadpool(score_locked, prompts, completions)
        except Exception as err:  # noqa: BLE001 - one bad request must not stop the server
            first = (str(err).strip().splitlines() or [""])[0]
            print(f"ppokit: reward server: scoring failed: {type(err).__name__}: {first}", file=sys.stderr)
            return JSONResponse({"error": f"scoring failed: {type(err).__name__}: {first}"}, status_code=500)
        bad = next((i for i, v in enumerate(scores) if not math.isfinite(v)), None)
        if bad is not None:
            return JSONResponse({"error": f"the model gave completion {bad} a non-finite score ({scores[bad]})"},
                                status_code=500)
        return JSONResponse({"scores": scores})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": name})

    return Starlette(routes=[Route("/score", score_route, methods=["POST"]), Route("/health", health, methods=["GET"])])


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (port 0: a free one), or a one-line ConfigError."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: a port is a number from 0 to 65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as err:
        raise ConfigError(f"--host {host!r}: not an address of this machine ({err.strerror})") from None
    sock = socket.socket(family, kind, proto)
    # As uvicorn does: a port left in TIME_WAIT by a stopped server can be used again at once (a port a
    # server is listening on still cannot).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ConfigError(f"--port {port}: {host}:{port} is already in use (another server?); pick another port, "
                              "or --port 0 for a free one") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/score"


def serve_reward(model_dir: str, *, port: int, host: str = "127.0.0.1", device: str = "auto", dtype: str = "auto",
                 batch_size: int = 64, trust_remote_code: bool = False) -> int:
    """Serve the reward model ``model_dir`` at ``http://host:port/score`` until Ctrl-C or SIGTERM; 0 then."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"`ppokit rlhf serve-reward` needs uvicorn and starlette ({err}): "
                          "pip install 'ppokit[rlhf]'") from None
    from ppokit.rlhf.models.loading import quiet_transformers
    from ppokit.rlhf.rewards.sources import RewardModelScorer
    from ppokit.runtime import resolve_device, resolve_dtype

    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1")
    path = Path(model_dir).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise ConfigError(f"{model_dir}: not a model directory (no config.json); give the model/ directory of a "
                          "`ppokit rlhf reward` run or a sequence-classification model with one label")
    if not path.exists() and model_dir.startswith(("/", ".", "~")):
        raise ConfigError(f"{model_dir}: no such directory")
    torch_device = resolve_device(device, "--device")
    torch_dtype = resolve_dtype(dtype, torch_device)
    sock = listening_socket(host, port)  # before the model loads: a taken port fails at once
    try:
        quiet_transformers()
        scorer = RewardModelScorer(model_dir, torch_dtype, torch_device, trust_remote_code, batch_size)
        app = make_app(scorer, model_dir)
        sock.listen(2048)
        print(f"ppokit: serving reward model {model_dir} at {url_of(sock)} (GET /health; Ctrl-C stops)", flush=True)
        stopped_by = run_until_stopped(app, [sock])
    finally:
        sock.close()
    print(f"ppokit: reward server stopped{f' ({stopped_by})' if stopped_by else ''}", file=sys.stderr, flush=True)
    return 0


def run_until_stopped(app: Any, sockets: Sequence[socket.socket]) -> str | None:
    """Run uvicorn on ``sockets`` until SIGINT or SIGTERM; the name of the signal that stopped it.

    uvicorn shuts down gracefully on either signal, then raises it again for the handler it found
    installed, so that the default action (KeyboardInterrupt, death by SIGTERM) follows. The handler
    installed here only notes it: the server has stopped cleanly and the command exits 0.
    """
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                           timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S))
    received: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        server.should_exit = True  # also when it comes before uvicorn has installed its own handlers

    handled = (signal.SIGINT, signal.SIGTERM)
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, note) for sig in handled} if main else {}
    try:
        server.run(sockets=list(sockets))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return signal.Signals(received[0]).name if received else None
