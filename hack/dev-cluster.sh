#!/usr/bin/env bash
# Thin wrapper: `hack/dev-cluster.sh up|down|env|nodes|status [...]` runs the dev cluster CLI
# (the same as `torchyard dev-cluster …`) from this checkout, with the project's venv if found.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${TORCHYARD_CACHE:-$HOME/.cache/torchyard}"
PY="${PYTHON:-}"
for cand in "$ROOT/.venv/bin/python" "$CACHE/venv/bin/python"; do
  [[ -z "$PY" && -x "$cand" ]] && PY="$cand"
done
PY="${PY:-python3}"
export PYTHONPATH="$ROOT/operator${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m torchyard_devcluster "$@"
