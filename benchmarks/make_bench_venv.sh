#!/usr/bin/env bash
# Create .venv-bench (repo root): a separate venv holding the anchors the benchmarks run against:
# TRL 1.12 (benchmarks/rlhf_trl_anchor.py), Stable-Baselines3 (benchmarks/control_sb3_anchor.py) and
# PureJaxRL's stack, JAX 0.6.0 + gymnax (benchmarks/purejaxrl_anchor.py) and skrl's IPPO/MAPPO with
# PettingZoo's MPE envs (benchmarks/marl_skrl_anchor.py). ppokit never imports any of it.
# torch==2.13.0 (local CPU build) goes in first, then benchmarks/requirements-trl.txt and
# requirements-control.txt, then requirements-purejaxrl.txt, then requirements-marl.txt; torch must still
# be 2.13.0 at the end.
# Idempotent: each stage does nothing when its stamp matches the hash of its requirements.
#
#   bash benchmarks/make_bench_venv.sh            # create / update
#   FORCE=1 bash benchmarks/make_bench_venv.sh    # reinstall even if the stamps match
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-bench"
REQS="$ROOT/benchmarks/requirements-trl.txt"
REQS_CONTROL="$ROOT/benchmarks/requirements-control.txt"
REQS_JAX="$ROOT/benchmarks/requirements-purejaxrl.txt"
REQS_MARL="$ROOT/benchmarks/requirements-marl.txt"
STAMP="$VENV/.requirements-trl.sha256"
STAMP_JAX="$VENV/.requirements-purejaxrl.sha256"
STAMP_MARL="$VENV/.requirements-marl.sha256"
TORCH_SPEC="torch==2.13.0"
PYTHON="${PYTHON:-python3.11}"

# Each later stage hashes the earlier stages' inputs too, so a change there (a torch reinstall) redoes it.
want="$( (echo "$TORCH_SPEC"; cat "$REQS" "$REQS_CONTROL") | sha256sum | cut -d' ' -f1)"
want_jax="$( (echo "$want"; cat "$REQS_JAX") | sha256sum | cut -d' ' -f1)"
want_marl="$( (echo "$want_jax"; cat "$REQS_MARL") | sha256sum | cut -d' ' -f1)"
up_to_date() { [[ -z "${FORCE:-}" && -f "$1" && "$(cat "$1")" == "$2" && -x "$VENV/bin/python" ]]; }

if up_to_date "$STAMP" "$want" && up_to_date "$STAMP_JAX" "$want_jax" && up_to_date "$STAMP_MARL" "$want_marl"; then
    echo "make_bench_venv: $VENV is up to date" >&2
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi

if ! up_to_date "$STAMP" "$want"; then
    rm -f "$STAMP" "$STAMP_JAX" "$STAMP_MARL"
    "$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
    "$VENV/bin/python" -m pip install --quiet -r "$REQS" -r "$REQS_CONTROL"
    TRL_EXPERIMENTAL_SILENCE=1 "$VENV/bin/python" - <<'PY'
import torch, trl, transformers, stable_baselines3
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: F401  (fails loudly if PPO is gone)
assert torch.__version__.startswith("2.13.0"), torch.__version__
print(f"make_bench_venv: torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
      f"stable-baselines3 {stable_baselines3.__version__}")
PY
    echo "$want" > "$STAMP"
fi

# JAX after torch, constrained by the TRL stage's pins (torch, numpy, ...) and with the control anchors listed
# again, so the resolver cannot swap any of them for its own.
if ! up_to_date "$STAMP_JAX" "$want_jax"; then
    rm -f "$STAMP_JAX" "$STAMP_MARL"
    "$VENV/bin/python" -m pip install --quiet -c "$REQS" -r "$REQS_CONTROL" -r "$REQS_JAX"
    "$VENV/bin/python" - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), f"installing PureJaxRL's stack changed torch to {torch.__version__}"
import distrax, flax, gymnax, jax, optax  # noqa: E401,F401  (fails loudly if one does not import beside the others)
from importlib.metadata import version
print("make_bench_venv: torch", torch.__version__, "(unchanged),",
      ", ".join(f"{name} {version(name)}" for name in ("jax", "flax", "optax", "chex", "gymnax", "distrax")))
PY
    echo "$want_jax" > "$STAMP_JAX"
fi

# skrl and PettingZoo's MPE envs last, under the same pins (skrl asks only for torch>=1.11 and gymnasium).
rm -f "$STAMP_MARL"
"$VENV/bin/python" -m pip install --quiet -c "$REQS" -r "$REQS_CONTROL" -r "$REQS_MARL"
"$VENV/bin/python" - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), f"installing skrl's stack changed torch to {torch.__version__}"
from mpe2 import simple_spread_v3  # noqa: F401
from skrl.multi_agents.torch.mappo import MAPPO  # noqa: F401  (fails loudly if skrl moved it)
from importlib.metadata import version
print("make_bench_venv: torch", torch.__version__, "(unchanged),",
      ", ".join(f"{name} {version(name)}" for name in ("skrl", "pettingzoo", "mpe2", "gymnasium")))
PY
echo "$want_marl" > "$STAMP_MARL"
