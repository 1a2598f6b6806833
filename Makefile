# Two entry points for a fresh clone: `make demo` (the main job) and `make test` (the test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hf_tts-installed

.PHONY: setup test demo lint bench clean postgres chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install only when the packaging metadata changes; the package itself is installed editable.
$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[zh,dev,postgres]"
	touch $(STAMP)

setup: $(STAMP)

test: setup postgres chromium
	$(BIN)/python -m pytest

demo: setup chromium
	$(BIN)/python scripts/demo.py

lint: setup
	$(BIN)/ruff check hf_tts tests scripts
	$(BIN)/ruff format --check hf_tts tests scripts

# PostgreSQL for the registry's tests (they start their own server with initdb + pg_ctl): Debian's `postgresql`
# when neither PATH nor /usr/lib/postgresql/*/bin has both programs.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
postgres:
	@if { command -v initdb && command -v pg_ctl; } >/dev/null 2>&1 || \
	   { ls /usr/lib/postgresql/*/bin/initdb && ls /usr/lib/postgresql/*/bin/pg_ctl; } >/dev/null 2>&1; then \
		echo "PostgreSQL: initdb and pg_ctl found"; \
	else \
		$(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends postgresql; \
	fi

# Headless Chromium for the registry's browser tests and the demo's screenshot: Debian's `chromium` when missing
# (with a font: --no-install-recommends would leave the screenshots without any).
chromium:
	@if command -v chromium >/dev/null 2>&1; then \
		echo "Chromium: found"; \
	else \
		$(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends chromium fonts-dejavu-core; \
	fi

clean:
	rm -rf $(VENV) build dist *.egg-info demo_out
