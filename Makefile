# The README's two commands: `make up` (set up, train, start the mesh) and `make test`.
# Both create the virtual environment and install the pinned dependencies on a fresh machine.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha1sum | cut -c1-12)
export HEALMESH_HOME ?= $(CURDIR)/.healmesh
# the same pinned torch CPU wheel on every machine; see pyproject.toml
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: up down status test lint bench venv system-deps clean

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

# Debian packages the project runs or tests with (installed only when missing; needs root).
SYSTEM_PACKAGES := redis-server wrk chromium prometheus prometheus-alertmanager docker-compose haproxy
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q $$missing >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null; }; \
	  else echo "please install:$$missing (apt-get)"; exit 1; fi; fi

# PROFILE=cluster: the cluster rehearsal (PostgreSQL, Airflow on Celery, two gateways behind HAProxy)
PROFILE ?= local
up: venv system-deps
	$(VENV)/bin/healmesh up --profile $(PROFILE)

down: venv
	$(VENV)/bin/healmesh down

status: venv
	$(VENV)/bin/healmesh status

# the floors that hold the decisions and the shared state are checked strictly (pyproject.toml)
STRICT := healmesh/policies healmesh/control healmesh/settings.py healmesh/urls.py healmesh/errors.py

test: lint system-deps
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check healmesh bentos gateway dags tests bench
	$(VENV)/bin/mypy healmesh
	$(VENV)/bin/mypy --strict $(STRICT)

bench: venv system-deps
	$(PY) bench/scorer_bench.py
	$(PY) bench/gateway_bench.py
	$(PY) bench/lifecycle_bench.py
	$(PY) bench/feature_log_bench.py

clean:
	rm -rf $(VENV) .healmesh .pytest_cache
