#!/usr/bin/env bash
# The Python packages benchmarks/gpu_check.py needs that the lent GPU machines' image lacks, as wheels
# for its python3 (3.12, manylinux x86_64), into .whl/ (ignored by git). The image has torch,
# transformers, peft, accelerate, pyarrow, pandas and most of what else ppokit imports; it has no
# gymnasium, datasets, trl, rsl_rl or ale-py. EnvPool (53 MB) and its assets (62 MB) together exceed
# what one device call may carry, so the Atari section runs its Gymnasium sides there and reports
# EnvPool as not installed.
#
#     bash benchmarks/gpu_wheels.sh            # here, once: about 7 MB into .whl/
#
# Then, on the device (run with carry [".whl"]):
#
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#         --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && \
#         python3 benchmarks/gpu_check.py --out "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
platforms=()
for p in manylinux_2_31_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 any; do
  platforms+=(--platform "$p")
done
# One version of each (two stop the install there); the pins are those of this checkout's venvs.
packages=(
  gymnasium==1.2.2 farama-notifications==0.0.4             # ppokit's own dependency
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19         # the rlhf extra's prompt loading
  trl==1.12.0                                               # the RLHF anchor (rlhf_trl_anchor.py)
  rsl-rl-lib==5.5.1 tensordict==0.15.3 pyvers==0.2.2 GitPython gitdb smmap  # the torch-env anchor
  ale-py==0.12.1                                            # Atari through Gymnasium
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl "${packages[@]}"
du -sh .whl
