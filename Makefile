# Two commands on a fresh machine: `make run` (the hub) and `make test` (everything).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint unit integration clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,redis]'
	touch $(STAMP)

## The standalone hub with the embedded memory backend on http://127.0.0.1:8000
run: $(STAMP)
	$(BIN)/gunicorn wsgi:app

## Lint, type-check, then the whole test suite.
test: lint
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check flask_sse_hub tests wsgi.py gunicorn.conf.py
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
