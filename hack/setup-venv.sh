#!/usr/bin/env bash
# Create (or refresh) the project's virtualenv with everything the tests and `torchyard run` need.
# The venv lives in the clone (.venv, ignored); the wheel cache lives outside it, in
# $TORCHYARD_CACHE/uv, so a fresh clone on a machine that has run this before installs in
# seconds, and a fresh machine installs from PyPI from nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${TORCHYARD_CACHE:-$HOME/.cache/torchyard}"
VENV="${VENV:-.venv}"
EXTRAS="${EXTRAS:-trainer,dev}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$CACHE"
export UV_CACHE_DIR="$CACHE/uv"
# The cache and the clone may sit on different filesystems; copying is the safe default there.
export UV_LINK_MODE="${UV_LINK_MODE:-hardlink}"

# uv itself is bootstrapped once into the cache (pip is the only tool a fresh machine has).
UV="$CACHE/bootstrap/bin/uv"
if [ ! -x "$UV" ]; then
  "$PYTHON" -m venv "$CACHE/bootstrap"
  "$CACHE/bootstrap/bin/pip" install --quiet --disable-pip-version-check "uv>=0.4,<1"
fi

stamp="$VENV/.torchyard-stamp"
want="$(cat pyproject.toml hack/setup-venv.sh | sha256sum | cut -c1-16)-$EXTRAS-$(pwd)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$UV" venv --quiet --python "$PYTHON" "$VENV"
# Bytecode compiled at install: the environment may set PYTHONDONTWRITEBYTECODE (this one
# does), and then every process compiled what it imported from source, each time - torch for
# every worker, and the kubernetes client's 4.4 MB core_v1_api for every operator, whose
# compilation alone left ~70 MiB in its RSS (bench/operator_scale.py measured that).
"$UV" pip install --quiet --compile-bytecode --python "$VENV/bin/python" -e ".[$EXTRAS]"
echo "$want" > "$stamp"
echo "venv ready: $VENV ($("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])'))"
