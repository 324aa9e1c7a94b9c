# batchcompute-operator: every target is a one-liner; `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | sha1sum | cut -c1-12)
IMAGE ?= ghcr.io/batchcompute-operator/batchcompute-operator:0.1.0
KIND_CLUSTER ?= batchcompute-e2e
N ?= 1000
PYTEST_ARGS ?=
export PYTHONPATH := $(CURDIR)/operator

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(STAMP):
	@command -v $(PYTHON) >/dev/null || { apt-get update -qq && apt-get install -y -qq python3 python3-venv; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

.PHONY: venv
venv: $(STAMP) ## create .venv with the pinned dependencies

.PHONY: controlplane
controlplane: ## install etcd and build (once, cached) kube-apiserver for the test bed
	@bash hack/install-controlplane.sh >/dev/null
	@bash hack/build-apiextensions-apiserver.sh >/dev/null || true

.PHONY: test
test: venv controlplane ## unit tests, then integration tests on a real kube-apiserver + the ARM emulator
	$(BIN)/pytest tests/unit -q $(PYTEST_ARGS)
	$(BIN)/pytest tests/integration -q $(PYTEST_ARGS)

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
bench: venv controlplane ## benchmark N attachments (default 1000) at ARM's throttle limits
	$(BIN)/python -m bench --n $(N) --curve 100,300 --footprint 5000

.PHONY: image
image: ## build the container image (needs a Docker engine)
	docker build -t $(IMAGE) .

.PHONY: deploy
deploy: ## install CRD, RBAC and the operator into the current cluster
	kubectl apply -k deploy/

.PHONY: undeploy
undeploy: ## detach every attachment (the operator still running), then remove the operator
	kubectl delete bca --all --all-namespaces --wait=true --timeout=600s
	kubectl delete -k deploy/default --ignore-not-found

.PHONY: e2e
e2e: venv ## on a machine with Docker: kind cluster, image, deploy, integration suite, teardown
	kind create cluster --name $(KIND_CLUSTER)
	trap 'kind delete cluster --name $(KIND_CLUSTER)' EXIT; \
	docker build -t $(IMAGE) . && kind load docker-image $(IMAGE) --name $(KIND_CLUSTER) && \
	kubectl --context kind-$(KIND_CLUSTER) apply -k deploy/ && \
	kind get kubeconfig --name $(KIND_CLUSTER) > $(VENV)/kind.kubeconfig && \
	BCO_KUBECONFIG=$(VENV)/kind.kubeconfig $(BIN)/pytest tests/integration -q

.PHONY: lock
lock: venv ## re-pin requirements.lock from the current virtualenv
	$(BIN)/pip freeze --exclude-editable | grep -v '^batchcompute' | sed '1i # Pinned versions (make lock)' > requirements.lock

.PHONY: clean
clean: ## remove the virtualenv and caches (the cached kube-apiserver stays in ~/.cache)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .demo build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
