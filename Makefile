# The two front-door commands: `make demo` and `make test`. Each sets up .venv from scratch when it is
# missing or pyproject.toml changed, and reuses it otherwise.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := var/demo

# Where pip is configured with local wheel folders, extra indexes and a constraints file (as on this
# project's machines), uv gets the very same ones: the same packages in ~20 s instead of ~4 min.
# Where uv is unavailable or fails, plain pip installs the same thing. Both write the installed
# packages' bytecode (uv only when asked): where PYTHONDONTWRITEBYTECODE is set, as on these
# machines, nothing is cached at import time, and every process would compile pandas, Airflow and
# the rest from source again (`import pandas` 1.8 s instead of 0.5 s; `homog --help` 0.4 s instead of 0.1 s).
pip_cfg = $(shell $(PYTHON) -m pip config get global.$(1) 2>/dev/null)
UV_ARGS := --index-strategy unsafe-best-match --compile-bytecode \
	$(foreach d,$(call pip_cfg,find-links),--find-links $(d)) \
	$(foreach u,$(call pip_cfg,extra-index-url),--extra-index-url $(u)) \
	$(foreach c,$(call pip_cfg,constraint),--constraint $(c))

.PHONY: setup demo test lint docs test-distributed system-packages browser clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv || echo "uv unavailable; using pip"
	if [ -x $(BIN)/uv ] && $(BIN)/uv pip install --python $(BIN)/python $(UV_ARGS) -e '.[test]'; then :; \
	else $(BIN)/python -m pip install -e '.[test]'; fi
	rm -rf *.egg-info  # a by-product of the editable build: the installed metadata is in .venv
	touch $@

# Airflow's embedded default: SQLite metadata DB and logs under var/demo/airflow (ignored by git).
AIRFLOW_ENV := AIRFLOW_HOME=$(CURDIR)/$(DEMO)/airflow AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
	AIRFLOW__CORE__LOAD_EXAMPLES=False AIRFLOW__CORE__EXECUTOR=LocalExecutor PATH=$(CURDIR)/$(BIN):$$PATH

demo: $(STAMP)
	mkdir -p $(DEMO)/airflow
	$(AIRFLOW_ENV) $(BIN)/airflow db migrate > $(DEMO)/airflow/migrate.log 2>&1 || { tail -20 $(DEMO)/airflow/migrate.log; exit 1; }
	$(AIRFLOW_ENV) $(BIN)/airflow pools set crawler 4 "concurrent company crawls" > /dev/null
	$(AIRFLOW_ENV) $(BIN)/airflow pools set embedding 1 "embedding (one model per worker)" > /dev/null
	rm -f $(DEMO)/airflow/demo-run.log
	$(AIRFLOW_ENV) $(BIN)/homog demo --root $(DEMO) --warehouse $(DEMO)/warehouse --log-file $(DEMO)/airflow/demo-run.log \
		2>> $(DEMO)/airflow/demo-run.log || { tail -40 $(DEMO)/airflow/demo-run.log; exit 1; }
	@echo "the DAG run's log: $(DEMO)/airflow/demo-run.log"

# The report tests open the HTML in Debian's chromium (headless, driven by playwright).
browser:
	if ! command -v chromium > /dev/null; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium > /dev/null; \
	fi

# Format and lint (ruff, pinned in pyproject.toml) before the tests: a mis-formatted tree fails `make test`.
lint: $(STAMP)
	$(BIN)/ruff format --no-cache --check --quiet . || { echo "run: $(BIN)/ruff format ."; exit 1; }
	$(BIN)/ruff check --no-cache --quiet .

# docs/configuration.md and docs/warehouse.md are generated from the code; tests fail when they are stale.
docs: $(STAMP)
	$(BIN)/python -m pipeline.apps.docs docs

test: $(STAMP) browser lint
	$(BIN)/python -m pytest

# Beyond one worker: PostgreSQL + Redis from Debian, the Airflow api-server and two Celery workers on
# 127.0.0.1, the nightly DAG through the CeleryExecutor (tests/test_distributed.py stops all of it).
DIST_STAMP := $(VENV)/.installed-distributed

$(DIST_STAMP): $(STAMP)
	if [ -x $(BIN)/uv ] && $(BIN)/uv pip install --python $(BIN)/python $(UV_ARGS) -e '.[test,distributed]'; then :; \
	else $(BIN)/python -m pip install -e '.[test,distributed]'; fi
	rm -rf *.egg-info
	touch $@

# Installing Debian's postgresql would start a cluster on port 5432: policy-rc.d forbids that.
system-packages:
	if ! command -v redis-server > /dev/null || ! ls /usr/lib/postgresql/*/bin/postgres > /dev/null 2>&1; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		printf '#!/bin/sh\nexit 101\n' | $$SUDO tee /usr/sbin/policy-rc.d > /dev/null; $$SUDO chmod +x /usr/sbin/policy-rc.d; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql redis-server > /dev/null; \
		status=$$?; $$SUDO rm -f /usr/sbin/policy-rc.d; exit $$status; \
	fi

test-distributed: $(DIST_STAMP) system-packages
	$(BIN)/python -m pytest -m distributed tests/test_distributed.py

clean:
	rm -rf $(VENV) var .pytest_cache
