# The two commands of the README:
#   make run    set up from nothing and run the main example with `torchyard run`
#   make test   set up from nothing (venv, control plane, images, real node) and run every
#               test tier
# Caches (wheels, Go builds, control-plane binaries) live in $(TORCHYARD_CACHE), outside the clone.
SHELL := /bin/bash
export TORCHYARD_CACHE ?= $(HOME)/.cache/torchyard
VENV := .venv
PY := $(VENV)/bin/python
EXAMPLE ?= examples/digits-ddp.yaml
PYTEST_ARGS ?=

.PHONY: run test venv lint typecheck unit crds docs control-plane clean

run: venv
	$(VENV)/bin/torchyard run $(EXAMPLE)

# The real-node tier (tests/real) runs where it can: as root (Docker, bridges, iptables,
# cgroups, mounts); elsewhere it is skipped, and pytest says why. Its setup (Debian packages,
# images, registry, node binaries: 13 min from an empty cache) runs in the background while
# the chart, cluster and end-to-end tiers run (they mostly wait on the control plane); the
# real tier's first fixture waits for it (tests/real/conftest.py, wait_for_real_setup).
ifeq ($(shell id -u),0)
REAL_SETUP_STATUS := $(TORCHYARD_CACHE)/real-setup.status
TEST_REAL_ENV := TORCHYARD_REAL=1 TORCHYARD_REAL_SETUP_STATUS=$(REAL_SETUP_STATUS)
endif

test: venv control-plane tools lint typecheck
ifdef REAL_SETUP_STATUS
	@TORCHYARD_REAL_SETUP_STATUS=$(REAL_SETUP_STATUS) bash hack/real-setup.sh --background
endif
	$(TEST_REAL_ENV) $(PY) -m pytest $(PYTEST_ARGS)

venv:
	@bash hack/setup-venv.sh

# The dev control plane and Kueue (tests/cluster/test_operator_kueue.py), both built from the Go
# module proxy into $(TORCHYARD_CACHE); a matching stamp skips each build.
control-plane: venv
	@if [ -x hack/build-control-plane.sh ]; then bash hack/build-control-plane.sh; fi
	@if [ -x hack/build-kueue.sh ]; then bash hack/build-kueue.sh; fi

# Helm (built from the Go module proxy into $(TORCHYARD_CACHE)/bin), Debian's prometheus +
# promtool (apt; the service is not started), and upstream Prometheus with Kubernetes service
# discovery (Debian's has none; built from the Go module proxy, cached): what tests/chart and
# tests/e2e need.
.PHONY: tools
tools:
	@bash hack/install-helm.sh
	@bash hack/install-prometheus.sh
	@bash hack/build-prometheus.sh

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check operator/torchyard/api operator/torchyard/crd.py
	$(VENV)/bin/lint-imports

typecheck: venv
	$(PY) -m mypy operator/torchyard operator/torchyard_devcluster trainer_image/torchyard_trainer

unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# Regenerate the CRDs, the Helm chart's copy (files/crds, read by templates/crds.yaml so that
# `helm upgrade` upgrades them), docs/api.md from the API models, and the chart README's
# parameter table from the comments of values.yaml.
crds: venv
	$(VENV)/bin/torchyard crds --output-dir crds
	$(PY) -c "from torchyard.crd import render_api_docs; open('docs/api.md','w').write(render_api_docs())"
	@if [ -d charts/torchyard ]; then mkdir -p charts/torchyard/files/crds && cp crds/*.yaml charts/torchyard/files/crds/; fi
	$(PY) hack/chart-readme.py

docs: crds

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# Both images (operator; trainer CUDA default + `-cpu` variant) built with the Docker engine from
# a wheelhouse the host downloads, pushed to the local OCI registry (CNCF Distribution, built from
# the Go module proxy, on 127.0.0.1:5000), sizes printed. Everything is cached in
# $(TORCHYARD_CACHE); a second run with nothing changed only re-checks. Not part of `make test`.
.PHONY: images registry test-real
images:
	@bash hack/images.sh

# The real-node tier (tests/real): the chart's operator and the workers as pods run by a real
# kubelet + containerd on this machine, images built by hack/images.sh (CPU trainer only) and
# pulled from the local registry. Needs root. hack/real-setup.sh builds the node binaries in
# the background while the images build (docs/deploy.md, "The real tier").
.PHONY: real-setup
real-setup:
	@bash hack/real-setup.sh

test-real: venv control-plane tools real-setup
	TORCHYARD_REAL=1 $(PY) -m pytest tests/real $(PYTEST_ARGS)

registry:
	@bash hack/registry.sh
