# svg-jax: `make demo` runs the main job on an embedded default, `make test` runs the CPU test suite.
PYTHON ?= python3.12
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench-gpu clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.12 (pyenv install 3.12) or run 'make PYTHON=/path/to/python3.12'" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

# Two pytest workers: the suite is single-threaded Python and XLA compiles (17.6 -> 11.6 min on 2 cores).
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -m "not gpu" -n $(TEST_WORKERS) tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
