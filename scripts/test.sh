#!/usr/bin/env bash
# Sets up .venv if needed (with the test, MuJoCo, Box2D, video, RLHF, export, plot, tracker, tune, Atari, EnvPool and docs extras) and runs the whole test suite,
# learning tests included. Extra arguments go to pytest (e.g. -m "not learning" for a quick run).
PPOKIT_EXTRAS="test,mujoco,box2d,video,rlhf,export,plot,wandb,mlflow,tune,atari,envpool,docs,interop" source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
exec python -m pytest "$@"
