# Two entry points for a fresh clone: `make demo` (the main job) and `make test` (the test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hf_tts-installed

.PHONY: setup test demo lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install only when the packaging metadata changes; the package itself is installed editable.
$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[zh,dev,postgres]"
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest

demo: setup
	$(BIN)/python scripts/demo.py

lint: setup
	$(BIN)/ruff check hf_tts tests scripts
	$(BIN)/ruff format --check hf_tts tests scripts

clean:
	rm -rf $(VENV) build dist *.egg-info demo_out
