# batchcompute-operator: every target is a one-liner; `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCKS := requirements.lock requirements-dev.lock
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCKS) | sha1sum | cut -c1-12)
# The version is written once, in pyproject.toml; everything below derives from it.
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
IMAGE_REPO ?= ghcr.io/batchcompute-operator/batchcompute-operator
IMAGE ?= $(IMAGE_REPO):$(VERSION)
# The ARM emulator for `make e2e` (the Dockerfile's `emulator` stage); never released.
EMULATOR_IMAGE ?= $(IMAGE_REPO)-e2e-emulator:$(VERSION)
KIND_CLUSTER ?= batchcompute-e2e
# The Pythons the unit suite runs on (`make test-pythons`); pyproject's classifiers list
# the same (tests/unit/test_release_packaging.py).
PYTHON_VERSIONS ?= 3.11 3.12 3.13
UV_VERSION := 0.13.9
N ?= 1000
PYTEST_ARGS ?=
export PYTHONPATH := $(CURDIR)/operator

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP):
	bash hack/venv.sh $(PYTHON) $(VENV)

.PHONY: venv
venv: $(STAMP) ## create .venv from requirements-dev.lock (--require-hashes)

.PHONY: lock
lock: ## re-resolve requirements.lock and requirements-dev.lock from pyproject.toml (uv, hashes)
	UV_VERSION=$(UV_VERSION) PYTHON=$(PYTHON) LOCK_TOOLS_VENV=$(VENV)/lock-tools bash hack/lock.sh

.PHONY: controlplane
controlplane: ## install etcd and build (once, cached) kube-apiserver for the test bed
	@bash hack/install-controlplane.sh >/dev/null
	@bash hack/build-apiextensions-apiserver.sh >/dev/null || true

.PHONY: test
test: venv controlplane test-pythons ## unit tests on every Python, SDK v1 interop, integration tests on a real kube-apiserver + the ARM emulator, the e2e rehearsal
	$(MAKE) --no-print-directory test-interop
	$(BIN)/pytest tests/integration -q $(PYTEST_ARGS)
	$(BIN)/python hack/e2e/rehearse.py

.PHONY: test-pythons
test-pythons: venv ## the unit suite on each of PYTHON_VERSIONS, two at a time (.venv serves its own; others: .venv/pythons/3.X)
	@bash hack/test-pythons.sh $(VENV) "$(PYTHON_VERSIONS)" $(PYTEST_ARGS)

.PHONY: test-interop
test-interop: venv controlplane ## Azure ML SDK v1 (its own cached venv) against the emulator and the running operator, network-isolated
	@command -v ip >/dev/null || { apt-get update -qq && apt-get install -y -qq iproute2; }
	@set -o pipefail; py="$$(bash hack/sdkv1-venv.sh | tail -n 1)" && BCO_SDKV1_PYTHON="$$py" \
	  unshare --net -- sh -c 'ip link set lo up && exec $(BIN)/pytest tests/interop -q $(PYTEST_ARGS)'

.PHONY: lint
lint: venv ## ruff, and the import layering (spec and reconcile stay pure)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

.PHONY: typecheck
typecheck: venv ## mypy --strict on the packages
	$(BIN)/mypy

.PHONY: demo
demo: venv controlplane ## attach and detach a Batch account end to end, locally, in one command
	$(BIN)/python -m batchcompute_testbed.demo

.PHONY: run
run: venv ## run the operator against the current kubeconfig (BCO_* variables configure it)
	$(BIN)/python -m batchcompute_operator

.PHONY: bench
bench: venv controlplane ## N=1000 three times (medians), the 100/300 curve, metrics cost, kopf's floor, 10 000 attachments
	$(BIN)/python -m bench --n $(N) --repeat 3 --curve 100,300 --metrics-cost --kopf-floor --footprint 10000

.PHONY: version
version: ## print the version (pyproject.toml) and the image it is released as
	@echo "$(VERSION) $(IMAGE_REPO):$(VERSION) (git tag v$(VERSION))"

.PHONY: version-sync
version-sync: ## write the version into deploy/'s image reference (after bumping pyproject.toml)
	bash hack/version-sync.sh $(IMAGE_REPO) $(VERSION)

.PHONY: image
image: ## build the operator image, tagged and labelled with the version (needs a Docker engine)
	docker build --build-arg VERSION=$(VERSION) -t $(IMAGE) .

.PHONY: release
release: version-sync image ## version-sync, then the image; tag the commit v$(VERSION) (see CHANGELOG.md)
	@echo "next: git tag -a v$(VERSION) -m 'batchcompute-operator $(VERSION)' && docker push $(IMAGE)"

.PHONY: peering-crds
peering-crds: ## once per cluster, for HA: kopf's shared peering CRDs (idempotent, never deleted by undeploy)
	kubectl apply --server-side --field-manager=kopf-peering-crds -k deploy/kopf-peering
	kubectl wait --for condition=Established --timeout=60s crd/clusterkopfpeerings.kopf.dev crd/kopfpeerings.kopf.dev

.PHONY: deploy
deploy: ## install CRD, RBAC and the operator into the current cluster
	kubectl apply -k deploy/

.PHONY: undeploy
undeploy: ## detach every attachment (the operator still running), then remove the operator
	kubectl delete bca --all --all-namespaces --wait=true --timeout=600s
	kubectl delete -k deploy/default --ignore-not-found

.PHONY: e2e
e2e: venv ## on a machine with Docker: kind, both images, deploy IMAGE, scenarios against the Deployment
	IMAGE=$(IMAGE) EMULATOR_IMAGE=$(EMULATOR_IMAGE) KIND_CLUSTER=$(KIND_CLUSTER) VERSION=$(VERSION) \
	  PYTHON=$(BIN)/python bash hack/e2e.sh run

.PHONY: e2e-rehearse
e2e-rehearse: venv controlplane ## without Docker: e2e's scenarios, its rendered settings, host processes on the test bed
	$(BIN)/python hack/e2e/rehearse.py

.PHONY: clean
clean: ## remove the virtualenv and caches (the cached kube-apiserver stays in ~/.cache)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .demo build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
