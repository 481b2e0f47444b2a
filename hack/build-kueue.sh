#!/usr/bin/env bash
# Build Kueue (sigs.k8s.io/kueue/cmd/kueue) from the Go module proxy, no Docker, and copy its
# CRDs out of the same module zip. Used by the dev cluster's Kueue tests (tests/cluster).
#
#   hack/build-kueue.sh            # build (or reuse) into the versioned cache
#   hack/build-kueue.sh --print-dir
#   hack/build-kueue.sh --force    # rebuild even if the stamp matches
#
# Output: ${TORCHYARD_CACHE:-$HOME/.cache/torchyard}/kueue/<KUEUE_VERSION>/
#   bin/kueue        the manager binary (what Kueue's image runs as /manager)
#   crds/*.yaml      config/components/crd/bases of the module, unmodified
#   webhook/manifests.yaml  config/components/webhook/manifests.yaml of the module, unmodified
#                    (torchyard_devcluster.kueue points its webhooks at 127.0.0.1)
#   .stamp           the pinned version; when it matches and the files are present, no build
# A lock file serialises concurrent callers. The pin is KUEUE_VERSION in
# hack/control-plane-versions.env (the environment overrides it). Kueue's go.mod has no
# replace directives, so `go install module@version` works without a wrapper module.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_env_kueue="${KUEUE_VERSION:-}"
# shellcheck source=control-plane-versions.env
source "$HACK_DIR/control-plane-versions.env"
KUEUE_VERSION="${_env_kueue:-$KUEUE_VERSION}"

export GOTOOLCHAIN=local
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

CACHE="${TORCHYARD_CACHE:-$HOME/.cache/torchyard}"
ROOT="$CACHE/kueue/$KUEUE_VERSION"
BIN="$ROOT/bin"
CRDS="$ROOT/crds"
WEBHOOK="$ROOT/webhook"
STAMP="$ROOT/.stamp"
STAMP_KEY="kueue=$KUEUE_VERSION "
STAMP_REV="v=1"

FORCE=0
for arg in "$@"; do
  case "$arg" in
    --print-dir) echo "$ROOT"; exit 0 ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log() { printf '[build-kueue %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

up_to_date() {
  [[ -f "$STAMP" && -x "$BIN/kueue" ]] || return 1
  local have
  have="$(cat "$STAMP")"
  [[ "$have" == "$STAMP_KEY"* && "$have" == *" $STAMP_REV" ]] || return 1
  [[ -f "$WEBHOOK/manifests.yaml" ]] || return 1
  compgen -G "$CRDS/kueue.x-k8s.io_*.yaml" >/dev/null
}

if [[ $FORCE == 0 ]] && up_to_date; then
  log "cached kueue matches ($(cat "$STAMP")): $ROOT"
  exit 0
fi

command -v go >/dev/null || { log "Go >= 1.25 is needed to build Kueue"; exit 1; }
command -v flock >/dev/null || { log "flock (util-linux) is needed"; exit 1; }
mkdir -p "$ROOT"
exec 9>"$ROOT/.build.lock"
log "waiting for build lock $ROOT/.build.lock"
flock 9
if [[ $FORCE == 0 ]] && up_to_date; then
  log "cached kueue matches after lock ($(cat "$STAMP")): $ROOT"
  exit 0
fi
rm -f "$STAMP"
START=$(date +%s)

info=$(go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION")
moddir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$info" | head -n1)
gomod=$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' <<<"$info" | head -n1)
commit=$(sed -n 's/^[[:space:]]*"Hash": "\([0-9a-f]*\)".*/\1/p' <<<"$info" | head -n1)
[[ -d "$moddir" && -f "$gomod" ]] || { log "cannot download sigs.k8s.io/kueue@$KUEUE_VERSION"; exit 1; }
# `go install mod@version` refuses modules with replace/exclude directives; say so plainly.
if grep -Eq '^[[:space:]]*(replace|exclude)([[:space:](]|$)' "$gomod"; then
  log "sigs.k8s.io/kueue@$KUEUE_VERSION go.mod has replace/exclude directives: needs a wrapper module"
  exit 1
fi

# The ldflags Kueue's Makefile sets (pkg/version).
vpkg=sigs.k8s.io/kueue/pkg/version
ld="-s -w -X $vpkg.GitVersion=$KUEUE_VERSION -X $vpkg.BuildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
[[ -n "$commit" ]] && ld+=" -X $vpkg.GitCommit=$commit"
log "building kueue $KUEUE_VERSION"
mkdir -p "$BIN"
GOBIN="$BIN" go install -trimpath -ldflags "$ld" "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"

rm -rf "$CRDS" && mkdir -p "$CRDS"
cp "$moddir"/config/components/crd/bases/kueue.x-k8s.io_*.yaml "$CRDS/"
rm -rf "$WEBHOOK" && mkdir -p "$WEBHOOK"
cp "$moddir/config/components/webhook/manifests.yaml" "$WEBHOOK/"
chmod u+w "$CRDS"/*.yaml "$WEBHOOK"/*.yaml

[[ -x "$BIN/kueue" ]] || { log "missing $BIN/kueue after build"; exit 1; }
echo "${STAMP_KEY}go=$(go env GOVERSION) $STAMP_REV" >"$STAMP"
END=$(date +%s)
log "done in $((END - START))s: $ROOT ($(du -sh "$BIN/kueue" | cut -f1))"
