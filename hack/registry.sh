#!/usr/bin/env bash
# A real OCI registry for the dev setup: CNCF Distribution (github.com/distribution/distribution,
# what Docker Hub's registry image runs) built from the Go module proxy into the cache and run
# as a local process on 127.0.0.1 — the same push/pull flow as a user's own registry.
#
#   hack/registry.sh            # build (or reuse) and start it if it is not answering; prints
#                               # the registry's host:port on its last line
#   hack/registry.sh --build    # only build (or reuse) the binary
#   hack/registry.sh --stop     # stop the registry this script started
#   hack/registry.sh --status   # exit 0 when it answers /v2/
#
# Cache: ${TORCHYARD_CACHE:-$HOME/.cache/torchyard}
#   bin/registry, bin/.registry-build   the binary and its stamp (version); a match skips the build
#   registry/config.yml                 written on each start
#   registry/data/                      the blobs (survive restarts)
#   registry/registry.pid, registry.log
# Docker and containerd treat 127.0.0.0/8 registries as plain-HTTP ("insecure") registries without
# configuration, so no TLS is set up.
set -euo pipefail

REGISTRY_VERSION="${REGISTRY_VERSION:-v3.1.2}"
REGISTRY_ADDR="${TORCHYARD_REGISTRY_ADDR:-127.0.0.1:5000}"
CACHE="${TORCHYARD_CACHE:-$HOME/.cache/torchyard}"
BIN="$CACHE/bin"
REGISTRY="$BIN/registry"
STAMP="$BIN/.registry-build"
STATE="$CACHE/registry"
PIDFILE="$STATE/registry.pid"
MODULE=github.com/distribution/distribution/v3

log() { printf '[registry %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
# Close every descriptor above 2 of this (sub)shell: daemons started from here must not keep
# a caller's files open (see the registry start below).
close_inherited_fds() {
  local fd
  for fd in $(ls /proc/$BASHPID/fd); do
    if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
  done
}

answering() { curl -fsS -o /dev/null --max-time 2 "http://$REGISTRY_ADDR/v2/" 2>/dev/null; }

# The registry's own main (cmd/registry) links every storage driver: the Azure, GCS and AWS SDKs
# were most of its ~6 min build from an empty Go cache. This main is the same program with the
# filesystem and in-memory drivers and htpasswd/token auth only: what a local registry uses.
SLIM_MAIN='package main

import (
	"github.com/distribution/distribution/v3/registry"
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd"
	_ "github.com/distribution/distribution/v3/registry/auth/token"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
)

func main() {
	// RootCmd reports its own errors and exits non-zero on them.
	_ = registry.RootCmd.Execute()
}
'
STAMP_KEY="$REGISTRY_VERSION slim"

build() {
  if [[ -x "$REGISTRY" && "$(cat "$STAMP" 2>/dev/null)" == "$STAMP_KEY" ]]; then
    return 0
  fi
  command -v go >/dev/null || { log "go is required (Go module proxy build)"; exit 1; }
  mkdir -p "$BIN"
  exec 9>"$BIN/.registry-build.lock"
  flock 9
  [[ -x "$REGISTRY" && "$(cat "$STAMP" 2>/dev/null)" == "$STAMP_KEY" ]] && return 0
  log "building $MODULE/registry@$REGISTRY_VERSION (filesystem driver) from the Go module proxy"
  local work
  work="$(mktemp -d)"
  (
    cd "$work"
    export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--mod=mod}"
    printf '%s' "$SLIM_MAIN" >main.go
    go mod init torchyard.local/registry >/dev/null 2>&1
    go get "$MODULE@$REGISTRY_VERSION" >/dev/null 2>&1
    go mod tidy >/dev/null 2>&1
    go build -trimpath -ldflags "-s -w -X $MODULE/version.version=$REGISTRY_VERSION" \
      -o "$REGISTRY.new" .
  ) || { rm -rf "$work"; log "registry build failed"; exit 1; }
  rm -rf "$work"
  mv "$REGISTRY.new" "$REGISTRY"
  "$REGISTRY" --version | grep -q "$REGISTRY_VERSION" \
    || { log "built registry does not report $REGISTRY_VERSION"; exit 1; }
  echo "$STAMP_KEY" >"$STAMP"
}

start() {
  if answering; then
    echo "$REGISTRY_ADDR"
    return 0
  fi
  mkdir -p "$STATE/data"
  # Deletes are allowed so that old tags can be cleaned up with the registry's API.
  cat >"$STATE/config.yml" <<EOF
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $STATE/data
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
health:
  storagedriver:
    enabled: true
EOF
  # setsid + nohup: a stand-alone process that outlives `make images`. Without the caller's
  # other open files: a `flock /tmp/torchyard-real.lock make images` would otherwise stay
  # locked for as long as the registry runs (it inherited the lock's descriptor).
  (close_inherited_fds && exec setsid nohup "$REGISTRY" serve "$STATE/config.yml" \
    >>"$STATE/registry.log" 2>&1 </dev/null) &
  echo $! >"$PIDFILE"
  for _ in $(seq 50); do
    if answering; then
      log "registry $REGISTRY_VERSION on http://$REGISTRY_ADDR (pid $(cat "$PIDFILE"), data $STATE/data)"
      echo "$REGISTRY_ADDR"
      return 0
    fi
    sleep 0.2
  done
  log "registry did not answer on $REGISTRY_ADDR; see $STATE/registry.log"
  tail -n 20 "$STATE/registry.log" >&2 || true
  exit 1
}

stop() {
  [[ -f "$PIDFILE" ]] || { log "no pidfile $PIDFILE"; return 0; }
  local pid
  pid="$(cat "$PIDFILE")"
  # Only the process this script started: its pid and its binary.
  if [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$REGISTRY" ]]; then
    kill "$pid"
    log "stopped registry (pid $pid)"
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  "") build; start ;;
  --build) build ;;
  --stop) stop ;;
  --status) answering ;;
  -h|--help) sed -n '2,19p' "$0" ;;
  *) echo "unknown argument: $1" >&2; exit 2 ;;
esac
