#!/usr/bin/env bash
# Build the real Kubernetes control-plane binaries from the Go module proxy, no Docker.
#
#   hack/build-control-plane.sh            # build (or reuse) into the versioned cache
#   hack/build-control-plane.sh --print-bin-dir
#   hack/build-control-plane.sh --force    # rebuild even if the stamp matches
#
# Output: ${TORCHYARD_CACHE:-$HOME/.cache/torchyard}/k8s/<K8S_VERSION>/bin/
#   etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok
# plus a stamp file `.stamp` holding the pinned versions; when it matches and every binary is
# present the build is skipped. A lock file serialises concurrent callers.
#
# k8s.io/kubernetes cannot be `go install`ed directly (its go.mod replaces every k8s.io/*
# staging module with ./staging/...). We create a throw-away wrapper module that requires it
# and replaces each staging module it *requires* with the matching v0.<minor>.<patch> release;
# the replace list is generated from the downloaded go.mod, never written by hand. etcd's
# server module has ../ replaces too and gets the same treatment. KWOK has none.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Pins live in hack/control-plane-versions.env (also read by torchyard_devcluster);
# K8S_VERSION/ETCD_VERSION/KWOK_VERSION in the environment override them.
_env_k8s="${K8S_VERSION:-}" _env_etcd="${ETCD_VERSION:-}" _env_kwok="${KWOK_VERSION:-}"
# shellcheck source=control-plane-versions.env
source "$HACK_DIR/control-plane-versions.env"
K8S_VERSION="${_env_k8s:-$K8S_VERSION}"
ETCD_VERSION="${_env_etcd:-$ETCD_VERSION}"
KWOK_VERSION="${_env_kwok:-$KWOK_VERSION}"

export GOTOOLCHAIN=local
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

CACHE="${TORCHYARD_CACHE:-$HOME/.cache/torchyard}"
ROOT="$CACHE/k8s/$K8S_VERSION"
BIN="$ROOT/bin"
SRC="$ROOT/src"
STAMP="$BIN/.stamp"
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)
# The stamp's key is the pinned versions (+ layout revision); the Go version is informative
# only, so cached binaries keep working on a machine with another (or no) Go.
STAMP_KEY="k8s=$K8S_VERSION etcd=$ETCD_VERSION kwok=$KWOK_VERSION "
STAMP_REV="v=2"

FORCE=0
for arg in "$@"; do
  case "$arg" in
    --print-bin-dir) echo "$BIN"; exit 0 ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log() { printf '[build-control-plane %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

up_to_date() {
  [[ -f "$STAMP" ]] || return 1
  local have
  have="$(cat "$STAMP")"
  [[ "$have" == "$STAMP_KEY"* && "$have" == *" $STAMP_REV" ]] || return 1
  local b
  for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
  return 0
}

if [[ $FORCE == 0 ]] && up_to_date; then
  log "cached binaries match ($(cat "$STAMP")): $BIN"
  exit 0
fi

command -v go >/dev/null || { log "Go >= 1.26 is needed to build the control plane"; exit 1; }
command -v flock >/dev/null || { log "flock (util-linux) is needed"; exit 1; }
mkdir -p "$ROOT" "$BIN" "$SRC"
exec 9>"$ROOT/.build.lock"
log "waiting for build lock $ROOT/.build.lock"
flock 9
# Someone else may have finished the build while we waited.
if [[ $FORCE == 0 ]] && up_to_date; then
  log "cached binaries match after lock ($(cat "$STAMP")): $BIN"
  exit 0
fi
rm -f "$STAMP"
START=$(date +%s)

# --- helpers ---------------------------------------------------------------------------------
mod_json_field() { # module@version field -> value from `go mod download -json`
  go mod download -json "$1" | sed -n "s/^[[:space:]]*\"$2\": \"\(.*\)\",\{0,1\}$/\1/p" | head -n1
}

# --- kube-apiserver, kube-controller-manager, kube-scheduler, kubectl -------------------------
build_kubernetes() {
  local w="$SRC/kubernetes" gomod commit minor major ld pkgversion
  rm -rf "$w" && mkdir -p "$w"
  gomod=$(mod_json_field "k8s.io/kubernetes@$K8S_VERSION" GoMod)
  [[ -f "$gomod" ]] || { log "cannot download k8s.io/kubernetes@$K8S_VERSION"; return 1; }
  commit=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"Hash": "\([0-9a-f]*\)".*/\1/p' | head -n1)
  major=${K8S_VERSION#v}; major=${major%%.*}
  minor=${K8S_VERSION#v*.}; minor=${minor%%.*}
  local patch=${K8S_VERSION##*.}
  local staging_version="v0.$minor.$patch"
  (
    cd "$w"
    go mod init torchyard.local/k8s-control-plane >/dev/null 2>&1
    go mod edit -go="$(sed -n 's/^go \(.*\)$/\1/p' "$gomod" | head -n1)"
    # The modules k8s.io/kubernetes requires (v0.0.0 placeholders) and replaces with ./staging.
    local required replaced n args=()
    required=$(awk '/^require \(/{r=1;next} r&&/^\)/{r=0} r{print $1} /^require [^(]/{print $2}' "$gomod" | sort -u)
    replaced=$(sed -n 's/^[[:space:]]*\(k8s\.io\/[A-Za-z0-9._-]*\) => \.\/staging\/.*/\1/p' "$gomod" | sort -u)
    for n in $replaced; do
      if grep -qxF "$n" <<<"$required"; then
        args+=("-replace=$n=$n@$staging_version")
      else
        log "skip replace for $n (not required by k8s.io/kubernetes)"
      fi
    done
    log "kubernetes wrapper: ${#args[@]} staging replaces -> $staging_version"
    go mod edit "${args[@]}"
    go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
    local c
    for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
      go get -tool "k8s.io/kubernetes/cmd/$c@$K8S_VERSION"
    done
  )
  ld="-s -w"
  local build_date
  build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for pkgversion in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkgversion.gitVersion=$K8S_VERSION -X $pkgversion.gitMajor=$major -X $pkgversion.gitMinor=$minor"
    ld+=" -X $pkgversion.gitTreeState=clean -X $pkgversion.buildDate=$build_date"
    [[ -n "$commit" ]] && ld+=" -X $pkgversion.gitCommit=$commit"
  done
  log "building kube-apiserver kube-controller-manager kube-scheduler kubectl ($K8S_VERSION)"
  (
    cd "$w"
    go build -trimpath -ldflags "$ld" -o "$BIN/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
    go list -m k8s.io/kubernetes | grep -q " $K8S_VERSION\$" || { log "kubernetes version drifted"; return 1; }
  )
}

# --- etcd ------------------------------------------------------------------------------------
build_etcd() {
  local w="$SRC/etcd" gomod n args=() commit
  rm -rf "$w" && mkdir -p "$w"
  gomod=$(mod_json_field "go.etcd.io/etcd/server/v3@$ETCD_VERSION" GoMod)
  [[ -f "$gomod" ]] || { log "cannot download go.etcd.io/etcd/server/v3@$ETCD_VERSION"; return 1; }
  commit=$(go mod download -json "go.etcd.io/etcd/server/v3@$ETCD_VERSION" | sed -n 's/^[[:space:]]*"Hash": "\([0-9a-f]*\)".*/\1/p' | head -n1)
  (
    cd "$w"
    go mod init torchyard.local/etcd >/dev/null 2>&1
    go mod edit -go="$(sed -n 's/^go \(.*\)$/\1/p' "$gomod" | head -n1)"
    for n in $(sed -n 's/^[[:space:]]*\(go\.etcd\.io\/etcd\/[A-Za-z0-9._/-]*\) => \.\.\/.*/\1/p' "$gomod" | sort -u); do
      args+=("-replace=$n=$n@$ETCD_VERSION")
    done
    log "etcd wrapper: ${#args[@]} replaces -> $ETCD_VERSION"
    go mod edit "${args[@]}"
    go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    local ld="-s -w"
    [[ -n "$commit" ]] && ld+=" -X go.etcd.io/etcd/api/v3/version.GitSHA=${commit:0:7}"
    log "building etcd ($ETCD_VERSION)"
    go build -trimpath -ldflags "$ld" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
    go list -m go.etcd.io/etcd/server/v3 | grep -q " $ETCD_VERSION\$" || { log "etcd version drifted"; return 1; }
  )
}

# --- kwok ------------------------------------------------------------------------------------
build_kwok() {
  local w="$SRC/kwok"
  rm -rf "$w" && mkdir -p "$w"
  (
    cd "$w"
    go mod init torchyard.local/kwok >/dev/null 2>&1
    go get -tool "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
    log "building kwok ($KWOK_VERSION)"
    go build -trimpath -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" \
      -o "$BIN/kwok" sigs.k8s.io/kwok/cmd/kwok
  )
}

build_etcd
build_kwok
build_kubernetes

for b in "${BINARIES[@]}"; do
  [[ -x "$BIN/$b" ]] || { log "missing $BIN/$b after build"; exit 1; }
done
echo "${STAMP_KEY}go=$(go env GOVERSION) $STAMP_REV" >"$STAMP"
END=$(date +%s)
log "done in $((END - START))s: $BIN ($(du -sh "$BIN" | cut -f1))"
"$BIN/kube-apiserver" --version >&2 || true
