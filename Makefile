# Every target installs what it needs first, so a newcomer types one command.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test unit lint crds clean checkov deps-system cluster-build helm-build cluster-up cluster-down cluster-status \
	bench-router bench-shadow bench-engine bench-operator bench-service bench-decisions engine-docs e2e e2e-repeat \
	chart-lint chart-test demo deps-node go-toolchain node-build images e2e-real lock

setup: $(STAMP)

# Versions come from the lock file (constraints.txt, `make lock`), so a new release upstream cannot break
# a build that passed; pip gives up on a slow index after its timeout and retries instead of hanging.
PIP_NET := --timeout 60 --retries 5
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(PIP_NET) --upgrade pip
	$(BIN)/python -m pip install --quiet $(PIP_NET) --constraint constraints.txt -e '.[dev]'
	@touch $(STAMP)

## Re-resolve the Python dependencies and rewrite constraints.txt (on purpose, then run the tests).
lock: setup
	$(BIN)/python -m backtest_devtools.lock

## The whole suite, tier by tier (unit, integration, end to end, real pods); prints the 30 slowest tests. A
## failing end-to-end test leaves its status, events, logs and router state in test-artifacts/ (docs/testing.md).
test: setup deps-system cluster-build checkov
	$(BIN)/python -m pytest --durations=30

## Fast tests only: no control plane, no Prometheus, no PostgreSQL.
unit: setup
	$(BIN)/python -m pytest -m "not cluster and not prometheus and not postgres and not e2e" tests/unit

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Regenerate crds/ and the chart's copy from the pydantic models (a test fails when either is stale).
CRD_FILE := backtest.dev_backtestservices.yaml
crds: setup
	$(BIN)/python -m backtest_operator.crd > crds/$(CRD_FILE)
	cp crds/$(CRD_FILE) charts/backtest-operator/crds/$(CRD_FILE)
	$(BIN)/python -m backtest_operator.reference > docs/backtestservice-reference.md

## System packages the tests need (Prometheus, PostgreSQL, Lua 5.1 from Debian); skipped when already installed.
deps-system:
	@command -v prometheus >/dev/null 2>&1 || { \
	  echo "installing the Debian package prometheus"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }
	@{ ls /usr/lib/postgresql/*/bin/initdb && ls /usr/lib/postgresql/*/bin/pg_ctl; } >/dev/null 2>&1 || { \
	  echo "installing the Debian package postgresql"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; }
	@command -v lua5.1 >/dev/null 2>&1 || { \
	  echo "installing the Debian package lua5.1 (runs the Argo CD health check in tests)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends lua5.1; }

## Build etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok, helm and kstatus once (cached by version).
cluster-build: setup
	$(BIN)/python -m backtest_devtools.cluster build

## helm is one of the cached builds (backtest_devtools.build.HELM); this is the same build under its own name.
helm-build: cluster-build

HELM = $(shell $(BIN)/python -c 'from backtest_devtools import chart, config; print(chart.helm_binary(config.load_settings()))')

## Lint the Helm chart with the cached helm (default values, then every monitoring object enabled).
chart-lint: helm-build
	$(HELM) lint --strict charts/backtest-operator
	$(HELM) lint --strict charts/backtest-operator --set monitoring.serviceMonitor.enabled=true \
	  --set monitoring.routerPodMonitor.enabled=true --set monitoring.prometheusRule.enabled=true \
	  --set monitoring.grafanaDashboard.enabled=true

## The chart's and the images' tests: lint, template, schema, promtool, dry-run, operator under the chart's RBAC.
chart-test: setup deps-system helm-build checkov
	$(BIN)/python -m pytest tests/integration/test_chart.py tests/integration/test_checkov.py tests/unit/images

## checkov in a virtualenv of its own (its pinned dependencies conflict with the project's).
CHECKOV_VERSION := 3.3.30
checkov: .venv-checkov/.installed-$(CHECKOV_VERSION)

.venv-checkov/.installed-$(CHECKOV_VERSION):
	@test -x .venv-checkov/bin/python || $(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/python -m pip install --quiet checkov==$(CHECKOV_VERSION)
	@touch $@

## Start the local control plane in .cluster/ (idempotent); the last line is `export KUBECONFIG=...`.
## With a real node (containerd, kubelet, kube-proxy, CoreDNS, metrics-server) whenever one can start here;
## NODE=kwok keeps the fake-only cluster, NODE=real fails instead of falling back.
NODE ?= auto
cluster-up: setup $(if $(filter kwok,$(NODE)),,deps-node)
	@$(BIN)/python -m backtest_devtools.cluster up --node $(NODE) --state-dir $(CURDIR)/.cluster

cluster-down: setup
	@$(BIN)/python -m backtest_devtools.cluster down --state-dir $(CURDIR)/.cluster

## Which components run (control plane, real node, its pods), and their resident memory.
cluster-status: setup
	@$(BIN)/python -m backtest_devtools.cluster status --state-dir $(CURDIR)/.cluster

## Router overhead vs direct calls at a fixed rate, max throughput, weight flips under load.
bench-router: setup
	$(BIN)/python bench/router_overhead.py --compare-servers --json bench/results/router.json

## Shadow comparisons per CPU second of full engine results vs plain deep equality (one core).
bench-shadow: setup
	$(BIN)/python bench/shadow_comparison.py --json bench/results/shadow-comparison.json

## Decision quality of the default policy under noise, beside Flagger- and Argo-style baselines (same recordings).
bench-decisions: setup
	$(BIN)/python bench/decision_quality.py --runs 2000 --markdown bench/results/decision-quality.md

## Operator memory with 100 BacktestServices against a baseline of none (bench/results/operator.json).
bench-operator: setup deps-system cluster-build
	$(BIN)/python bench/operator_memory.py --objects 100

## The whole story on one machine: a healthy release promoted, a faulty one rolled back (demo-summary.json).
demo: setup deps-system cluster-build
	$(BIN)/python -m backtest_devtools.demo --summary demo-summary.json

## End-to-end rollouts only (brings up the control plane, Prometheus, engines, router and the operator).
e2e: setup deps-system cluster-build
	$(BIN)/python -m pytest -m e2e tests/e2e

## Hunt flakes: the end-to-end tier N times in a row (BURN=2 adds two CPU burners), tallied per test.
N ?= 5
BURN ?= 0
e2e-repeat: setup deps-system cluster-build
	$(BIN)/python -m backtest_devtools.flakes --runs $(N) --burn $(BURN) -- -m e2e tests/e2e

clean:
	rm -rf $(VENV) .venv-checkov .pytest_cache .mypy_cache .ruff_cache

## Debian packages of the real node and the image builds (containerd, runc, CNI plugins, buildah, mmdebstrap,
## iptables); skipped when present. apt gets a deadline so a stuck mirror fails instead of hanging CI.
NODE_PACKAGES := containerd runc containernetworking-plugins buildah mmdebstrap iptables
deps-node:
	@missing=""; for p in $(NODE_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; start=$$(date +%s); \
	  timeout 600 apt-get update -qq -o Acquire::http::Timeout=30 -o Acquire::Retries=3 && \
	  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends \
	    -o Acquire::http::Timeout=30 -o Acquire::Retries=3 $$missing || \
	    { echo "error: apt-get could not install$$missing (timeout or mirror failure)" >&2; exit 2; }; \
	  echo "installed$$missing in $$(( $$(date +%s) - start ))s"; fi

## A Go toolchain new enough for the builds, from the Go module proxy, when the machine has none.
go-toolchain: setup
	@$(BIN)/python -m backtest_devtools.toolchain

## kubelet, kube-proxy, CoreDNS, metrics-server and crictl (like the control plane: cached by version).
node-build: setup go-toolchain
	$(BIN)/python -m backtest_devtools.cluster build --node real

## Engine and operator images from their Dockerfiles (buildah, hermetic), imported into the real node if it runs.
images: setup deps-node
	@$(BIN)/python -m backtest_devtools.cluster images

## The end-to-end tier on real pods (real node, images, the chart installed with helm).
e2e-real: setup deps-system deps-node cluster-build node-build images
	$(BIN)/python -m pytest -m real tests/e2e_real

# `make test` runs the real tier too: it needs the node's packages, binaries and images first.
test: deps-node node-build images
cluster-build: go-toolchain

## Engine benchmarks against backtesting.py (single run) and vectorbt (sweep); not part of `make test`.
bench-engine: setup
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/engine_vs_backtestingpy.py | tee bench/results/engine_vs_backtestingpy.txt
	$(BIN)/python bench/sweep_vs_vectorbt.py | tee bench/results/sweep_vs_vectorbt.txt

## The service's shared limits and sweeps: rate limit over 3 replicas, sweep scaling, upload memory.
bench-service: setup deps-system
	$(BIN)/python bench/ratelimit_shared.py --json bench/results/ratelimit_shared.json
	$(BIN)/python bench/upload_memory.py --json bench/results/upload_memory.json
	$(BIN)/python bench/sweep_scaling.py --json bench/results/sweep_scaling.json

## Regenerate docs/metrics.md from the metric registry (a test fails when it is stale).
engine-docs: setup
	$(BIN)/python -m backtest_engine.metrics.reference > docs/metrics.md
