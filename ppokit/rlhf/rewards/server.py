"""``ppokit rlhf serve-reward``: a reward model behind the HTTP protocol of :mod:`ppokit.rlhf.rewards.remote`.

::

    POST /score    {"prompts": [...], "completions": [...]}   200 {"scores": [...]}   (RewardModelScorer's scores)
                   a body that is not that                    400 {"error": "..."}
                   over a limit (ServerLimits)                413, 408 or 503 {"error": "..."} (503: Retry-After)
    GET  /health                                              200 {"status": "ok", "model": "..."}

Every error answer is one JSON line ``{"error": "..."}``, never a traceback. The app is Starlette's,
served by uvicorn. The model scores one chunk of ``--batch-size`` texts at a time (a lock): a GPU
gains nothing from two forward passes fighting over it, and a fast tokenizer refuses to be used from
two threads at once. Requests take turns chunk by chunk, so a long request does not hold the others
up for its whole length, and between chunks a request whose client has left (or a server that is
stopping) stops scoring. The scoring runs in a worker thread, so ``/health`` answers during a long
request. Why a socket of our own: a taken port is then a one-line error before the model is loaded,
``--port 0`` can pick a free port and still print the URL, and the URL is printed only once the
socket listens (a client that reads it can connect at once).
"""

from __future__ import annotations

import asyncio
import dataclasses
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

#: Seconds requests in flight get to finish after Ctrl-C / SIGTERM; then they stop at their next chunk.
GRACEFUL_SHUTDOWN_S = 5
#: Seconds more before uvicorn cancels a handler still running (a chunk slower than this).
UVICORN_BACKSTOP_S = 10
#: What a 503 asks the client to wait before trying again, in seconds.
RETRY_AFTER_S = 1


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """What one client may ask of the server; each is a ``serve-reward`` flag."""

    #: ``--max-body-bytes``: the largest request body (413 beyond).
    max_body_bytes: int = 16 * 2**20
    #: ``--max-texts``: completions in one request (413 beyond).
    max_texts: int = 1024
    #: ``--max-text-chars``: characters in one prompt or completion (413 beyond; within it, the tokens
    #: past the model's positions are cut off, as in training).
    max_text_chars: int = 100_000
    #: ``--max-requests``: requests in flight (reading, waiting or scoring); 503 beyond.
    max_requests: int = 64
    #: ``--max-connections``: open connections; 503 (then closed) beyond.
    max_connections: int = 256
    #: ``--idle-timeout``: seconds a connection may take to send a request's headers, and again its
    #: body (408), or sit idle between requests, before it is closed.
    idle_timeout: float = 30.0

    def check(self) -> None:
        for field in dataclasses.fields(self):
            if not getattr(self, field.name) > 0:
                flag = "--" + field.name.replace("_", "-")
                raise ConfigError(f"{flag} {getattr(self, field.name):g}: must be positive")


class Refused(Exception):
    """A request the server answers with ``status`` and the one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_request(body: bytes, limits: ServerLimits | None = None) -> tuple[list[str], list[str]]:
    """``(prompts, completions)`` from a request body, or a :class:`Refused` with the status (400 for a
    body that is not the protocol, 413 for one over a limit) and what is wrong with it."""
    limits = limits or ServerLimits()
    try:
        data: Any = json.loads(body)
    except RecursionError:
        raise Refused(400, "the body is JSON nested too deeply") from None
    except ValueError as err:
        raise Refused(400, f"the body is not JSON ({err})") from None
    if not isinstance(data, dict):
        raise Refused(400, f"the body must be a JSON object {{\"prompts\": [...], \"completions\": [...]}}, "
                      f"got a JSON {type(data).__name__}")
    texts = []
    for key in ("prompts", "completions"):
        if key not in data:
            raise Refused(400, f"the body has no {key!r}")
        value = data[key]
        if not isinstance(value, list):
            raise Refused(400, f"{key!r} must be a list of strings, got a JSON {type(value).__name__}")
        if len(value) > limits.max_texts:
            raise Refused(413, f"{key!r} has {len(value)} texts, more than the server's --max-texts "
                          f"{limits.max_texts}; send them in smaller requests")
        for i, text in enumerate(value):
            if not isinstance(text, str):
                raise Refused(400, f"{key!r} must be a list of strings; item {i} is a JSON {type(text).__name__}")
            if len(text) > limits.max_text_chars:
                raise Refused(413, f"{key!r} item {i} has {len(text)} characters, more than the server's "
                              f"--max-text-chars {limits.max_text_chars}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise Refused(400, f"{key!r} item {i} is not valid Unicode (a lone surrogate)") from None
        texts.append(value)
    prompts, completions = texts
    if len(prompts) != len(completions):
        raise Refused(400, f"{len(prompts)} prompts for {len(completions)} completions; give one prompt per completion")
    return prompts, completions


class _Cancelled(Exception):
    """The request's client left, or the server is stopping: its remaining chunks are not scored."""


def _say(line: str) -> None:
    print(f"ppokit: reward server: {line}", file=sys.stderr, flush=True)


def make_app(score: Callable[[list[str], list[str]], Any], name: str, *, limits: ServerLimits | None = None,
             batch_size: int = 64, stopping: threading.Event | None = None) -> Any:
    """The Starlette app serving ``score(prompts, completions) -> Tensor[B]`` (a reward source), in
    chunks of ``batch_size`` texts; once ``stopping`` is set, requests stop at their next chunk."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    limits = limits or ServerLimits()
    stopping = stopping or threading.Event()
    lock = threading.Lock()
    in_flight = [0]

    def error(status: int, message: str) -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def score_chunks(prompts: list[str], completions: list[str], cancel: threading.Event) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(completions), batch_size):
            if cancel.is_set() or stopping.is_set():
                raise _Cancelled(f"{start} of {len(completions)}")
            with lock:
                part = score(prompts[start:start + batch_size], completions[start:start + batch_size])
            scores += [float(v) for v in part.tolist()]
        return scores

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise Refused(413, f"the body has {declared} bytes, more than the server's --max-body-bytes "
                          f"{limits.max_body_bytes}")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(limits.idle_timeout):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limits.max_body_bytes:
                        raise Refused(413, f"the body is over the server's --max-body-bytes {limits.max_body_bytes}")
                    chunks.append(chunk)
        except TimeoutError:
            raise Refused(408, f"the body did not arrive within the server's --idle-timeout {limits.idle_timeout:g} s") \
                from None
        return b"".join(chunks)

    async def score_route(request: Request) -> Response:
        if in_flight[0] >= limits.max_requests:
            return error(503, f"busy: {in_flight[0]} requests in flight (--max-requests {limits.max_requests}); "
                         f"retry after {RETRY_AFTER_S} s")
        in_flight[0] += 1
        try:
            return await answer(request)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody reads it
        finally:
            in_flight[0] -= 1

    async def answer(request: Request) -> Response:
        try:
            prompts, completions = parse_request(await read_body(request), limits)
        except Refused as refused:
            return error(refused.status, str(refused))
        if not completions:
            return JSONResponse({"scores": []})
        cancel = threading.Event()
        work = asyncio.ensure_future(run_in_threadpool(score_chunks, prompts, completions, cancel))
        try:
            # Watch the client while the chunks are scored: one that has left cancels the rest.
            while not work.done():
                await asyncio.wait({work}, timeout=0.2)
                if not work.done() and await request.is_disconnected():
                    cancel.set()
            scores = work.result()
        except _Cancelled as where:
            why = "the server is stopping" if stopping.is_set() else "its client left"
            _say(f"a request of {len(completions)} texts stopped after {where} texts: {why}")
            return error(503, f"cancelled after {where} texts: {why}")
        except Exception as err:  # noqa: BLE001 - one bad request must not stop the server
            first = (str(err).strip().splitlines() or [""])[0]
            _say(f"scoring failed: {type(err).__name__}: {first}")
            return error(500, f"scoring failed: {type(err).__name__}: {first}")
        finally:
            cancel.set()  # also when this handler itself is cancelled (a forced shutdown)
        bad = next((i for i, v in enumerate(scores) if not math.isfinite(v)), None)
        if bad is not None:
            return error(500, f"the model gave completion {bad} a non-finite score ({scores[bad]})")
        return JSONResponse({"scores": scores})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": name})

    async def http_error(request: Request, exc: Exception) -> Response:
        # Starlette's own answers (404, 405) as one JSON line too.
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        return error(status, f"{request.method} {request.url.path}: {getattr(exc, 'detail', type(exc).__name__)}")

    return Starlette(routes=[Route("/score", score_route, methods=["POST"]), Route("/health", health, methods=["GET"])],
                     exception_handlers={HTTPException: http_error})


def _protocol(limits: ServerLimits) -> type:
    """uvicorn's h11 protocol with two limits uvicorn lacks: connections beyond ``max_connections`` get
    a 503 line and are closed, and a connection that sends no request (or no complete headers) within
    ``idle_timeout`` is closed."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    busy = json.dumps({"error": f"busy: more than --max-connections {limits.max_connections} connections; "
                                f"retry after {RETRY_AFTER_S} s"}).encode()
    refusal = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: "
               + str(RETRY_AFTER_S).encode() + b"\r\nconnection: close\r\ncontent-length: "
               + str(len(busy)).encode() + b"\r\n\r\n" + busy)

    class Protocol(H11Protocol):
        idle: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                transport.write(refusal)
                transport.close()
                return
            self._arm()

        def _arm(self) -> None:
            if self.idle is not None:
                self.idle.cancel()
            self.idle = self.loop.call_later(limits.idle_timeout, self._idle_check, self.cycle)

        def _idle_check(self, cycle: Any) -> None:
            if self.cycle is cycle and not self.transport.is_closing():  # no request began since _arm
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def send_400_response(self, msg: str) -> None:
            # A request HTTP itself cannot parse: uvicorn answers in plain text; this server in JSON.
            import h11

            body = json.dumps({"error": f"not an HTTP request this server can read ({msg.rstrip('.')})"}).encode()
            headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                       (b"content-length", str(len(body)).encode())]
            try:
                for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                              h11.Data(data=body), h11.EndOfMessage()):
                    self.transport.write(self.conn.send(event))
            except h11.LocalProtocolError:  # h11 is past the point of answering: just close
                pass
            self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.idle is not None:
                self.idle.cancel()
            super().connection_lost(exc)

    return Protocol


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
                 batch_size: int = 64, trust_remote_code: bool = False, limits: ServerLimits | None = None) -> int:
    """Serve the reward model ``model_dir`` at ``http://host:port/score`` until Ctrl-C or SIGTERM; 0 then.

    After the signal, requests in flight get :data:`GRACEFUL_SHUTDOWN_S` seconds to finish, then stop
    at their next chunk: the process is gone within that plus one chunk's scoring."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"`ppokit rlhf serve-reward` needs uvicorn and starlette ({err}): "
                          "pip install 'ppokit[rlhf]'") from None
    from ppokit.rlhf.models.loading import quiet_transformers
    from ppokit.rlhf.rewards.sources import RewardModelScorer
    from ppokit.runtime import resolve_device, resolve_dtype

    limits = limits or ServerLimits()
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1")
    limits.check()
    path = Path(model_dir).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise ConfigError(f"{model_dir}: not a model directory (no config.json); give the model/ directory of a "
                          "`ppokit rlhf reward` run or a sequence-classification model with one label")
    if not path.exists() and model_dir.startswith(("/", ".", "~")):
        raise ConfigError(f"{model_dir}: no such directory")
    torch_device = resolve_device(device, "--device")
    torch_dtype = resolve_dtype(dtype, torch_device)
    sock = listening_socket(host, port)  # before the model loads: a taken port fails at once
    stopping = threading.Event()
    try:
        quiet_transformers()
        scorer = RewardModelScorer(model_dir, torch_dtype, torch_device, trust_remote_code, batch_size)
        app = make_app(scorer, model_dir, limits=limits, batch_size=batch_size, stopping=stopping)
        sock.listen(2048)
        print(f"ppokit: serving reward model {model_dir} at {url_of(sock)} (GET /health; Ctrl-C stops)", flush=True)
        stopped_by = run_until_stopped(app, [sock], limits, stopping)
    finally:
        stopping.set()  # scoring still under way stops at its next chunk
        sock.close()
    print(f"ppokit: reward server stopped{f' ({stopped_by})' if stopped_by else ''}", file=sys.stderr, flush=True)
    return 0


def run_until_stopped(app: Any, sockets: Sequence[socket.socket], limits: ServerLimits | None = None,
                      stopping: threading.Event | None = None) -> str | None:
    """Run uvicorn on ``sockets`` until SIGINT or SIGTERM; the name of the signal that stopped it.

    uvicorn shuts down gracefully on either signal: requests in flight get GRACEFUL_SHUTDOWN_S
    seconds, then ``stopping`` is set (the app's requests stop at their next chunk). uvicorn then
    raises the signal again for the handler it found installed, so that the default action
    (KeyboardInterrupt, death by SIGTERM) follows. The handler installed here only notes it: the
    server has stopped cleanly and the command exits 0.
    """
    import uvicorn

    limits = limits or ServerLimits()

    stop_at_grace = stopping or threading.Event()

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if not self.should_exit:
                print(f"ppokit: reward server stopping ({signal.Signals(sig).name}): requests in flight get "
                      f"{GRACEFUL_SHUTDOWN_S} s", file=sys.stderr, flush=True)
                # Then scoring stops at its next chunk and each request answers 503, before uvicorn
                # would cancel the handlers (with a traceback each).
                timer = threading.Timer(GRACEFUL_SHUTDOWN_S, stop_at_grace.set)
                timer.daemon = True
                timer.start()
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                   http=_protocol(limits), timeout_keep_alive=max(1, round(limits.idle_timeout)),
                                   timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S + UVICORN_BACKSTOP_S))
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
