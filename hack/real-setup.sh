#!/usr/bin/env bash
# What the real-node tier (tests/real) needs before pytest starts, as fast as one machine allows:
# the node binaries (hack/build-node.sh: kubelet, kube-proxy, CoreDNS, pause; Go builds, CPU)
# build in the background while hack/images.sh installs Docker, makes the stand-in base,
# downloads the wheelhouse (network), builds the CPU trainer and the operator image, builds and
# starts the registry and pushes. Each step is skipped when its cache matches, so a second run
# only re-checks. Run by `make test` and `make test-real`; needs root (Docker, the real node).
#
#   hack/real-setup.sh                # in the foreground (make test-real)
#   hack/real-setup.sh --background   # detached, for `make test`: the other tiers' tests run
#                                     # meanwhile (mostly waiting on the control plane), and
#                                     # tests/real/conftest.py waits for the status file
# --background reports in $TORCHYARD_REAL_SETUP_STATUS (default $CACHE/real-setup.status):
# "starting", "running PID", then "ok" or "failed RC"; its log is the same path with .log.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${TORCHYARD_CACHE:-$HOME/.cache/torchyard}"
mkdir -p "$CACHE"

log() { printf '[real-setup %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

if [[ "${1:-}" == --background ]]; then
  status="${TORCHYARD_REAL_SETUP_STATUS:-$CACHE/real-setup.status}"
  mkdir -p "$(dirname "$status")"
  echo starting >"$status"
  # Without the caller's open files (make's jobserver, a flock held around `make test`).
  (
    for fd in $(ls /proc/$BASHPID/fd); do
      if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    exec setsid nohup bash "${BASH_SOURCE[0]}" --report "$status" >"${status%.status}.log" 2>&1 </dev/null
  ) &
  log "started in the background (status $status, log ${status%.status}.log)"
  exit 0
fi
if [[ "${1:-}" == --report ]]; then
  status="$2"
  echo "running $$" >"$status"
  trap 'rc=$?; if ((rc == 0)); then echo ok >"$status"; else echo "failed $rc" >"$status"; fi' EXIT
fi
# One setup at a time on a machine (two `make test`s share the cache, Docker and the registry).
exec 8>"$CACHE/.real-setup.lock"
flock 8

# Debian's parts of the real node (torchyard_devcluster.realstate.check_host, tests/real's
# busybox image) and of hack/images.sh (Docker, skopeo), in one apt call.
PACKAGES=(docker.io containerd runc containernetworking-plugins iptables iproute2 busybox-static skopeo)

start=$(date +%s)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing Debian's ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y \
    --no-install-recommends "${missing[@]}" >&2 \
    || { apt-get -o DPkg::Lock::Timeout=600 update >&2 && DEBIAN_FRONTEND=noninteractive \
      apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}" >&2; }
fi
node_log="$CACHE/build-node.log"
bash "$ROOT/hack/build-node.sh" >"$node_log" 2>&1 &
node_pid=$!
# Stop the background build too when images.sh fails (set -e ends the script there).
TRAINER_VARIANTS=cpu bash "$ROOT/hack/images.sh" || { kill "$node_pid" 2>/dev/null; exit 1; }
images_done=$(date +%s)

if ! wait "$node_pid"; then
  tail -n 40 "$node_log" >&2
  log "hack/build-node.sh failed (log: $node_log)"
  exit 1
fi
grep -E '^\[build-node' "$node_log" | tail -n 3 >&2 || true
log "images $((images_done - start))s, node binaries ready after $(($(date +%s) - start))s"
