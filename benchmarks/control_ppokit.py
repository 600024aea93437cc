"""ppokit side of the control throughput benchmark: one training run, steps/s printed as JSON.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/control_ppokit.py --task cartpole --steps 100000
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from control_tasks import parse_task_args  # noqa: E402


def main() -> None:
    name, task, steps, seed = parse_task_args(__doc__.split("\n\n")[0])
    import torch

    from ppokit import PPO, ControlConfig

    torch.set_num_threads(1)
    normalize = task.pop("normalize")
    with tempfile.TemporaryDirectory() as tmp:
        config = ControlConfig(**task, total_steps=steps, seed=seed, lr_schedule="linear",
                           normalize_obs=normalize, normalize_reward=normalize, torch_threads=1,
                           progress=False, tensorboard=False, eval_episodes=0, run_dir=str(Path(tmp) / "run"))
        agent = PPO(config)
        start = time.perf_counter()
        agent.learn()
        seconds = time.perf_counter() - start
        returns = list(agent.collector.episodes.returns)
        agent.close()
    print(json.dumps({"library": "ppokit", "task": name, "steps": agent.global_step, "seconds": seconds,
                      "sps": agent.global_step / seconds,
                      "final_return": sum(returns) / len(returns) if returns else None}))


if __name__ == "__main__":
    main()
