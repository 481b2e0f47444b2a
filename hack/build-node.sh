#!/usr/bin/env bash
# Build the real-node binaries of the dev cluster from the Go module proxy, no Docker.
#
#   hack/build-node.sh                 # build (or reuse) into the versioned cache
#   hack/build-node.sh --print-bin-dir
#   hack/build-node.sh --force         # rebuild even if the stamp matches
#
# Output: ${TORCHYARD_CACHE:-$HOME/.cache/torchyard}/k8s/<K8S_VERSION>/node-bin/
#   kubelet kube-proxy   from the same k8s.io/kubernetes wrapper module as the control plane
#   coredns              a slim CoreDNS (only the plugins the dev cluster's Corefile uses)
#   pause                build/pause/linux/pause.c of the k8s module, static (gcc -static)
# plus a stamp `.stamp`; when it matches and every binary is present the build is skipped.
# The pause OCI image is packed from `pause` by torchyard_devcluster (no Docker needed).
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_env_k8s="${K8S_VERSION:-}" _env_coredns="${COREDNS_VERSION:-}" _env_pause="${PAUSE_VERSION:-}"
# shellcheck source=control-plane-versions.env
source "$HACK_DIR/control-plane-versions.env"
# shellcheck source=node-versions.env
source "$HACK_DIR/node-versions.env"
K8S_VERSION="${_env_k8s:-$K8S_VERSION}"
COREDNS_VERSION="${_env_coredns:-$COREDNS_VERSION}"
PAUSE_VERSION="${_env_pause:-$PAUSE_VERSION}"

export GOTOOLCHAIN=local
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

CACHE="${TORCHYARD_CACHE:-$HOME/.cache/torchyard}"
ROOT="$CACHE/k8s/$K8S_VERSION"
BIN="$ROOT/node-bin"
SRC="$ROOT/src"
STAMP="$BIN/.stamp"
BINARIES=(kubelet kube-proxy coredns pause)
STAMP_KEY="k8s=$K8S_VERSION coredns=$COREDNS_VERSION pause=$PAUSE_VERSION "
STAMP_REV="v=1"

FORCE=0
for arg in "$@"; do
  case "$arg" in
    --print-bin-dir) echo "$BIN"; exit 0 ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log() { printf '[build-node %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

up_to_date() {
  [[ -f "$STAMP" ]] || return 1
  local have b
  have="$(cat "$STAMP")"
  [[ "$have" == "$STAMP_KEY"* && "$have" == *" $STAMP_REV" ]] || return 1
  for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
  return 0
}

if [[ $FORCE == 0 ]] && up_to_date; then
  log "cached binaries match ($(cat "$STAMP")): $BIN"
  exit 0
fi

command -v go >/dev/null || { log "Go >= 1.26 is needed to build the node binaries"; exit 1; }
command -v gcc >/dev/null || { log "gcc (with static libc, Debian libc6-dev) is needed for pause"; exit 1; }
command -v flock >/dev/null || { log "flock (util-linux) is needed"; exit 1; }
mkdir -p "$ROOT" "$BIN" "$SRC"
exec 9>"$ROOT/.build-node.lock"
log "waiting for build lock $ROOT/.build-node.lock"
flock 9
if [[ $FORCE == 0 ]] && up_to_date; then
  log "cached binaries match after lock ($(cat "$STAMP")): $BIN"
  exit 0
fi
rm -f "$STAMP"
START=$(date +%s)

mod_json_field() { # module@version field -> value from `go mod download -json`
  go mod download -json "$1" | sed -n "s/^[[:space:]]*\"$2\": \"\(.*\)\",\{0,1\}$/\1/p" | head -n1
}

# --- kubelet, kube-proxy: the control plane's wrapper recipe (staging replaces generated) ----
build_kubernetes_node() {
  local w="$SRC/kubernetes-node" gomod commit major minor patch ld pkgversion build_date
  rm -rf "$w" && mkdir -p "$w"
  gomod=$(mod_json_field "k8s.io/kubernetes@$K8S_VERSION" GoMod)
  [[ -f "$gomod" ]] || { log "cannot download k8s.io/kubernetes@$K8S_VERSION"; return 1; }
  commit=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"Hash": "\([0-9a-f]*\)".*/\1/p' | head -n1)
  major=${K8S_VERSION#v}; major=${major%%.*}
  minor=${K8S_VERSION#v*.}; minor=${minor%%.*}
  patch=${K8S_VERSION##*.}
  (
    cd "$w"
    go mod init torchyard.local/k8s-node >/dev/null 2>&1
    go mod edit -go="$(sed -n 's/^go \(.*\)$/\1/p' "$gomod" | head -n1)"
    local required replaced n args=()
    required=$(awk '/^require \(/{r=1;next} r&&/^\)/{r=0} r{print $1} /^require [^(]/{print $2}' "$gomod" | sort -u)
    replaced=$(sed -n 's/^[[:space:]]*\(k8s\.io\/[A-Za-z0-9._-]*\) => \.\/staging\/.*/\1/p' "$gomod" | sort -u)
    for n in $replaced; do
      grep -qxF "$n" <<<"$required" && args+=("-replace=$n=$n@v0.$minor.$patch")
    done
    log "kubernetes node wrapper: ${#args[@]} staging replaces -> v0.$minor.$patch"
    go mod edit "${args[@]}"
    go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
    go get -tool "k8s.io/kubernetes/cmd/kubelet@$K8S_VERSION"
    go get -tool "k8s.io/kubernetes/cmd/kube-proxy@$K8S_VERSION"
  )
  ld="-s -w"
  build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for pkgversion in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkgversion.gitVersion=$K8S_VERSION -X $pkgversion.gitMajor=$major -X $pkgversion.gitMinor=$minor"
    ld+=" -X $pkgversion.gitTreeState=clean -X $pkgversion.buildDate=$build_date"
    [[ -n "$commit" ]] && ld+=" -X $pkgversion.gitCommit=$commit"
  done
  log "building kubelet kube-proxy ($K8S_VERSION)"
  (
    cd "$w"
    go build -trimpath -ldflags "$ld" -o "$BIN/" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
    go list -m k8s.io/kubernetes | grep -q " $K8S_VERSION\$" || { log "kubernetes version drifted"; return 1; }
  )
}

# --- pause: the k8s module's own C source, static -------------------------------------------
build_pause() {
  local dir src
  dir=$(mod_json_field "k8s.io/kubernetes@$K8S_VERSION" Dir)
  src="$dir/build/pause/linux/pause.c"
  [[ -f "$src" ]] || { log "no $src"; return 1; }
  log "building pause $PAUSE_VERSION from $src"
  gcc -Os -Wall -Werror -static -DVERSION="$PAUSE_VERSION" -o "$BIN/pause" "$src"
  strip "$BIN/pause" 2>/dev/null || true
}

# --- coredns: only the plugins the dev Corefile uses (CoreDNS's documented external build) ---
build_coredns() {
  local w="$SRC/coredns"
  rm -rf "$w" && mkdir -p "$w"
  cat >"$w/main.go" <<'GO'
// A slim CoreDNS for the torchyard dev cluster: the plugins its Corefile uses, in CoreDNS's
// own plugin.cfg order (the order of dnsserver.Directives is the order plugins run).
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	dnsserver.Directives = []string{
		"bind", "ready", "health", "errors", "log", "cache", "kubernetes", "forward",
	}
}

func main() { coremain.Run() }
GO
  (
    cd "$w"
    go mod init torchyard.local/coredns >/dev/null 2>&1
    go get "github.com/coredns/coredns@$COREDNS_VERSION"
    go mod tidy
    log "building coredns ($COREDNS_VERSION)"
    go build -trimpath -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" \
      -o "$BIN/coredns" .
    go list -m github.com/coredns/coredns | grep -q " $COREDNS_VERSION\$" || { log "coredns version drifted"; return 1; }
  )
}

build_pause
build_kubernetes_node
build_coredns

for b in "${BINARIES[@]}"; do
  [[ -x "$BIN/$b" ]] || { log "missing $BIN/$b after build"; exit 1; }
done
echo "${STAMP_KEY}go=$(go env GOVERSION) $STAMP_REV" >"$STAMP"
END=$(date +%s)
log "done in $((END - START))s: $BIN ($(du -sh "$BIN" | cut -f1))"
