# labelloop — the two commands: `make demo` (the main job, end to end) and `make test`.
# Both install what they need: a venv for Airflow + labelloop, another for Label Studio.
PYTHON ?= python3
VENV := .venv
LS_VENV := .venv-labelstudio
export PYTHONPATH := $(CURDIR)/plugins

.PHONY: setup browser demo test test-unit bench stack-up stack-down stack-status clean

setup: $(VENV)/.installed $(LS_VENV)/.installed

# uv when it can be had (fast); plain venv + pip otherwise.
define make_venv
	@set -e; \
	if $(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv >/dev/null 2>&1; then \
	  $(PYTHON) -m uv venv --quiet --allow-existing --python $(PYTHON) $(1) && \
	  $(PYTHON) -m uv pip install --quiet --python $(1)/bin/python -r $(2); \
	else \
	  $(PYTHON) -m venv $(1) && $(1)/bin/pip install --quiet -r $(2); \
	fi
endef

# labelloop itself, as the Airflow provider it is (docs/provider.md), after the pinned requirements
# and without touching them: --no-deps, and the lock's setuptools as build backend (no index needed).
# Editable, so the installed package and plugins/labelloop are the same files.
define install_labelloop
	@if $(PYTHON) -m uv --version >/dev/null 2>&1; then \
	  $(PYTHON) -m uv pip install --quiet --python $(1)/bin/python --no-deps --no-build-isolation -e .; \
	else \
	  $(1)/bin/pip install --quiet --no-deps --no-build-isolation -e .; \
	fi
endef

$(VENV)/.installed: requirements-dev.txt requirements.txt pyproject.toml
	@echo "installing Airflow + labelloop into $(VENV) ..."
	$(call make_venv,$(VENV),requirements-dev.txt)
	$(call install_labelloop,$(VENV))
	@touch $@

$(LS_VENV)/.installed: requirements-labelstudio.txt
	@echo "installing Label Studio into $(LS_VENV) (its own environment) ..."
	$(call make_venv,$(LS_VENV),requirements-labelstudio.txt)
	@touch $@

# The browser tests' chromium (tests/browser drives it with Playwright): Debian's package, installed
# once, when no chromium is on PATH; that needs root (as in CI). Never Playwright's own download.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium for the browser tests: apt-get update && apt-get install -y --no-install-recommends chromium"; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null && chromium --version; \
	else \
	  echo "no chromium on PATH and not root: the browser tests will fail until you run" \
	       "'sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium'"; \
	fi

demo: setup
	$(VENV)/bin/python -m labelloop demo

test: setup browser
	$(VENV)/bin/python -m pytest

test-unit: setup
	$(VENV)/bin/python -m pytest tests/unit

bench: setup
	$(VENV)/bin/python tests/benchmarks/bench_ingest.py
	$(VENV)/bin/python tests/benchmarks/bench_audit.py

stack-up: setup
	$(VENV)/bin/python -m labelloop stack up

stack-down:
	$(VENV)/bin/python -m labelloop stack down

stack-status:
	$(VENV)/bin/python -m labelloop stack status

clean: stack-down
	rm -rf .state
