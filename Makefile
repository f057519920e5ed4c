# walbust — see README.md.
#
#   make demo    throwaway Postgres + Redis, walbust running, rows changed, keys shown vanishing
#   make sandbox throwaway Postgres + Redis + walbust left running for client tests (docs/sandbox.md)
#   make test    lint (gofmt, go vet, staticcheck if installed) + unit + e2e tests + client tests
#   make build   bin/walbust
#   make deps    install the Debian packages the demo needs (postgresql, redis-server) when missing
#   make consistency  the consistency harness: cache-aside readers vs walbust, primary + lagging replica
#   make test-python  the Python client's tests (clients/python, pytest with Debian's /usr/bin/python3)
#   make test-node    the Node client's tests (clients/node: npm ci, build, node --test)
#
# demo and test need the PostgreSQL server binaries (/usr/lib/postgresql/*/bin)
# and redis-server. They only use the binaries: the tests and the demo start
# their own throwaway servers on free loopback ports and stop them afterwards.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

GO          ?= go
BIN         ?= bin/walbust
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -X main.version=$(VERSION)
GOPATH_BIN  := $(shell $(GO) env GOPATH 2>/dev/null)/bin
STATICCHECK ?= $(GOPATH_BIN)/staticcheck
TEST_FLAGS  ?= -count=1 -timeout 15m
PYTHON      ?= /usr/bin/python3

.PHONY: all bench consistency demo sandbox test test-python test-node unit lint fmt-check vet staticcheck build deps clean

all: build

## demo: run the end-to-end demo against throwaway servers (leaves nothing running)
demo: deps
	$(GO) run ./cmd/walbust-demo

## sandbox: throwaway Postgres + Redis + walbust, running until Ctrl-C; prints their addresses as
## WALBUST_SANDBOX_*=... lines (docs/sandbox.md). SANDBOX_FLAGS="--redis cluster --replica" etc.
sandbox: deps
	$(GO) run ./cmd/walbust-sandbox $(SANDBOX_FLAGS)

## test: lint, then unit and e2e tests (e2e starts its own Postgres and redis-server)
test: deps lint unit test-python test-node

# unit depends on deps too, so the order holds under make -j.
unit: deps
	$(GO) test $(TEST_FLAGS) ./...

## lint: gofmt check, go vet, and staticcheck when it is installed
lint: fmt-check vet staticcheck

fmt-check:
	@out="$$(gofmt -l .)"; \
	if [ -n "$$out" ]; then \
		echo "gofmt: these files need formatting (run gofmt -w):"; echo "$$out"; exit 1; \
	fi

vet:
	$(GO) vet ./...

staticcheck:
	@if [ -x "$(STATICCHECK)" ]; then \
		echo "$(STATICCHECK) ./..."; "$(STATICCHECK)" ./...; \
	else \
		echo "staticcheck not installed at $(STATICCHECK); skipping (.ci/run installs it)"; \
	fi

## build: static-ish binary at bin/walbust, version from git describe (or "dev")
build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/walbust

## deps: install postgresql, redis-server and redis-tools (redis-cli) from Debian when their binaries are missing;
## for the tests also python3-redis and python3-pytest (the Python client) and chromium (headless, for the
## status page's e2e test), all in one apt-get run.
# Only installs packages; it never starts or enables anything itself. Note that
# Debian's postgresql package creates a "main" cluster and, where an init system
# is running, starts it (port 5432); redis-server's package likewise starts a
# system redis on 6379 under systemd. walbust's tests and demo do not use those
# services: they run their own servers on free ports.
deps:
	@missing=""; \
	pg="$$(ls -1 /usr/lib/postgresql/*/bin/postgres 2>/dev/null | head -n1 || true)"; \
	if [ -z "$$pg" ] || [ ! -x "$$(dirname "$$pg")/initdb" ]; then missing="$$missing postgresql"; fi; \
	if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then missing="$$missing redis-server"; fi; \
	if ! command -v redis-cli >/dev/null 2>&1 && [ ! -x /usr/bin/redis-cli ]; then missing="$$missing redis-tools"; fi; \
	if [ -n "$(TEST_DEPS)" ]; then \
		if ! $(PYTHON) -c 'import redis' >/dev/null 2>&1; then missing="$$missing python3-redis"; fi; \
		if ! $(PYTHON) -c 'import pytest' >/dev/null 2>&1; then missing="$$missing python3-pytest"; fi; \
		if ! command -v chromium >/dev/null 2>&1; then missing="$$missing chromium"; fi; \
	fi; \
	if [ -z "$$missing" ]; then \
		echo "deps: the Debian packages needed are present"; exit 0; \
	fi; \
	echo "deps: missing:$$missing; installing the Debian packages"; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "deps: apt-get not found; install$$missing yourself (PostgreSQL server binaries under /usr/lib/postgresql/<ver>/bin)" >&2; exit 1; \
	fi; \
	sudo=""; \
	if [ "$$(id -u)" -ne 0 ]; then \
		if command -v sudo >/dev/null 2>&1; then sudo="sudo"; \
		else echo "deps: not root and sudo not available; run as root: apt-get install -y$$missing" >&2; exit 1; fi; \
	fi; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing

# The test targets (and what they depend on) need the test packages too.
test unit test-python test-node consistency: TEST_DEPS := 1

## bench: the benchmark suite (quick scale; BENCH_FLAGS="-scale full" for the full sizes)
bench: deps
	$(GO) run ./cmd/walbust-bench $(BENCH_FLAGS)

## consistency: the consistency harness (>= 1M reads of mode (b), kill -9 of walbust mid-run;
## CONSISTENCY_FLAGS="-reads 200000" for a quicker run). `make test` runs a short version.
consistency: deps
	$(GO) run ./cmd/walbust-consistency $(CONSISTENCY_FLAGS)

## test-python: clients/python's tests with Debian's /usr/bin/python3 (python3-redis, python3-pytest
# from deps). They start their own redis-server processes (standalone and a 3-node cluster), and a
# walbust sandbox (cmd/walbust-sandbox) for the tests against the real daemon; those
# (tests/test_sandbox.py) then run a second time against a sandbox whose Redis is a Cluster.
test-python: deps
	clients/with-sandbox $(PYTHON) -m pytest $(PYTEST_FLAGS) clients/python
	SANDBOX_FLAGS="$(SANDBOX_FLAGS) --redis cluster" clients/with-sandbox $(PYTHON) -m pytest $(PYTEST_FLAGS) clients/python/tests/test_sandbox.py

## test-node: the Node client (clients/node): npm ci, tsc build, node --test (starts its own
## redis-server and a 3-node Redis Cluster, and a walbust sandbox for the tests against the daemon;
## test/walbust.test.mjs then runs again against a sandbox whose Redis is a Cluster).
# The build holds the lock cmd/walbust-consistency builds clients/node under.
test-node: deps
	flock "$${TMPDIR:-/tmp}/walbust-node-build.lock" sh -c 'cd clients/node && npm ci --no-audit --no-fund && npm run build'
	clients/with-sandbox sh -c 'cd clients/node && npm test'
	SANDBOX_FLAGS="$(SANDBOX_FLAGS) --redis cluster" clients/with-sandbox sh -c 'cd clients/node && node --test test/walbust.test.mjs'

clean:
	rm -rf bin
