#!/usr/bin/env bash
# Builds the documentation site into docs/_build/html (warnings are errors, as in CI) and serves it on
# http://127.0.0.1:8000 (another port with PORT=8080). Sets up .venv if needed, with the docs extra
# (sphinx, myst-parser, furo) and the RLHF extra. --no-serve only builds. Extra arguments go to sphinx-build
# (e.g. -E to reread every page).
set -euo pipefail
SERVE=1
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --no-serve) SERVE=0 ;;
    *) ARGS+=("$arg") ;;
  esac
done
# rlhf: the API reference imports the RLHF trainers, which need transformers.
PPOKIT_EXTRAS="docs,rlhf" source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
OUT="docs/_build/html"
python -m sphinx -W --keep-going -b html -d docs/_build/doctrees ${ARGS[@]+"${ARGS[@]}"} docs "$OUT"
echo "docs: built $OUT/index.html"
if [ "$SERVE" = 1 ]; then
  PORT="${PORT:-8000}"
  echo "docs: serving http://127.0.0.1:$PORT (Ctrl-C stops)"
  exec python -m http.server "$PORT" --bind 127.0.0.1 --directory "$OUT"
fi
