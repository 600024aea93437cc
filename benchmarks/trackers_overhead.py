"""What the experiment trackers cost a fast run: the CartPole-v1 preset (100k steps, ~200 updates a
second on the fast path) with no tracker, W&B offline and MLflow against a local server, alternated.

    PYTHONPATH=. .venv/bin/python benchmarks/trackers_overhead.py --repeats 3

Prints the wall time of ``learn()`` per setting (median over repeats) and its ratio to no tracker.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def _server(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                               "--artifacts-destination", str(root / "artifacts")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=1):
                return server, uri
        except OSError:
            time.sleep(0.3)
    server.kill()
    raise SystemExit("the MLflow server did not start")


def _one(root: Path, trackers: list[str], i: int) -> float:
    from ppokit import PPO
    from ppokit.configuration import from_mapping
    from ppokit.control.config import ControlConfig
    from ppokit.control.presets import load_preset

    data = {**load_preset("CartPole-v1"), "progress": False, "tensorboard": False, "eval_episodes": 0,
            "trackers": trackers, "seed": 1}
    agent = PPO(from_mapping(ControlConfig, data))
    start = time.perf_counter()
    agent.learn(run_dir=root / f"{'-'.join(trackers) or 'none'}-{i}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ppokit-trackers-"))
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(root),
                      WANDB_DATA_DIR=str(root / "wandb-data"), WANDB_CACHE_DIR=str(root / "wandb-cache"),
                      WANDB_CONFIG_DIR=str(root / "wandb-config"), MLFLOW_EXPERIMENT_NAME="overhead")
    server, uri = _server(root)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    settings = {"none": [], "wandb (offline)": ["wandb"], "mlflow (local server)": ["mlflow"]}
    times: dict[str, list[float]] = {name: [] for name in settings}
    try:
        _one(root, [], -1)  # warm-up: imports, first env
        for i in range(args.repeats):
            for name, trackers in settings.items():
                times[name].append(_one(root, trackers, i))
    finally:
        server.terminate()
    base = statistics.median(times["none"])
    print(f"CartPole-v1 preset, 100k steps, median of {args.repeats} alternated runs")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<22} {median:6.2f} s  ({median / base:.2f}x)  runs: {', '.join(f'{v:.2f}' for v in values)}")


if __name__ == "__main__":
    main()
