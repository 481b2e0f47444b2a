#!/usr/bin/env bash
# Build a Prometheus WITH Kubernetes service discovery, for tests/e2e/test_prometheus_sd.py.
# Debian's `prometheus` package (hack/install-prometheus.sh; enough for the static/file_sd tests)
# is built without `kubernetes_sd_configs` ("field kubernetes_sd_configs not found in type
# config.ScrapeConfig"), so this builds the upstream one from the Go module proxy, like the
# control plane (hack/build-control-plane.sh): `go install` of cmd/prometheus with the build
# tags that keep only the Kubernetes discovery (remove_all_sd, enable_kubernetes_sd). No web UI
# assets (no `builtinassets` tag): the HTTP API, which the tests use, is complete without them.
# Prints the binary's path on its last line; cached in $TORCHYARD_CACHE/prometheus.
set -euo pipefail

VERSION="${TORCHYARD_PROMETHEUS_MODULE_VERSION:-v0.316.0}"  # module version of Prometheus v3.16.0
CACHE="${TORCHYARD_CACHE:-$HOME/.cache/torchyard}/prometheus/$VERSION"
BIN="$CACHE/bin/prometheus"

if [ -x "$BIN" ]; then
  echo "$BIN"
  exit 0
fi
command -v go >/dev/null || { echo "build-prometheus: needs Go (see hack/build-control-plane.sh)" >&2; exit 1; }
mkdir -p "$CACHE/bin"
tmp="$(mktemp -d "$CACHE/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
export GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$tmp"
go install -trimpath -tags remove_all_sd,enable_kubernetes_sd \
  "github.com/prometheus/prometheus/cmd/prometheus@$VERSION" >&2
mv "$tmp/prometheus" "$BIN"
"$BIN" --version 2>&1 | head -1 >&2
echo "$BIN"
