#!/usr/bin/env bash
# Sets up .venv if needed, trains PPO on CartPole-v1 with its preset, prints the run directory and
# the deterministic 20-episode evaluation, and draws the run's learning curves and diagnostics into
# RUN_DIR/curves.png. Extra arguments go to `ppokit train` (the run directory is chosen here).
set -euo pipefail
PPOKIT_EXTRAS="plot" source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
RUN_DIR="runs/demo-CartPole-v1-$(date +%Y%m%d-%H%M%S)"
ppokit train CartPole-v1 "$@" --run-dir "$RUN_DIR"
ppokit plot "$RUN_DIR" -o "$RUN_DIR/curves.png"
