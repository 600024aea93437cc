"""Experiment trackers beside metrics.jsonl and TensorBoard: Weights & Biases and MLflow.

A run with ``trackers: [wandb, mlflow]`` sends each tracker the config (once), every metrics row,
the final evaluation (or summary) and the saved model directory as an artifact. Each tracker reads
its usual environment variables: ``WANDB_PROJECT``, ``WANDB_ENTITY``, ``WANDB_MODE=offline``;
``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``. The tracker's run id is kept in
``RUN_DIR/trackers.json``, so ``ppokit resume`` goes on in the same tracker run.

A tracker that fails while training (a network outage) is logged once and dropped; the run goes
on, since metrics.jsonl holds everything. Failing to start one stops the run before it trains.

Every MLflow call has a deadline (:func:`mlflow_deadline`): MLflow's own settings
``MLFLOW_HTTP_REQUEST_TIMEOUT`` (per read) and ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` get ppokit's
defaults (:data:`MLFLOW_HTTP_DEFAULTS`) when the environment does not set them, and a call that has
not returned when all its attempts could have run out (a server that accepts and never answers, or
drips its answer) is abandoned: at start, the run stops with one line; while training, the tracker
is dropped with one warning. Config values that hold URLs reach the trackers with their credentials
hidden (:func:`ppokit.urls.redact_values`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from ppokit.errors import CheckpointError, ConfigError
from ppokit.urls import redact_text, redact_values

log = logging.getLogger("ppokit")

#: In the run directory: each tracker's run id, so a resumed run continues the same tracker run.
TRACKER_STATE = "trackers.json"
#: The pip extra that installs each tracker's package.
PACKAGES = {"wandb": ("wandb", "ppokit[wandb]"), "mlflow": ("mlflow", "ppokit[mlflow]")}

#: ppokit's values for MLflow's HTTP settings where the environment sets none. MLflow's own (120 s per
#: read, 7 retries with a doubling backoff) kept a run waiting minutes on a server that was down.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}
#: MLflow's defaults for the backoff between attempts (urllib3's: factor · 2^i, plus up to jitter s).
_MLFLOW_BACKOFF = {"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": 2.0, "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": 1.0}
#: The most urllib3 waits between two attempts.
_BACKOFF_MAX_S = 120.0

#: The trackers a config's ``trackers`` field may name.
TrackerName = Literal["wandb", "mlflow"]
Status = Literal["finished", "failed", "killed"]


class Tracker(Protocol):
    """One experiment tracker's run."""

    name: str
    #: The tracker's own id of the run, kept in trackers.json for resume.
    run_id: str

    def log(self, row: Mapping[str, float], step: int) -> None:
        """One metrics row (finite numbers only) at env step / update ``step``."""
        ...

    def summary(self, values: Mapping[str, float]) -> None:
        """The run's final figures (evaluation or summary)."""
        ...

    def artifact(self, directory: Path, name: str) -> None:
        """Upload ``directory`` (a saved model) as an artifact called ``name``."""
        ...

    def close(self, status: Status) -> None:
        """Flush and end the tracker's run with ``status``."""
        ...


def check_trackers(names: Sequence[str]) -> None:
    """Refuse, before a run directory is touched, a tracker whose package is not installed."""
    for name in names:
        module, extra = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"config field 'trackers' names {name!r}, but {module} is not installed: "
                              f"pip install '{extra}'")


def numbers(row: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics row (None, text, booleans and NaN are left out)."""
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def open_trackers(names: Sequence[str], run_dir: Path, config: Mapping[str, Any], resuming: bool) -> list[Tracker]:
    """Start (or, when ``resuming``, reopen) one run per named tracker and record their ids."""
    if not names:
        return []
    check_trackers(names)
    state_file = run_dir / TRACKER_STATE
    ids: dict[str, str] = {}
    if resuming and state_file.exists():
        try:
            loaded = json.loads(state_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{state_file}: unreadable ({err}); delete it to start new tracker runs") from None
        ids = {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(loaded, dict) else {}
    opened: list[Tracker] = []
    try:
        for name in dict.fromkeys(names):  # a name given twice is one tracker
            tracker: Tracker = (WandbTracker if name == "wandb" else MlflowTracker)(run_dir, config, ids.get(name))
            opened.append(tracker)
            ids[name] = tracker.run_id
    except Exception as err:  # noqa: BLE001 - each tracker raises its own kinds for a bad URI, login, server
        for tracker in opened:
            tracker.close("failed")
        first = (redact_text(str(err)).strip().splitlines() or [""])[0]
        raise ConfigError(f"trackers: could not start {name} ({type(err).__name__}: {first})") from None
    from ppokit.io.atomic import atomic_write_json

    atomic_write_json(state_file, ids)
    return opened


class TrackerTimeout(Exception):
    """A tracker call that did not return within its deadline (it is left behind, in a daemon thread)."""


def mlflow_deadline() -> float:
    """Seconds one MLflow call may take: every attempt's timeout and every backoff between them.

    Sets ``MLFLOW_HTTP_REQUEST_TIMEOUT`` and ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` to
    :data:`MLFLOW_HTTP_DEFAULTS` where the environment does not set them (MLflow reads them per request)."""
    for name, value in MLFLOW_HTTP_DEFAULTS.items():
        if not os.environ.get(name):
            os.environ[name] = value
    values: dict[str, float] = {}
    for name, default in [*((n, float(v)) for n, v in MLFLOW_HTTP_DEFAULTS.items()), *_MLFLOW_BACKOFF.items()]:
        text = os.environ.get(name) or str(default)
        try:
            values[name] = float(text)
        except ValueError:
            raise ConfigError(f"environment variable {name}={text!r}: expected a number") from None
        if not values[name] >= 0:
            raise ConfigError(f"environment variable {name}={text!r}: expected a number at least 0")
    timeout, retries = values["MLFLOW_HTTP_REQUEST_TIMEOUT"], int(values["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    factor, jitter = values["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"], values["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"]
    waits = sum(min(factor * 2 ** i, _BACKOFF_MAX_S) + jitter for i in range(retries))
    return timeout * (retries + 1) + waits


def within(seconds: float, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, or a :class:`TrackerTimeout` once ``seconds`` have passed without it
    returning (the call goes on in a daemon thread, which exits with the process)."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = fn(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            result["error"] = err

    thread = threading.Thread(target=run, name=f"ppokit-tracker-{what}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TrackerTimeout(f"{what}: no answer within {seconds:g} s (MLFLOW_HTTP_REQUEST_TIMEOUT × "
                             "(1 + MLFLOW_HTTP_REQUEST_MAX_RETRIES), with backoff)")
    if "error" in result:
        raise result["error"]
    return result.get("value")


class WandbTracker:
    """A Weights & Biases run in ``RUN_DIR/wandb`` (offline with ``WANDB_MODE=offline``)."""

    name = "wandb"

    def __init__(self, run_dir: Path, config: Mapping[str, Any], run_id: str | None) -> None:
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "ppokit", name=run_dir.name, dir=str(run_dir),
            config=redact_values(dict(config)), id=run_id, resume="allow" if run_id else None, reinit="create_new",
            settings=wandb.Settings(quiet=True),
        )
        self.run_id: str = self.run.id
        # Rows are plotted against their own step column, so a resumed run's redone rows land
        # where they belong instead of being dropped as out of order.
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log(self, row: Mapping[str, float], step: int) -> None:
        self.run.log({**row, "step": step})

    def summary(self, values: Mapping[str, float]) -> None:
        self.run.summary.update(dict(values))

    def artifact(self, directory: Path, name: str) -> None:
        import wandb

        artifact = wandb.Artifact(_artifact_name(f"{self.run.name}-{name}"), type="model")
        artifact.add_dir(str(directory))
        self.run.log_artifact(artifact)

    def close(self, status: Status) -> None:
        self.run.finish(exit_code=0 if status == "finished" else 1)


class MlflowTracker:
    """An MLflow run in ``MLFLOW_EXPERIMENT_NAME`` (default "ppokit") at ``MLFLOW_TRACKING_URI``.

    Metrics are sent in batches (at most one request a second while training, and at the end), so
    a remote server does not slow a fast update loop down.
    """

    name = "mlflow"
    #: Seconds between two metric uploads; MLflow's limit on metrics per request.
    FLUSH_S, BATCH_LIMIT = 1.0, 1000
    #: MLflow's limit on a parameter value's length.
    PARAM_CHARS = 6000

    def __init__(self, run_dir: Path, config: Mapping[str, Any], run_id: str | None) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.deadline = mlflow_deadline()
        self.client = MlflowClient()
        if run_id is not None:
            self._call("update_run", run_id, status="RUNNING")
            self.run_id = run_id
        else:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "ppokit"
            experiment = self._call("get_experiment_by_name", name)
            experiment_id = experiment.experiment_id if experiment is not None else self._call("create_experiment", name)
            self.run_id = self._call("create_run", experiment_id, run_name=run_dir.name,
                                     tags={"ppokit.run_dir": str(run_dir.resolve())}).info.run_id
            params = [Param(k, _param_text(v)[: self.PARAM_CHARS]) for k, v in redact_values(dict(config)).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per request
                self._call("log_batch", self.run_id, params=params[i:i + 100])
        self._pending: list[Any] = []
        self._last_flush = time.monotonic()

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``self.client.method(...)`` within the deadline."""
        return within(self.deadline, f"MLflow {method}", getattr(self.client, method), *args, **kwargs)

    def log(self, row: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self._pending += [Metric(_metric_key(k), v, stamp, step) for k, v in row.items()]
        if time.monotonic() - self._last_flush >= self.FLUSH_S:
            self._flush()

    def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.BATCH_LIMIT], self._pending[self.BATCH_LIMIT:]
            self._call("log_batch", self.run_id, metrics=batch)
        self._last_flush = time.monotonic()

    def summary(self, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self._pending += [Metric(_metric_key(k), v, stamp, 0) for k, v in values.items()]
        self._flush()

    def artifact(self, directory: Path, name: str) -> None:
        self._flush()
        # No total deadline: a large model takes long to upload. Each read still has MLflow's timeout.
        self.client.log_artifacts(self.run_id, str(directory), name)

    def close(self, status: Status) -> None:
        try:
            self._flush()
        finally:
            self._call("set_terminated", self.run_id, status.upper())


def _one_line(err: BaseException) -> str:
    """An error's first line, URLs' credentials hidden (MLflow's messages name the tracking URI)."""
    return (redact_text(str(err)).strip().splitlines() or [""])[0]


def _param_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _metric_key(key: str) -> str:
    """MLflow's metric names allow letters, digits and ``_-. /``; anything else becomes ``_``."""
    return "".join(ch if ch.isalnum() or ch in "_-. /" else "_" for ch in key)


def _artifact_name(name: str) -> str:
    """W&B's artifact names allow letters, digits and ``-_.``."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


class TrackerSet:
    """The run's trackers, called together; one that raises is warned about once and dropped."""

    def __init__(self, trackers: Sequence[Tracker] = ()) -> None:
        self.trackers = list(trackers)

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def _each(self, what: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, what)(*args)
            except Exception as err:  # noqa: BLE001 - a tracker's outage must not stop training
                log.warning("tracker %s failed (%s: %s); it gets no more data from this run "
                            "(metrics.jsonl has everything)", tracker.name, type(err).__name__, _one_line(err))
                self.trackers.remove(tracker)

    def log(self, row: Mapping[str, Any], step: int) -> None:
        if self.trackers:
            self._each("log", numbers(row), step)

    def finish(self, summary: Mapping[str, Any] | None, model_dir: Path | None) -> None:
        """The final figures and the saved model, sent once the run has written them."""
        if summary:
            self._each("summary", numbers(summary))
        if model_dir is not None and model_dir.is_dir():
            self._each("artifact", model_dir, "model")

    def close(self, status: Status) -> None:
        for tracker in list(self.trackers):
            try:
                tracker.close(status)
            except Exception as err:  # noqa: BLE001 - closing one must not keep the others open
                log.warning("tracker %s failed to close (%s: %s)", tracker.name, type(err).__name__, _one_line(err))
        self.trackers = []
