#!/usr/bin/env bash
# `make images`: build the operator image and the trainer image (CPU and CUDA variants) with the
# Docker engine, push them to the local registry (hack/registry.sh) and print their sizes.
#
#   hack/images.sh                 # everything; a second run with nothing changed is fast
#   hack/images.sh --no-push       # build only
#   hack/images.sh --wheelhouse    # only the base image and the wheelhouses (then stop)
#
# Environment:
#   TORCHYARD_CACHE       cache root (default ~/.cache/torchyard); nothing is written in the clone
#   IMAGE_TAG             tag of the images (default dev; the CPU trainer is <tag>-cpu)
#   TRAINER_VARIANTS      trainer variants to build (default "cpu cuda")
#   TORCHYARD_REGISTRY_ADDR  the registry to push to (default 127.0.0.1:5000, started here)
#
# What it does, each step skipped when its stamp/cache already matches:
#  1. Docker: installs Debian's docker.io when dockerd is missing and starts dockerd when it does
#     not answer (a stand-alone process: pidfile /var/run/docker.pid, log in the cache).
#  2. Base image: the Dockerfiles' upstream FROMs (python:3.12-slim-bookworm, nvidia/cuda) stay
#     their defaults. When Docker Hub cannot be reached (this project's CI: only package registries
#     are), a stand-in base is made locally: `mmdebstrap` of Debian bookworm + python3 (the
#     tarball is cached) -> `docker import`, and passed by build arg.
#  3. Wheelhouse: the host resolves (uv) and downloads (pip) every Python dependency of each image
#     for the base's Python (linux x86_64) into $TORCHYARD_CACHE/wheelhouse/<image>; the builds
#     install only from it (PIP_SOURCE=wheelhouse -> pip --no-index): no network inside
#     `docker build`, the same path air-gapped users take (docs/deploy.md).
#  4. Build context: the allow-listed sources + the wheelhouse (hard links) in
#     $TORCHYARD_CACHE/images/context; BuildKit sends only what changed.
#  5. Builds, pushes to the registry (skopeo: OCI manifests, zstd layers), prints sizes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${TORCHYARD_CACHE:-$HOME/.cache/torchyard}"
IMAGES="$CACHE/images"
WHEELHOUSE="$CACHE/wheelhouse"
CONTEXT="$IMAGES/context"
TAG="${IMAGE_TAG:-dev}"
VARIANTS="${TRAINER_VARIANTS:-cpu cuda}"
PUSH=1
ONLY_WHEELHOUSE=0
case "${1:-}" in
  --no-push) PUSH=0 ;;
  --wheelhouse) ONLY_WHEELHOUSE=1 ;;
  "") ;;
  *) echo "unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
esac

# The stand-in base: the Debian release and Python of python:3.12-slim-bookworm's distribution
# (bookworm ships Python 3.11). Bump STANDIN_REV to rebuild it.
SUITE=bookworm
STANDIN_PACKAGES="python3,python3-venv,python-is-python3,ca-certificates,passwd"
STANDIN_REV=1
STANDIN_IMAGE="torchyard/stand-in-python:3-$SUITE"
UPSTREAM_PROBE="python:3.12-slim-bookworm"

# Debian's CLI (20.10) has BuildKit built in; a newer CLI elsewhere on PATH may lack buildx.
DOCKER="$(command -v /usr/bin/docker || command -v docker || true)"
export DOCKER_BUILDKIT=1

log() { printf '[images %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# Close every descriptor above 2 of this (sub)shell, for the daemons started here.
close_inherited_fds() {
  local fd
  for fd in $(ls /proc/$BASHPID/fd); do
    if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
  done
}

ensure_docker() {
  if [[ ! -x /usr/sbin/dockerd ]] && ! command -v dockerd >/dev/null; then
    log "installing Debian's docker.io"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y \
      --no-install-recommends docker.io >&2
    DOCKER=/usr/bin/docker
  fi
  if "$DOCKER" info >/dev/null 2>&1; then return 0; fi
  mkdir -p "$IMAGES"
  log "starting dockerd (log $IMAGES/dockerd.log)"
  # Without the caller's other open files (a `flock … make images` lock among them: dockerd
  # would hold it for as long as it runs).
  (cd / && close_inherited_fds && exec setsid nohup "$(command -v dockerd || echo /usr/sbin/dockerd)" \
    --pidfile /var/run/docker.pid >>"$IMAGES/dockerd.log" 2>&1 </dev/null) &
  for _ in $(seq 60); do
    "$DOCKER" info >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  log "dockerd did not start; see $IMAGES/dockerd.log"
  tail -n 20 "$IMAGES/dockerd.log" >&2
  exit 1
}

# True when the Dockerfiles' own upstream bases can be used (already here or pullable).
upstream_reachable() {
  "$DOCKER" image inspect "$UPSTREAM_PROBE" >/dev/null 2>&1 && return 0
  timeout 60 "$DOCKER" pull -q "$UPSTREAM_PROBE" >/dev/null 2>&1
}

ensure_standin() {
  local key tarball
  key="$(echo "$SUITE $STANDIN_PACKAGES $STANDIN_REV" | sha256sum | cut -c1-12)"
  tarball="$IMAGES/stand-in-$SUITE-$key.tar"
  if [[ "$("$DOCKER" image inspect -f '{{index .Config.Labels "io.torchyard.standin"}}' \
      "$STANDIN_IMAGE" 2>/dev/null)" == "$key" ]]; then
    return 0
  fi
  if [[ ! -s "$tarball" ]]; then
    command -v mmdebstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get \
      -o DPkg::Lock::Timeout=600 install -y --no-install-recommends mmdebstrap >&2
    log "making the stand-in base: mmdebstrap $SUITE + $STANDIN_PACKAGES (a few minutes, once)"
    # Docs, man pages and apt lists are left out, as Debian's own slim images do.
    mmdebstrap --variant=apt --include="$STANDIN_PACKAGES" \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
      --format=tar "$SUITE" "$tarball.part" \
      "deb http://deb.debian.org/debian $SUITE main" \
      "deb http://deb.debian.org/debian $SUITE-updates main" \
      "deb http://deb.debian.org/debian-security $SUITE-security main" >&2
    mv "$tarball.part" "$tarball"
  fi
  log "importing $tarball as $STANDIN_IMAGE"
  "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL io.torchyard.standin=$key" \
    --change 'CMD ["python3"]' \
    "$tarball" "$STANDIN_IMAGE" >/dev/null
}

# Python "X.Y" of an image (the wheelhouse is downloaded for it).
python_of() { "$DOCKER" run --rm --entrypoint python3 "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }

# The build backend's, the project's and extra $1's requirements, one a line.
dependency_lists() {
  python3 -c 'import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))
extra = p["project"]["optional-dependencies"].get(sys.argv[2], []) if sys.argv[2] else []
print("\n".join(p["build-system"]["requires"] + p["project"]["dependencies"] + extra))' \
    "$ROOT/pyproject.toml" "$1"
}

# $1: image name (operator|trainer), $2: extras ("" or "trainer"), $3: Python X.Y
ensure_wheelhouse() {
  local name="$1" extra="$2" py="$3" dir="$WHEELHOUSE/$1" uv key
  # Keyed on the dependency lists only, not the whole pyproject.toml: a change to its tool
  # settings must not re-resolve (newer wheels) nor change the context's wheelhouse (its .stamp
  # too), which would rebuild the image's dependencies layer.
  key="$( (dependency_lists "$extra"; echo "$extra $py manylinux_2_36 v3") | sha256sum | cut -c1-16)"
  if [[ "$(cat "$dir/.stamp" 2>/dev/null)" == "$key" ]]; then return 0; fi
  uv="$CACHE/bootstrap/bin/uv"
  if [[ ! -x "$uv" ]]; then  # the same bootstrap as hack/setup-venv.sh
    python3 -m venv "$CACHE/bootstrap"
    "$CACHE/bootstrap/bin/pip" install --quiet --disable-pip-version-check "uv>=0.4,<1"
  fi
  mkdir -p "$dir"
  log "wheelhouse $name: resolving for CPython $py linux x86_64"
  # The build backend ([build-system] requires) too: the image builds torchyard's wheel offline.
  python3 -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))
    ["build-system"]["requires"]))' "$ROOT/pyproject.toml" >"$dir/build-system.in"
  UV_CACHE_DIR="$CACHE/uv" "$uv" pip compile "$ROOT/pyproject.toml" "$dir/build-system.in" \
    ${extra:+--extra "$extra"} --python-version "$py" --python-platform x86_64-manylinux_2_36 \
    --no-header --no-annotate --quiet -o "$dir/requirements.txt"
  # glibc 2.36 (bookworm) runs every manylinux_2_17 .. 2_36 wheel; pip wants them listed.
  local plats=() v
  for v in $(seq 36 -1 17); do plats+=(--platform "manylinux_2_${v}_x86_64"); done
  log "wheelhouse $name: downloading into $dir"
  "$CACHE/bootstrap/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: "${plats[@]}" --platform manylinux2014_x86_64 \
    --python-version "$py" --implementation cp --abi "cp${py/./}" \
    -d "$dir" -r "$dir/requirements.txt" >&2
  echo "$key" >"$dir/.stamp.new" && mv "$dir/.stamp.new" "$dir/.stamp"
  log "wheelhouse $name: $(find "$dir" -name '*.whl' | wc -l) wheels, $(du -sh "$dir" | cut -f1)"
}

# The build context of image $1: what .dockerignore allows, plus its wheelhouse as ./wheelhouse
# (hard links, no copy). One context per image, so the operator's build never sees torch's wheels.
sync_context() {
  local name="$1" ctx="$CONTEXT/$1" f
  mkdir -p "$ctx"
  rm -rf "$ctx/src.new" && mkdir -p "$ctx/src.new"
  (cd "$ROOT" && git ls-files -z -- pyproject.toml README.md .dockerignore operator \
      trainer_image/torchyard_trainer \
    | xargs -0 cp --parents -p -t "$ctx/src.new")
  # Unchanged files keep their mtime (cp -p), so BuildKit's incremental transfer skips them.
  for f in pyproject.toml README.md .dockerignore operator trainer_image; do
    rm -rf "${ctx:?}/$f"
    mv "$ctx/src.new/$f" "$ctx/$f"
  done
  rm -rf "$ctx/src.new"
  [[ -f "$WHEELHOUSE/$name/.stamp" ]] || { mkdir -p "$ctx/wheelhouse"; return 0; }
  if [[ "$(cat "$ctx/wheelhouse/.stamp" 2>/dev/null)" != "$(cat "$WHEELHOUSE/$name/.stamp")" ]]; then
    rm -rf "$ctx/wheelhouse"
    cp -al "$WHEELHOUSE/$name" "$ctx/wheelhouse" 2>/dev/null || cp -a "$WHEELHOUSE/$name" "$ctx/wheelhouse"
    # The stamp is a copy, not a link: it must keep saying which wheelhouse the context holds.
    rm -f "$ctx/wheelhouse/.stamp" && cp "$WHEELHOUSE/$name/.stamp" "$ctx/wheelhouse/.stamp"
  fi
}

build() {  # $1: image (context name), $2: tag, rest: docker build arguments
  local name="$1" tag="$2" start
  shift 2
  sync_context "$name"
  start=$(date +%s)
  log "building $tag"
  "$DOCKER" build --progress=plain -t "$tag" "$@" "$CONTEXT/$name" >"$IMAGES/build-${tag//[\/:]/_}.log" 2>&1 \
    || { tail -n 40 "$IMAGES/build-${tag//[\/:]/_}.log" >&2; log "build of $tag failed"; exit 1; }
  log "built $tag in $(($(date +%s) - start))s"
  BUILT+=("$tag")
}

# The manifest digest the registry serves for tag $1 (empty when none).
pushed_digest() {
  local ref="$1" host rest
  host="${ref%%/*}" rest="${ref#*/}"
  curl -fsS --max-time 10 -o /dev/null -D - -I \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json' \
    "http://$host/v2/${rest%:*}/manifests/${rest##*:}" 2>/dev/null \
    | tr -d '\r' | awk -F': ' 'tolower($1) == "docker-content-digest" { print $2 }' || true
}

# Push tag $1 with skopeo: OCI manifest, zstd layers (containerd >= 1.5 pulls them). Beside
# `docker push` (gzip) in one run, for the CPU trainer: 0.71x the push time and 0.66x the node's
# pull + unpack (bench/image_push.py). Skipped when the registry still serves what the last push
# of this same image (Docker image id) wrote: skopeo reads the whole image from Docker first.
push() {
  local tag="$1" id start stamp
  stamp="$IMAGES/pushed/${tag//[\/:]/_}"
  id="$("$DOCKER" image inspect -f '{{.Id}}' "$tag")"
  if [[ -s "$stamp" && "$(head -n1 "$stamp")" == "$id" \
      && "$(pushed_digest "$tag")" == "$(sed -n 2p "$stamp")" ]]; then
    log "$tag: the registry has this image ($(sed -n 2p "$stamp" | cut -c1-19))"
    return 0
  fi
  start=$(date +%s)
  log "pushing $tag (OCI, zstd)"
  mkdir -p "$IMAGES/pushed"
  # --insecure-policy: no signature policy for our own image going to our own registry (a
  # machine may lack /etc/containers/policy.json).
  skopeo --insecure-policy copy --quiet --format oci --dest-compress-format zstd \
    --dest-tls-verify=false \
    --digestfile "$stamp.digest" "docker-daemon:$tag" "docker://$tag" >&2
  printf '%s\n%s\n' "$id" "$(cat "$stamp.digest")" >"$stamp" && rm -f "$stamp.digest"
  log "pushed $tag in $(($(date +%s) - start))s"
}

ensure_skopeo() {
  command -v skopeo >/dev/null && return 0
  log "installing Debian's skopeo"
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y \
    --no-install-recommends skopeo >&2
}

main() {
  ensure_docker
  local registry py base_args=() op_args=() tr_args=()
  # The registry is built and started just before the push: its Go build waits until the
  # images are built (and is not spent when a build fails).
  registry="${TORCHYARD_REGISTRY_ADDR:-127.0.0.1:5000}"
  if [[ "${TORCHYARD_IMAGES_UPSTREAM:-auto}" != 0 ]] && upstream_reachable; then
    log "upstream bases are reachable: building with the Dockerfiles' defaults from the index"
  else
    log "upstream bases cannot be pulled here: stand-in base + wheelhouse"
    ensure_standin
    py="$(python_of "$STANDIN_IMAGE")"
    ensure_wheelhouse operator "" "$py"
    [[ -z "$VARIANTS" ]] || ensure_wheelhouse trainer trainer "$py"
    base_args=(--build-arg PIP_SOURCE=wheelhouse)
    op_args=(--build-arg "PYTHON_IMAGE=$STANDIN_IMAGE")
    tr_args=(--build-arg "CUDA_IMAGE=$STANDIN_IMAGE" --build-arg "CPU_IMAGE=$STANDIN_IMAGE")
  fi
  [[ $ONLY_WHEELHOUSE == 0 ]] || return 0
  BUILT=()
  build operator "$registry/torchyard/operator:$TAG" -f "$ROOT/Dockerfile" "${base_args[@]}" "${op_args[@]}"
  local variant suffix
  for variant in $VARIANTS; do
    suffix=""; [[ "$variant" == cpu ]] && suffix="-cpu"
    build trainer "$registry/torchyard/trainer:$TAG$suffix" -f "$ROOT/trainer_image/Dockerfile" \
      --build-arg "VARIANT=$variant" "${base_args[@]}" "${tr_args[@]}"
  done
  local tag
  if [[ $PUSH == 1 ]]; then
    ensure_skopeo
    [[ "$(bash "$ROOT/hack/registry.sh" | tail -n1)" == "$registry" ]] \
      || { log "hack/registry.sh serves another address than $registry"; exit 1; }
    for tag in "${BUILT[@]}"; do push "$tag"; done
  fi
  echo "image sizes:"
  for tag in "${BUILT[@]}"; do
    "$DOCKER" image inspect -f "{{.Size}}" "$tag" \
      | awk -v t="$tag" '{ printf "  %-52s %8.1f MB\n", t, $1 / 1e6 }'
  done
}

main
