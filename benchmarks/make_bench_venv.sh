#!/usr/bin/env bash
# Create .venv-bench (repo root): a separate venv holding the anchors the benchmarks run against:
# TRL 1.12 (benchmarks/rlhf_trl_anchor.py) and Stable-Baselines3 (benchmarks/control_sb3_anchor.py).
# torch==2.13.0 (local CPU build) goes in first, then benchmarks/requirements-trl.txt and
# requirements-control.txt. Idempotent: does nothing when the stamp matches the requirements hash.
#
#   bash benchmarks/make_bench_venv.sh            # create / update
#   FORCE=1 bash benchmarks/make_bench_venv.sh    # reinstall even if the stamp matches
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-bench"
REQS="$ROOT/benchmarks/requirements-trl.txt"
REQS_CONTROL="$ROOT/benchmarks/requirements-control.txt"
STAMP="$VENV/.requirements-trl.sha256"
TORCH_SPEC="torch==2.13.0"
PYTHON="${PYTHON:-python3.11}"

want="$( (echo "$TORCH_SPEC"; cat "$REQS" "$REQS_CONTROL") | sha256sum | cut -d' ' -f1)"
if [[ -z "${FORCE:-}" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$VENV/bin/python" ]]; then
    echo "make_bench_venv: $VENV is up to date" >&2
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
rm -f "$STAMP"
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
