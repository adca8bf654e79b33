# tidegate — `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
TG := $(VENV)/bin/tidegate
ROWS ?= 200000
CONCURRENCY ?= 2
PYTEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help install system-deps citus run test test-pg15 test-chaos bench lint clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed ## create .venv and install tidegate with its test tools

# Debian packages some tests drive for real: PgBouncer (transaction pooling), Chromium
# (the status page, headless) and Prometheus for promtool (the alert rules' unit tests; no
# server is started). Installed only when missing and when we may (root with apt-get);
# otherwise those tests skip and say why.
SYSTEM_PACKAGES := pgbouncer:/usr/sbin/pgbouncer chromium:/usr/bin/chromium prometheus:/usr/bin/promtool
system-deps: ## install Debian's pgbouncer, chromium and prometheus (promtool) for the tests that drive them (root only)
	@missing=""; for entry in $(SYSTEM_PACKAGES); do \
	  [ -x "$${entry#*:}" ] || missing="$$missing $${entry%%:*}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing (Debian packages)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null \
	      || echo "warning: could not install$$missing; the tests that need them will skip"; \
	  else echo "note:$$missing missing and not root: the tests that need them will skip"; fi; \
	fi

# Citus 13.2.2 for tests/test_citus.py (a coordinator and two workers of the tests' own): built
# from the source kept beside the repository ($TIDEGATE_CITUS_SOURCE, else ../shared/vendor/citus)
# into PostgreSQL 15 when citus.so is missing and we may (root); otherwise those tests skip and say
# why. A no-op when installed.
CITUS_SOURCE ?= $(or $(TIDEGATE_CITUS_SOURCE),$(CURDIR)/../shared/vendor/citus)
PG15_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
citus: ## build and install Citus into PostgreSQL 15 for the Citus tests (root; 2-3 min once, then a no-op)
	@if [ ! -x $(PG15_CONFIG) ]; then echo "note: no PostgreSQL 15 ($(PG15_CONFIG)): the Citus tests will skip"; \
	elif [ -f "$$($(PG15_CONFIG) --pkglibdir)/citus.so" ]; then :; \
	elif [ ! -f "$(CITUS_SOURCE)/build.sh" ]; then echo "note: no Citus source in $(CITUS_SOURCE): the Citus tests will skip"; \
	elif [ "$$(id -u)" != 0 ]; then echo "note: citus.so missing and not root: the Citus tests will skip"; \
	else echo "building Citus from $(CITUS_SOURCE) (2-3 min)"; bash "$(CITUS_SOURCE)/build.sh" $(PG15_CONFIG); fi

run: install ## the demo end to end: embedded PostgreSQL (or $DATABASE_URL), migrate, seed, enqueue, run, report
	$(TG) db upgrade
	$(TG) demo seed --rows $(ROWS)
	$(TG) enqueue backfill-range --from 2024-01-01T00:00:00Z --to 2030-01-01T00:00:00Z \
	    --handler hero_troops --batch-size 1000 --concurrency $(CONCURRENCY) --owner demo
	$(TG) worker --concurrency $(CONCURRENCY) --drain
	$(TG) status --limit 5
	$(TG) demo check

test: install system-deps citus ## the test suite against a real PostgreSQL (see README: which one)
	$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) --dist loadgroup

test-pg15: install system-deps citus ## the suite against this machine's PostgreSQL 15 on 127.0.0.1:5432
	TIDEGATE_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres $(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) --dist loadgroup

test-chaos: install ## the long fault-injection runs
	$(VENV)/bin/pytest -q -m chaos

$(VENV)/.bench-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

# Uses $$DATABASE_URL if set, else the embedded database. BENCH_ARGS passes options to
# bench.run (e.g. BENCH_ARGS="--only queue --jobs 5000"); pgbench missing: that section says so.
BENCH_ARGS ?=
bench: $(VENV)/.bench-installed ## benchmarks (peers from PyPI, pgbench); ratios measured in one run -> bench/RESULTS.md
	$(PY) -m bench.run $(BENCH_ARGS)

lint: install ## ruff and the layering contracts
	$(VENV)/bin/ruff check tidegate worker jobs tests bench examples
	LINT_IMPORTS=$(abspath $(VENV))/bin/lint-imports .ci/lint-imports

clean: ## remove the venv and the embedded database
	-$(TG) db embedded --stop
	rm -rf $(VENV) .tidegate
