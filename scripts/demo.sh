#!/usr/bin/env bash
# Sets up .venv if needed, trains PPO on CartPole-v1 with its preset, and prints the run directory
# and the deterministic 20-episode evaluation. Extra arguments go to `ppokit train`.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
exec ppokit train CartPole-v1 "$@"
