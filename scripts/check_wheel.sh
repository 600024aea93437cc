#!/usr/bin/env bash
# The release check: build the sdist and the wheel, `twine check` them, install the wheel into a fresh
# virtual environment (nothing of this checkout on its path) and train from it with the shipped preset.
# Run by .ci/run; `bash scripts/check_wheel.sh` alone sets up .venv first. Leaves the files in dist/.
set -euo pipefail
PPOKIT_EXTRAS="${PPOKIT_EXTRAS:-test}" source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
PYTHON_BIN="${PYTHON:-$(command -v python3.11 || command -v python3)}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "check_wheel: building the sdist and the wheel into dist/" >&2
rm -rf dist
python -m build --sdist --wheel --outdir dist . >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; exit 1; }
python -m twine check --strict dist/*
wheel=$(ls dist/*.whl)
# What must be inside: the presets (package data), the version module, and no tests.
python - "$wheel" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
presets = [n for n in names if n.startswith("ppokit/control/presets/") and n.endswith(".yaml")]
assert len(presets) >= 10, f"the wheel holds {len(presets)} preset files"
assert "ppokit/_version.py" in names and not any(n.startswith("tests/") for n in names), names[:20]
print(f"check_wheel: {sys.argv[1]} holds {len(names)} files, {len(presets)} presets")
EOF

echo "check_wheel: installing it into a fresh venv" >&2
"$PYTHON_BIN" -m venv "$WORK/venv"
# torch first and pinned (the local CPU build), as the README's install does.
"$WORK/venv/bin/python" -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
"$WORK/venv/bin/python" -m pip install -q "$wheel" 2>&1 | grep -v "^WARNING: Location" || true
cd "$WORK"  # away from this checkout, so the installed package is the one imported
"$WORK/venv/bin/python" -c "import ppokit, sys; assert 'site-packages' in ppokit.__file__, ppokit.__file__; print('check_wheel: ppokit', ppokit.__version__, 'from', ppokit.__file__)"
"$WORK/venv/bin/ppokit" presets >"$WORK/presets.txt" && grep -q "CartPole-v1" "$WORK/presets.txt"
"$WORK/venv/bin/ppokit" train CartPole-v1 --total-steps 2048 --run-dir "$WORK/run" --no-progress
test -f "$WORK/run/model/model.safetensors" && test -f "$WORK/run/eval.json"
"$WORK/venv/bin/ppokit" info "$WORK/run" >/dev/null
echo "check_wheel: the wheel installs and trains from a fresh venv" >&2
