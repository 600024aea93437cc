# Sourced by the other scripts: creates .venv when it is missing and installs ppokit into it.
# torch is installed first and pinned: 2.13.0 has a local CPU build here, while an unpinned torch
# would pull gigabytes of CUDA wheels. pyproject.toml declares a range that 2.13.0 satisfies.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PYTHON_BIN="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "ppokit: creating $VENV with $PYTHON_BIN" >&2
  "$PYTHON_BIN" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "ppokit: installing torch==2.13.0 (CPU)" >&2
  "$PY" -m pip install -q "torch==2.13.0"
fi
STAMP="$VENV/.ppokit-installed-${PPOKIT_EXTRAS:-default}"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  echo "ppokit: installing ppokit[${PPOKIT_EXTRAS:-test}] into $VENV" >&2
  "$PY" -m pip install -q -e ".[${PPOKIT_EXTRAS:-test}]" 2>&1 | grep -v "^WARNING: Location" || true
  "$PY" -c "import ppokit" && touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
