#!/usr/bin/env bash
# Build the Kubeflow controllers that bench/kubeflow_compare.py runs beside torchyard, from the
# Go module proxy, no Docker, and copy their CRDs and webhook manifests out of the same module
# zips (torchyard_devcluster.kubeflow runs them as local processes, like kueue.py):
#   jobset            sigs.k8s.io/jobset (main.go)                    JobSet controller
#   trainer           github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager   (Trainer v2)
#   training-operator github.com/kubeflow/training-operator/cmd/training-operator.v1 (PyTorchJob)
#
#   hack/build-kubeflow.sh [--force] [--print-dir] [jobset|trainer|training-operator ...]
#
# Output: ${TORCHYARD_CACHE:-$HOME/.cache/torchyard}/kubeflow/<component>-<version>/
#   bin/<component>   the manager binary
#   crds/*.yaml       the module's CRDs, unmodified
#   webhook/*.yaml    the module's webhook manifests, unmodified
#   .stamp            the pinned version; when it matches and the files are present, no build
# A component that cannot be built leaves BUILD-FAILED.txt (the command and its error) in its
# folder and the script goes on with the next one; it exits 1 if any failed.
# Builds are slow on the shared 2-core machine: they run under `nice`, with -trimpath and the
# shared Go build cache (GOCACHE, default ~/.cache/go-build, where the control plane's and
# Kueue's Kubernetes packages already are); nice keeps them behind the tests.
set -uo pipefail

TRAINER_VERSION="${TRAINER_VERSION:-v2.0.0}"
# Trainer v2.0.0's go.mod requires exactly this JobSet; the proxy serves it but refuses to list.
JOBSET_VERSION="${JOBSET_VERSION:-v0.8.2}"
TRAINING_OPERATOR_VERSION="${TRAINING_OPERATOR_VERSION:-v1.8.1}"

export GOTOOLCHAIN=local
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

CACHE="${TORCHYARD_CACHE:-$HOME/.cache/torchyard}"
STAMP_REV="v=1"

FORCE=0
PRINT=0
WANT=()
for arg in "$@"; do
  case "$arg" in
    --print-dir) PRINT=1 ;;
    --force) FORCE=1 ;;
    jobset|trainer|training-operator) WANT+=("$arg") ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done
[[ ${#WANT[@]} -gt 0 ]] || WANT=(jobset trainer training-operator)
if [[ $PRINT == 1 ]]; then echo "$CACHE/kubeflow"; exit 0; fi

log() { printf '[build-kubeflow %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# component -> module, version, package, CRD dir (in the module), webhook file (in the module)
spec() {
  case "$1" in
    jobset) echo "sigs.k8s.io/jobset $JOBSET_VERSION sigs.k8s.io/jobset config/components/crd/bases config/components/webhook/manifests.yaml" ;;
    trainer) echo "github.com/kubeflow/trainer/v2 $TRAINER_VERSION github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager manifests/base/crds manifests/base/webhook/manifests.yaml" ;;
    training-operator) echo "github.com/kubeflow/training-operator $TRAINING_OPERATOR_VERSION github.com/kubeflow/training-operator/cmd/training-operator.v1 manifests/base/crds manifests/base/webhook/manifests.yaml" ;;
  esac
}

build_one() {
  local name="$1" module version pkg crddir webhook
  read -r module version pkg crddir webhook <<<"$(spec "$name")"
  local root="$CACHE/kubeflow/$name-$version"
  local stamp="$root/.stamp" key="$name=$version "
  if [[ $FORCE == 0 && -f "$stamp" && -x "$root/bin/$name" && "$(cat "$stamp")" == "$key"*" $STAMP_REV" ]]; then
    log "cached $name matches ($(cat "$stamp")): $root"
    return 0
  fi
  mkdir -p "$root/bin"
  exec 9>"$root/.build.lock"
  flock 9
  rm -f "$stamp" "$root/BUILD-FAILED.txt"
  local start info moddir gomod
  start=$(date +%s)
  if ! info=$(go mod download -json "$module@$version" 2>&1); then
    printf 'go mod download -json %s@%s\n%s\n' "$module" "$version" "$info" >"$root/BUILD-FAILED.txt"
    log "cannot download $module@$version (see $root/BUILD-FAILED.txt)"; return 1
  fi
  moddir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$info" | head -n1)
  gomod=$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' <<<"$info" | head -n1)
  # `go install mod@version` refuses modules with replace/exclude directives.
  if grep -Eq '^[[:space:]]*(replace|exclude)([[:space:](]|$)' "$gomod"; then
    echo "$module@$version go.mod has replace/exclude directives: needs a wrapper module" >"$root/BUILD-FAILED.txt"
    log "$(cat "$root/BUILD-FAILED.txt")"; return 1
  fi
  log "building $name $version ($pkg)"
  # `go build` inside the downloaded module, not `go install mod@version`: the latter asks the
  # proxy for the module's version list (deprecation check), which the proxy refuses for
  # sigs.k8s.io/jobset (403 "This module version is not available."). Same go.mod and go.sum.
  local rel=".${pkg#"$module"}"
  local cmd=(nice -n 10 go build -p 2 -trimpath -ldflags "-s -w" -o "$root/bin/$name.tmp" "$rel")
  if ! (cd "$moddir" && "${cmd[@]}") >"$root/build.log" 2>&1; then
    { echo "(cd $moddir && ${cmd[*]})"; tail -n 40 "$root/build.log"; } >"$root/BUILD-FAILED.txt"
    log "build of $name failed (see $root/BUILD-FAILED.txt)"; return 1
  fi
  mkdir -p "$root/bin" && mv "$root/bin/$name.tmp" "$root/bin/$name"
  rm -rf "$root/crds" "$root/webhook" && mkdir -p "$root/crds" "$root/webhook"
  cp "$moddir/$crddir"/*.yaml "$root/crds/"
  rm -f "$root/crds/kustomization.yaml"
  [[ -f "$moddir/$webhook" ]] && cp "$moddir/$webhook" "$root/webhook/manifests.yaml"
  chmod -R u+w "$root/crds" "$root/webhook"
  echo "${key}go=$(go env GOVERSION) $STAMP_REV" >"$stamp"
  log "done $name in $(( $(date +%s) - start ))s: $root/bin/$name"
}

command -v go >/dev/null || { log "Go is needed"; exit 1; }
rc=0
for c in "${WANT[@]}"; do build_one "$c" || rc=1; done
exit $rc
