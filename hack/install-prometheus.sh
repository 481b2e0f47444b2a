#!/usr/bin/env bash
# Install Debian's `prometheus` package (prometheus + promtool) for the metrics tests.
# The system service is NOT started: tests run the `prometheus` binary themselves with a
# temporary config and TSDB directory on a free 127.0.0.1 port. Skipped when both binaries
# are already on PATH. Needs root (or sudo) and the Debian archive.
set -euo pipefail

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  command -v prometheus
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-prometheus: needs root or sudo" >&2; exit 1; }
  SUDO="sudo"
fi

# Keep the package's maintainer scripts from starting the service: policy-rc.d exit code 101
# means "action forbidden" to invoke-rc.d (only if no policy is in place already).
policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod 755 "$policy"
  added_policy=1
fi
cleanup() { if [ "$added_policy" = 1 ]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# Stop it anyway if some init system started it (no-op in containers without one).
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  $SUDO systemctl stop prometheus || true
  $SUDO systemctl disable prometheus || true
fi
prometheus --version | head -1 >&2
command -v prometheus
