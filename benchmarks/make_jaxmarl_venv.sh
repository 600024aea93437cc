#!/usr/bin/env bash
# Create .venv-jaxmarl (repo root): a separate venv holding JaxMARL and CPU JAX for the multi-agent anchor
# (benchmarks/marl_jaxmarl_anchor.py). ppokit never imports any of it; torch is not needed there.
# The pip package has JaxMARL's envs and wrappers but not its baselines/ folder: the anchor loads those from a
# checkout of github.com/FLAIROx/JaxMARL (see its docstring).
# Idempotent: does nothing when the stamp matches the hash of benchmarks/requirements-jaxmarl.txt.
#
#   bash benchmarks/make_jaxmarl_venv.sh            # create / update
#   FORCE=1 bash benchmarks/make_jaxmarl_venv.sh    # reinstall even if the stamp matches
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-jaxmarl"
REQS="$ROOT/benchmarks/requirements-jaxmarl.txt"
STAMP="$VENV/.requirements-jaxmarl.sha256"
PYTHON="${PYTHON:-python3.11}"  # jaxmarl needs Python >= 3.11

want="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [[ -z "${FORCE:-}" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$VENV/bin/python" ]]; then
    echo "make_jaxmarl_venv: $VENV is up to date" >&2
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
rm -f "$STAMP"
"$VENV/bin/python" -m pip install --quiet -r "$REQS"
"$VENV/bin/python" - <<'PY'
import distrax, flax, hydra, jax, jaxmarl, omegaconf, optax, wandb  # noqa: E401,F401  (what the baselines import)
from importlib.metadata import version
env = jaxmarl.make("MPE_simple_spread_v3")
print("make_jaxmarl_venv:", ", ".join(f"{name} {version(name)}" for name in ("jaxmarl", "jax", "flax", "optax", "distrax")),
      f"devices {jax.devices()}, MPE_simple_spread_v3 with {env.num_agents} agents")
PY
echo "$want" > "$STAMP"
