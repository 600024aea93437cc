"""JaxMARL's own IPPO (and MAPPO) baselines on ``MPE_simple_spread_v3``: the anchor of ``benchmarks/marl_mpe.py``.

Runs in ``.venv-jaxmarl`` (``bash benchmarks/make_jaxmarl_venv.sh``), never in ppokit's venv, and imports
nothing of ppokit. JaxMARL's MPE is mpe2's (its ``tests/mpe/test_mpe.py`` asserts equal observations and
rewards), and JaxMARL publishes configs and code but no table of returns, so the side-by-side anchor is its
baseline code run here, at its published settings, at ppokit's budget, on the same env.

**What runs is JaxMARL's code, not a copy.** ``pip install jaxmarl`` ships the envs and wrappers but not the
``baselines/`` folder, so this script loads the baseline module and its YAML config from a checkout of the
JaxMARL repository given by ``--jaxmarl-src`` (nothing of it is copied into ppokit's repository)::

    git clone https://github.com/FLAIROx/JaxMARL /tmp/JaxMARL
    git -C /tmp/JaxMARL checkout c793d095618c6d3edfb5632802348f57b70a4b94   # the commit the results used

* ``--algo ippo``: ``baselines/IPPO/ippo_ff_mpe.py``'s ``make_train`` at ``config/ippo_ff_mpe.yaml``: 16 envs x
  128 steps, 4 epochs x 4 minibatches, Adam 2.5e-4 annealed linearly, gamma 0.99, lambda 0.95, clip 0.2 (policy
  and value), entropy 0.01, value coefficient 0.5, gradient norm 0.5, separate actor and critic MLPs 64-64 tanh,
  one set of parameters shared by the agents, the 25-step limit treated as a ``done``.
* ``--algo mappo``: ``baselines/MAPPO/mappo_rnn_mpe.py`` at ``config/mappo_homogenous_rnn_mpe.yaml``: the same
  batch shape, LR 2e-3 annealed, FC 128 + GRU 128 actor and critic, the critic on ``world_state`` (all agents'
  observations concatenated = mpe2's ``state()``), no value normalisation.

The only changes to the config are ``TOTAL_TIMESTEPS`` (``--total-timesteps``, env steps: JaxMARL runs
``TOTAL_TIMESTEPS // NUM_STEPS // NUM_ENVS`` updates) and ``WANDB_MODE`` (kept ``disabled``). Seed ``s`` trains
from ``jax.random.PRNGKey(s)``, one seed after another through one compiled function (JaxMARL's ``main`` vmaps
``NUM_SEEDS`` keys split from ``SEED``; the result per key is the same computation).

**Returns.** The curve is what the baseline logs to W&B, read back: IPPO returns its per-update metrics (the
mean over the update's 128 steps and all actors of ``MPELogWrapper``'s ``returned_episode_returns``, the last
finished episode's return held until the next); MAPPO's only output is its ``wandb.log`` call (the same
quantity at the update's last step), which this script records by standing in for the module's ``wandb``.
``MPELogWrapper`` multiplies the reward by the number of agents N "to match the on-policy codebase", so the
logged value is N x the mean per-agent episode return; every number printed here is divided by N, i.e. on
ppokit's ``episodic_return`` scale (mean over agents of each agent's 25-step PettingZoo return). ``final`` is
the last update's value; ``at`` gives the curve at the updates nearest to ``--report-at`` env steps.

One JSON line per seed on stdout; ``--out`` keeps them with the settings and versions in a JSON list
of runs, one entry per algorithm and budget (a rerun replaces its entry)::

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
    .venv-jaxmarl/bin/python benchmarks/marl_jaxmarl_anchor.py --jaxmarl-src /tmp/JaxMARL --algo ippo \\
        --seeds 1 2 3 --total-timesteps 300000 --out benchmarks/results/marl_jaxmarl_spread_ippo.json
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

#: the baseline module and config of each algorithm, relative to the JaxMARL checkout.
BASELINES = {
    "ippo": ("baselines/IPPO/ippo_ff_mpe.py", "baselines/IPPO/config/ippo_ff_mpe.yaml"),
    "mappo": ("baselines/MAPPO/mappo_rnn_mpe.py", "baselines/MAPPO/config/mappo_homogenous_rnn_mpe.yaml"),
}
#: the packages whose versions decide the numbers.
VERSIONS = ("jaxmarl", "jax", "jaxlib", "flax", "optax", "distrax", "chex", "numpy")


class _WandbRecorder:
    """Stands in for ``wandb`` inside the baseline module: keeps what it logs, sends nothing anywhere."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def log(self, row: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        self.rows.append({key: _to_python(value) for key, value in row.items()})


def _to_python(value: Any) -> Any:
    import numpy as np

    array = np.asarray(value)
    return array.item() if array.ndim == 0 else array.tolist()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_baseline(src: Path, algo: str) -> tuple[ModuleType, dict[str, Any], dict[str, str]]:
    """The baseline module (imported from the checkout), its config as a dict, and the files' hashes."""
    from omegaconf import OmegaConf

    module_rel, config_rel = BASELINES[algo]
    module_path, config_path = src / module_rel, src / config_rel
    for path in (module_path, config_path):
        if not path.is_file():
            raise SystemExit(f"marl_jaxmarl_anchor: {path} not found: --jaxmarl-src must be a JaxMARL checkout "
                             "(see this script's docstring)")
    spec = importlib.util.spec_from_file_location(f"jaxmarl_baseline_{algo}", module_path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = OmegaConf.to_container(OmegaConf.load(config_path))
    assert isinstance(config, dict)
    hashes = {module_rel: _sha256(module_path), config_rel: _sha256(config_path)}
    return module, config, hashes


def _relative(path: Path) -> str:
    """``path`` from the repository root when it lies inside it (the venv's python), else as it is."""
    root = Path(__file__).resolve().parents[1]
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _nearest(curve: list[tuple[int, float]], steps: int) -> dict[str, Any]:
    point = min(curve, key=lambda p: abs(p[0] - steps))
    return {"env_steps": point[0], "mean_return_per_agent": point[1]}


def _write(out: Path, entry: dict[str, Any]) -> None:
    """Keep ``entry`` in ``out``, a JSON list of runs (one per env, algorithm and budget): a rerun replaces its own."""
    previous = json.loads(out.read_text()) if out.is_file() else []
    key = (entry["settings"]["ENV_NAME"], entry["algo"], entry["total_timesteps"])
    kept = [s for s in previous if (s["settings"]["ENV_NAME"], s["algo"], s["total_timesteps"]) != key]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(sorted([*kept, entry], key=lambda s: (s["algo"], s["total_timesteps"])), indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jaxmarl-src", type=Path, required=True, help="a checkout of github.com/FLAIROx/JaxMARL")
    parser.add_argument("--algo", choices=sorted(BASELINES), default="ippo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--total-timesteps", type=int, default=300_000, help="env steps (JaxMARL's TOTAL_TIMESTEPS)")
    parser.add_argument("--report-at", type=int, nargs="*", default=[100_000, 200_000, 300_000],
                        help="env steps at which to pick curve points for the summary")
    parser.add_argument("--out", type=Path, help="write every seed's record, the settings and versions as JSON")
    args = parser.parse_args(argv)

    t_start = time.perf_counter()
    from importlib.metadata import version

    import jax
    import jaxmarl
    import numpy as np

    module, config, hashes = load_baseline(args.jaxmarl_src, args.algo)
    recorder = _WandbRecorder()
    module.wandb = recorder  # the module's io_callback logs through this name
    config["TOTAL_TIMESTEPS"] = args.total_timesteps
    published = dict(config)
    n_agents = jaxmarl.make(config["ENV_NAME"], **config["ENV_KWARGS"]).num_agents
    steps_per_update = config["NUM_ENVS"] * config["NUM_STEPS"]

    train = jax.jit(module.make_train(config))  # make_train adds NUM_ACTORS, NUM_UPDATES, MINIBATCH_SIZE to config
    t_compile = time.perf_counter()
    compiled = train.lower(jax.random.PRNGKey(0)).compile()
    compile_seconds = time.perf_counter() - t_compile

    records = []
    for seed in args.seeds:
        recorder.rows.clear()
        t_seed = time.perf_counter()
        out = compiled(jax.random.PRNGKey(seed))
        jax.block_until_ready(out)
        seconds = time.perf_counter() - t_seed
        if args.algo == "ippo":
            logged = np.asarray(out["metrics"]["returned_episode_returns"], dtype=np.float64)
            curve = [((u + 1) * steps_per_update, float(v) / n_agents) for u, v in enumerate(logged)]
        else:
            # io_callback rows may arrive out of order; each carries its env step count (at the update's start).
            rows = sorted(recorder.rows, key=lambda r: r["env_step"])
            curve = [(int(r["env_step"]) + steps_per_update, float(r["returns"]) / n_agents) for r in rows]
        if len(curve) != config["NUM_UPDATES"]:
            raise SystemExit(f"marl_jaxmarl_anchor: {len(curve)} logged updates, expected {config['NUM_UPDATES']}")
        record = {
            "algo": args.algo, "env": config["ENV_NAME"], "seed": seed, "n_agents": n_agents,
            "total_timesteps": args.total_timesteps, "env_steps_trained": config["NUM_UPDATES"] * steps_per_update,
            "updates": config["NUM_UPDATES"], "seconds": round(seconds, 2),
            "env_steps_per_s": round(config["NUM_UPDATES"] * steps_per_update / seconds, 1),
            "final_mean_return_per_agent": curve[-1][1],
            "final_logged_returned_episode_returns": curve[-1][1] * n_agents,
            "at": {str(s): _nearest(curve, s) for s in args.report_at if s <= curve[-1][0] + steps_per_update},
            "curve": [[s, round(v, 5)] for s, v in curve],
        }
        records.append(record)
        print(json.dumps(record), flush=True)
        if args.out is not None:  # after every seed, so an interrupted run keeps the seeds it finished
            finals = [r["final_mean_return_per_agent"] for r in records]
            _write(args.out, {
                "algo": args.algo, "total_timesteps": args.total_timesteps,
                "seeds": [r["seed"] for r in records], "seeds_asked": args.seeds,
                "what": f"JaxMARL's {BASELINES[args.algo][0]} at {BASELINES[args.algo][1]}, run unmodified from a "
                        "checkout; returns are its logged returned_episode_returns divided by the number of agents "
                        "(mean per-agent 25-step PettingZoo return, ppokit's episodic_return scale)",
                "command": " ".join([_relative(Path(sys.executable)), *sys.argv]),
                "settings": published, "baseline_sha256": hashes,
                "versions": {name: version(name) for name in VERSIONS},
                "python": platform.python_version(), "device": str(jax.devices()[0]),
                "xla_flags": os.environ.get("XLA_FLAGS", ""), "compile_seconds": round(compile_seconds, 2),
                "total_seconds": round(time.perf_counter() - t_start, 2),
                "final_mean_return_per_agent": {"per_seed": finals, "mean": float(np.mean(finals)),
                                                "std": float(np.std(finals))},
                "runs": records,
            })

    return 0


if __name__ == "__main__":
    sys.exit(main())
