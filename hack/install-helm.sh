#!/usr/bin/env bash
# Install Helm into $TORCHYARD_CACHE/bin by building it from the Go module proxy (no Docker,
# no GitHub downloads). Pinned; skipped when the cached binary already has the wanted version.
#   hack/install-helm.sh          -> prints the path of the helm binary on its last line
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE="${TORCHYARD_CACHE:-$HOME/.cache/torchyard}"
BIN="$CACHE/bin"
HELM="$BIN/helm"

# The stamp records the build flags too, so a binary built before they changed is rebuilt.
STAMP="$BIN/.helm-build"
WANT="$HELM_VERSION k8s-from-client-go"
if [ -x "$HELM" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ] \
  && "$HELM" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
  echo "$HELM"
  exit 0
fi

command -v go >/dev/null || { echo "install-helm: go is required (Go module proxy build)" >&2; exit 1; }
mkdir -p "$BIN"
echo "install-helm: building helm $HELM_VERSION from the Go module proxy (a few minutes once)" >&2
export GOTOOLCHAIN=local CGO_ENABLED=0
# Helm's own Makefile stamps its version and the Kubernetes version it assumes without a
# cluster (`helm template`, `helm lint`: the client-go minor in its go.mod). `go install` of a
# module version does not, and would leave the default at v1.20, which fails kubeVersion checks.
gomod="$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
clientgo="$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "$gomod")"   # v0.MINOR.PATCH
k8s_minor="$(echo "$clientgo" | cut -d. -f2)"
[ -n "$k8s_minor" ] || { echo "install-helm: cannot read k8s.io/client-go from $gomod" >&2; exit 1; }
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in pkg/lint/rules pkg/chartutil; do
  ldflags="$ldflags -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$k8s_minor"
done
GOBIN="$BIN" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
"$HELM" version --template '{{.Version}}' | grep -qx "$HELM_VERSION" \
  || { echo "install-helm: built helm does not report $HELM_VERSION" >&2; exit 1; }
echo "$WANT" > "$STAMP"
echo "$HELM"
