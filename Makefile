# pytorch-cuda — thin wrappers over the CLIs (imagectl, zarrloader, smoke). `make help` lists targets.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON    ?= python3
VENV      ?= .venv
PY        := $(VENV)/bin/python
IMAGECTL  := $(VENV)/bin/imagectl
# Host tests need some CPU build of torch, not the images' 2.6 (which are pinned in the matrix).
HOST_TORCH ?= torch==2.13.0

VARIANT   ?=
TARGET    ?= data
OS_IMAGE  ?=
# The host's CA bundle goes into the build as a BuildKit secret (never a layer): behind a
# TLS-inspecting proxy the build then trusts what the host trusts. `CA_BUNDLE=` turns it off.
CA_BUNDLE ?= $(wildcard /etc/ssl/certs/ca-certificates.crt)
REGISTRY  ?=
IMAGE     ?= pytorch-cuda:v2.6-cu124
EXPECT    ?=
REPORT    ?=

UNLOCKED  ?=
BUILD_FLAGS := $(if $(VARIANT),--variant $(VARIANT)) --target $(TARGET) \
               $(if $(OS_IMAGE),--os-image $(OS_IMAGE)) $(if $(CA_BUNDLE),--ca-bundle $(CA_BUNDLE)) \
               $(if $(UNLOCKED),--unlocked)

.PHONY: help setup docker base-os lock build bake-print variants test test-host smoke-host smoke bench size verify push release diff lint clean

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# Three distributions (src/zarrloader, src/smokesuite, src/imagectl), each editable, + the dev group.
$(VENV)/.installed: pyproject.toml src/zarrloader/pyproject.toml src/smokesuite/pyproject.toml src/imagectl/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(HOST_TORCH)
	@$(PY) -m pip uninstall -y -q pytorch-cuda 2>/dev/null || true  # the single distribution of old checkouts
	$(PY) -m pip install -q -e src/smokesuite -e src/zarrloader -e 'src/imagectl[sbom]'
	$(PY) -m pip install -q --group dev --group bench
	@touch $@

setup: $(VENV)/.installed  ## create the host venv (.venv) with the tools and test deps

docker:  ## install and start a Docker engine + buildx (Debian hosts, root; idempotent)
	@if docker buildx version >/dev/null 2>&1 && docker info >/dev/null 2>&1; then echo "docker engine + buildx: ok"; \
	else bash scripts/install-docker-engine.sh; fi

base-os: docker  ## registry-less OS base: debootstrap + docker import -> pytorch-cuda-os:trixie
	bash docker/bootstrap/build-base-os.sh

lock: setup  ## (re)write images/locks/ from the matrix (hash-locked, per variant/layer/platform) [VARIANT=]
	$(IMAGECTL) lock $(if $(VARIANT),--variant $(VARIANT))

build: setup  ## build VARIANT (default cu124) TARGET=data|torch|base|devel [OS_IMAGE=] [CA_BUNDLE=] [UNLOCKED=1]
	@$(IMAGECTL) build $(BUILD_FLAGS) --dry-run >/dev/null  # an unknown variant fails here, before any Docker work
	@$(MAKE) --no-print-directory docker
	$(IMAGECTL) build $(BUILD_FLAGS)

bake-print: setup  ## print the resolved bake plan of the `all` group as JSON
	@$(IMAGECTL) bake-plan all $(if $(OS_IMAGE),--os-image $(OS_IMAGE))

variants: setup  ## list the variants in images/matrix.toml
	@$(IMAGECTL) variants

test: setup  ## lock check, host tests (tests/) and the smoke suite on this host
	$(IMAGECTL) lock --check
	@# one pytest process per group: the storage tests start many native client threads (obstore's Rust
	@# runtime, aiobotocore loops, rclone servers); a fresh process per group keeps them from piling up.
	$(PY) -m pytest tests -q -p no:cacheprovider --ignore=tests/zarrloader --ignore=tests/faults
	$(PY) -m pytest tests/faults -q -p no:cacheprovider
	$(PY) -m pytest tests/zarrloader -q -p no:cacheprovider
	$(VENV)/bin/smoke --expect $(or $(EXPECT),cpu) --report build/smoke-host.json

smoke: setup  ## run the smoke suite inside IMAGE [EXPECT=cpu|gpu] [REPORT=file]
	$(IMAGECTL) smoke $(IMAGE) $(if $(EXPECT),--expect $(EXPECT)) $(if $(REPORT),--report $(REPORT))

verify: setup  ## check IMAGE against the matrix: versions, non-root, pip check, no secrets
	$(IMAGECTL) verify $(IMAGE) $(if $(CA_BUNDLE),--host-ca-bundle $(CA_BUNDLE))

size: setup  ## per-layer sizes and largest paths of IMAGE
	$(IMAGECTL) size $(IMAGE)

bench: setup  ## zarrloader read benchmark on an embedded S3 server (quick)
	$(VENV)/bin/zarrloader bench --quick

release: setup  ## smoke + gate + push VARIANT to REGISTRY in one process (what CI runs) [ALLOW_CPU_ONLY=1]
	@test -n "$(REGISTRY)" || { echo "make release needs REGISTRY=host[:port][/namespace], e.g. REGISTRY=ghcr.io/acme" >&2; exit 2; }
	$(IMAGECTL) release $(if $(VARIANT),--variant $(VARIANT)) --registry $(REGISTRY) $(if $(ALLOW_CPU_ONLY),--allow-cpu-only)

diff: setup  ## packages and layers that differ between A and B (make diff A=img1 B=img2)
	$(IMAGECTL) diff $(A) $(B)

push: setup  ## push VARIANT to REGISTRY, only if its exact image passed the smoke suite [ALLOW_CPU_ONLY=1] [REPORT=]
	@test -n "$(REGISTRY)" || { echo "make push needs REGISTRY=host[:port][/namespace], e.g. REGISTRY=ghcr.io/acme" >&2; exit 2; }
	$(IMAGECTL) push $(if $(VARIANT),--variant $(VARIANT)) --registry $(REGISTRY) \
		$(if $(ALLOW_CPU_ONLY),--allow-cpu-only) $(if $(REPORT),--report $(REPORT))

lint: setup  ## ruff, hadolint, shellcheck, actionlint
	bash scripts/lint.sh

clean:  ## remove build outputs (not the venv, not images)
	rm -rf build .pytest_cache
