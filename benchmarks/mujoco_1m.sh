#!/bin/bash
# Sample efficiency at 1M steps: the MuJoCo presets (the PPO paper's settings, as CleanRL's
# ppo_continuous_action), 3 seeds x 3 tasks, one thread each, one run after another.
#   bash benchmarks/mujoco_1m.sh [OUT_DIR]        (about 4-5 min per run on one core)
#   .venv/bin/python benchmarks/mujoco_table.py [OUT_DIR]
# A run whose eval.json exists is skipped, so the script can be restarted.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/bench-runs/mujoco-1m}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
for seed in 1 2 3; do
  for env in HalfCheetah-v5 Hopper-v5 Walker2d-v5; do
    d=$OUT/${env}__s${seed}
    [ -f "$d/eval.json" ] && continue
    "$ROOT/.venv/bin/ppokit" train "$env" --seed "$seed" --run-dir "$d" --overwrite --no-progress \
      --set tensorboard=false --set torch_threads=1 > "$d.log" 2>&1
  done
done
