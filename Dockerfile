# The operator image: the `torchyard` package WITHOUT extras (no torch), a non-root user and
# nothing else. Build from the repository root:
#   docker build -t ghcr.io/torchyard/operator:0.1.0 .
# Air-gapped (no package index at build time): put the wheels in ./wheelhouse (see
# docs/deploy.md, "Images") and add  --build-arg PIP_SOURCE=wheelhouse
# `make images` (hack/images.sh) builds it that way, on a locally made base when the upstream
# one cannot be pulled:  --build-arg PYTHON_IMAGE=<stand-in>.
# No `# syntax=` line: that would make BuildKit fetch the Dockerfile frontend from Docker Hub,
# which an air-gapped builder cannot reach; the builder's own frontend understands this file.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
# index: pip installs from PyPI (or PIP_INDEX_URL); wheelhouse: only from ./wheelhouse, offline.
ARG PIP_SOURCE=index

FROM ${PYTHON_IMAGE} AS wheels-index
RUN mkdir /wheels

FROM ${PYTHON_IMAGE} AS wheels-wheelhouse
COPY wheelhouse/ /wheels/

# BuildKit builds only the wheels-* stage PIP_SOURCE names.
# hadolint ignore=DL3006
FROM wheels-${PIP_SOURCE} AS build
ARG PIP_SOURCE
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/torchyard
# Dependencies first, in a layer a source change does not invalidate: from the wheelhouse, its
# requirements.txt (the pinned set it was downloaded for) when it has one.
RUN if [ "$PIP_SOURCE" = wheelhouse ] && [ -f /wheels/requirements.txt ]; then \
        grep -v -E '^(torch|nvidia-|triton)' /wheels/requirements.txt > /tmp/requirements.txt \
        && /opt/torchyard/bin/pip install --no-cache-dir --no-index --find-links /wheels \
            -r /tmp/requirements.txt; \
    fi
# Only what the wheel needs (see .dockerignore): metadata first, then the two source roots.
# .dockerignore keeps operator/torchyard_devcluster/ (the dev control plane) out of the build
# context, so the wheel built here has no dev-cluster code; the rm makes that hold even for a
# context that does not honour .dockerignore.
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY trainer_image/torchyard_trainer/ trainer_image/torchyard_trainer/
# `.` = the package's own pinned ranges in pyproject.toml; no [trainer] extra, so no torch.
# With the wheelhouse, the build backend (setuptools, wheel) comes from it too.
RUN rm -rf operator/torchyard_devcluster \
    && if [ "$PIP_SOURCE" = wheelhouse ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels; fi \
    && /opt/torchyard/bin/pip install --no-cache-dir . \
    && /opt/torchyard/bin/python -c "import torchyard.cli" \
    && ! /opt/torchyard/bin/python -c "import torch" 2>/dev/null \
    && ! /opt/torchyard/bin/python -c "import torchyard_devcluster" 2>/dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="torchyard operator" \
      org.opencontainers.image.description="Kopf operator for TrainingJob and CompressionJob" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/torchyard /opt/torchyard
ENV PATH=/opt/torchyard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# A numeric uid/gid so `runAsNonRoot` can be verified by the kubelet (65532: "nonroot"), with a
# passwd entry: Kopf's peering identity calls getpass.getuser(), which fails for a uid without
# one (found by the operator's first run as a pod on a real node).
RUN useradd --uid 65532 --user-group --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin nonroot
USER 65532:65532
# 8080: Prometheus metrics (/metrics, --metrics-port); 8081: Kopf liveness (/healthz, --health-port).
EXPOSE 8080 8081
ENTRYPOINT ["torchyard"]
CMD ["operator", "--all-namespaces"]
