# Two commands matter: `make run` and `make test`. Each sets up what it needs first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
# Python 3.11, 3.12 and 3.13 are supported; each gets a virtual environment of its own
# (.venv-3.13 for PYTHON=python3.13), so switching between them reinstalls nothing.
PYTHON_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
ifeq ($(filter 3.11 3.12 3.13,$(PYTHON_VERSION)),)
$(error PYTHON=$(PYTHON) is $(if $(PYTHON_VERSION),Python $(PYTHON_VERSION),not found); this project needs Python 3.11, 3.12 or 3.13 (set PYTHON=python3.13, say))
endif
VENV := .venv-$(PYTHON_VERSION)
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
DEV_INSTALLED := $(VENV)/.dev-installed
UV_VERSION := 0.13.8
DEV_DB_DIR := .run/mariadb
export DEV_DB_PORT ?= 3307

.PHONY: help run test migrate openapi lint format bench bench-quick bench-tail bench-instructions soak db-start db-stop lock clean cluster cluster-stop cluster-drill

help:
	@echo "make run      serve the app on http://$${HOST:-127.0.0.1}:$${PORT:-8000} (docs at /docs)"
	@echo "make test     run the whole test suite against a real MariaDB"
	@echo "make migrate  apply pending migrations    make lint   ruff + mypy"
	@echo "make db-stop  stop the private MariaDB    make lock   re-pin the lock files"
	@echo "make openapi  rewrite docs/openapi.json, the committed API contract, from the code"
	@echo "make cluster  MariaDB, Redis, 3 instances and HAProxy on HOST:PORT (make cluster-stop;"
	@echo "              make cluster-drill: rolling restart, SIGKILL, budget, forged headers, store down)"
	@echo "make bench    this service against Flask and FastAPI (make bench-quick: ~2 min;"
	@echo "              make bench-instructions: instructions per request; make bench-tail:"
	@echo "              a slow or down upstream, hedging and the breaker; make soak)"

# What the service runs (make run); the test and lint tools come on top (make test).
$(INSTALLED): requirements.lock
	@test -x $(VENV)/bin/pip || $(PYTHON) -m venv --clear $(VENV)
	$(VENV)/bin/pip install --quiet --require-hashes --no-deps -r requirements.lock
	@touch $@

$(DEV_INSTALLED): $(INSTALLED) requirements-dev.lock
	$(VENV)/bin/pip install --quiet --require-hashes --no-deps -r requirements-dev.lock
	@touch $@

# The API consumers' own tools (Redocly, Spectral, openapi-typescript, TypeScript), pinned
# by tools/npm/package-lock.json; make test checks the OpenAPI document with them.
NPM_INSTALLED := tools/npm/node_modules/.installed
$(NPM_INSTALLED): tools/npm/package-lock.json
	@$(call need_package,npm,npm,the OpenAPI checks need Node.js 20 or later and npm (sudo apt-get install npm))
	cd tools/npm && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

# Debian packages, installed with apt-get when missing and we are root:
# $(call need_package,PACKAGE,PROGRAM,WHAT TO SAY WHEN WE CANNOT)
define need_package
	if ! command -v $(2) >/dev/null && ! test -x /usr/sbin/$(2); then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $(1) with apt-get" >&2; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1)) >/dev/null \
	      || { echo "apt-get could not install $(1): $(3)" >&2; exit 1; }; \
	  else \
	    echo "$(2) not found: $(3)" >&2; exit 1; \
	  fi; \
	fi
endef
need_mariadbd = $(call need_package,mariadb-server,mariadbd,install Debian's mariadb-server (sudo apt-get install mariadb-server) or set DATABASE_URL)
need_chromium = $(call need_package,chromium,chromium,the docs test needs Debian's chromium (sudo apt-get install chromium))
need_redis = $(call need_package,redis-server,redis-server,the shared write budget's tests need Debian's redis-server (sudo apt-get install redis-server))

# DATABASE_URL as given, else the private MariaDB's (started when not running).
define database_url
	if [ -z "$${DATABASE_URL:-}" ]; then \
	  $(need_mariadbd); \
	  DATABASE_URL=$$($(PY) -m tools.devdb start --dir $(DEV_DB_DIR)) || exit 1; \
	  export DATABASE_URL; \
	fi
endef

run: $(INSTALLED)
	@$(database_url); exec $(PY) -m app

test: $(DEV_INSTALLED) $(NPM_INSTALLED)
	@$(need_mariadbd)
	@$(need_chromium)
	@$(need_redis)
	$(PY) -m pytest $(PYTEST_ARGS)

migrate: $(INSTALLED)
	@$(database_url); exec $(PY) -m app.migrate

# The API contract under version control: rewrite it after changing a route or a model.
openapi: $(INSTALLED)
	$(PY) -m tools.openapi

db-start: $(INSTALLED)
	@$(database_url); echo "private MariaDB running (data in $(DEV_DB_DIR))"

# The deployment's topology on one machine: MariaDB, Redis, INSTANCES instances, HAProxy
# on HOST:PORT (tools/cluster.py). The instances stay up until make cluster-stop.
cluster: $(DEV_INSTALLED)
	@$(need_mariadbd)
	@$(need_redis)
	@$(call need_package,haproxy,haproxy,make cluster needs Debian's haproxy (sudo apt-get install haproxy))
	$(PY) -m tools.cluster start

cluster-stop: $(DEV_INSTALLED)
	$(PY) -m tools.cluster stop

# The SPEC's drills on a cluster of their own (ports of their own, state in .run/drill).
cluster-drill: $(DEV_INSTALLED)
	@$(need_mariadbd)
	@$(need_redis)
	@$(call need_package,haproxy,haproxy,make cluster-drill needs Debian's haproxy (sudo apt-get install haproxy))
	$(PY) -m tools.drill

db-stop: $(INSTALLED)
	$(PY) -m tools.devdb stop --dir $(DEV_DB_DIR)

lint: $(DEV_INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(DEV_INSTALLED)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

BENCH_INSTALLED := $(VENV)/.bench-installed
$(BENCH_INSTALLED): $(DEV_INSTALLED) requirements-bench.lock
	$(VENV)/bin/pip install --quiet --require-hashes --no-deps -r requirements-bench.lock
	@touch $@

define need_bench_tools
	$(need_mariadbd); \
	$(call need_package,wrk,wrk,make bench drives the apps with wrk (sudo apt-get install wrk)); \
	$(call need_package,nginx-light libnginx-mod-http-echo,nginx,the benchmark upstream is nginx with the echo module (sudo apt-get install nginx-light libnginx-mod-http-echo))
endef

bench: $(BENCH_INSTALLED)
	@$(need_bench_tools)
	$(PY) -m bench.run $(BENCH_ARGS)
	$(PY) -m bench.tail

# the upstream's tail, a down upstream, stale-while-revalidate (bench/tail.py): ~6 minutes
bench-tail: $(BENCH_INSTALLED)
	@$(need_bench_tools)
	$(PY) -m bench.tail $(BENCH_ARGS)

bench-quick: $(BENCH_INSTALLED)
	@$(need_bench_tools)
	$(PY) -m bench.run --quick $(BENCH_ARGS)

bench-instructions: $(BENCH_INSTALLED)
	@$(need_bench_tools); $(call need_package,valgrind,valgrind,counting instructions needs valgrind (sudo apt-get install valgrind))
	$(PY) -m bench.instructions $(BENCH_ARGS)

soak: $(BENCH_INSTALLED)
	@$(need_bench_tools)
	$(PY) -m bench.soak $(SOAK_ARGS)

# Re-pin every dependency (with hashes) after editing pyproject.toml: the dev set first (it
# holds the runtime set), then the runtime and bench sets pinned to the same versions. One
# lock serves every supported Python, each package at one version for all of them where it
# can be (--universal, --fork-strategy fewest: quart 0.23 would need 3.13).
# Pins stay where they are unless asked: make lock LOCK_ARGS=--upgrade takes every newest.
lock:
	@test -x .run/uv/bin/uv || { $(PYTHON) -m venv .run/uv && .run/uv/bin/pip install --quiet uv==$(UV_VERSION); }
	.run/uv/bin/uv pip compile pyproject.toml --group dev --generate-hashes --universal --fork-strategy fewest --python-version 3.11 $(LOCK_ARGS) \
	  --no-header --quiet -o requirements-dev.lock
	.run/uv/bin/uv pip compile pyproject.toml --generate-hashes --universal --fork-strategy fewest --python-version 3.11 $(LOCK_ARGS) \
	  --constraint requirements-dev.lock --no-header --quiet -o requirements.lock
	.run/uv/bin/uv pip compile pyproject.toml --group bench --generate-hashes --universal --fork-strategy fewest --python-version 3.11 $(LOCK_ARGS) \
	  --constraint requirements-dev.lock --no-header --quiet -o requirements-bench.lock

clean:
	rm -rf .venv-3.* tools/npm/node_modules .pytest_cache .mypy_cache .ruff_cache
