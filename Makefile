# Two commands on a fresh machine: `make run` (the hub) and `make test` (everything).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_CLIENTS := tests/clients/node
NODE_STAMP := $(NODE_CLIENTS)/node_modules/.installed

.PHONY: run test test-min test-pythons lint system-deps clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,redis,rsa,client]'
	touch $(STAMP)

## The standalone hub with the embedded memory backend on http://127.0.0.1:8000
run: $(STAMP)
	$(BIN)/gunicorn wsgi:app

## Lint, type-check, then the whole test suite.
test: lint system-deps $(NODE_STAMP)
	$(BIN)/pytest

## The short suite the two checks below run: the unit tests and a few fast gunicorn files
## (streams, publish, resume, the Redis backplane across workers, `flask sse publish`, and
## fuzzed subscribe requests: how the server parses request headers varies by version).
SHORT_SUITE := tests/unit \
  tests/integration/test_stream_protocol.py \
  tests/integration/test_publish_delivery.py \
  tests/integration/test_resume.py \
  tests/integration/redis/test_workers.py \
  tests/integration/redis/test_library.py \
  tests/integration/test_fuzz.py::test_fuzzed_subscribe_gets_a_defined_answer_and_the_hub_keeps_serving
## The interpreter of the lowest-versions virtualenv (the one .venv uses unless given).
MIN_PYTHON ?= $(PYTHON)

## The lowest versions setup.cfg allows (runtime dependencies pinned to their lower bounds)
## in .venv-min, then the short suite there.
test-min: system-deps
	$(PYTHON) tests/versions.py min --python $(MIN_PYTHON) --venv .venv-min -- $(SHORT_SUITE)

## Every other CPython >= 3.10 found (pyenv, python3.1x on PATH): .venv-py3.X each, the
## short suite in each, one after another; a version not found is skipped, said so.
test-pythons: $(STAMP) system-deps
	$(PYTHON) tests/versions.py pythons --exclude $(BIN)/python -- $(SHORT_SUITE)

## Debian packages the tests drive for real (installed when missing and we are root).
SYSTEM_DEPS := redis-server:redis-server redis-sentinel:redis-sentinel chromium:chromium node:nodejs npm:npm
system-deps:
	@missing=""; for dep in $(SYSTEM_DEPS); do \
	  command -v $${dep%%:*} >/dev/null 2>&1 || missing="$$missing $${dep#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) \
	      || echo "could not install$$missing: the tests needing them will skip"; \
	  else echo "missing$$missing and not root: the tests needing them will skip"; fi; \
	fi

## The Node clients the tests drive (the eventsource npm package), as package-lock.json pins them.
$(NODE_STAMP): $(NODE_CLIENTS)/package.json $(NODE_CLIENTS)/package-lock.json | system-deps
	@if command -v npm >/dev/null 2>&1; then \
	  cd $(NODE_CLIENTS) && npm ci --no-audit --no-fund --ignore-scripts && touch node_modules/.installed; \
	else echo "npm is missing: the Node client tests need it (they skip only when node is missing too)"; fi

lint: $(STAMP)
	$(BIN)/ruff check flask_sse_hub tests wsgi.py gunicorn.conf.py
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .venv-min .venv-py3.* .pytest_cache .mypy_cache .ruff_cache .hypothesis $(NODE_CLIENTS)/node_modules

## The benchmark against the peers (see bench/README.md); BENCH_ARGS=--quick for a smoke run.
.PHONY: bench
bench:
	@for pkg in go:golang-go redis-server:redis-server; do \
	  command -v $${pkg%%:*} >/dev/null 2>&1 && continue; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $${pkg#*:}) || exit 1; \
	  else echo "bench needs $${pkg#*:} (apt-get install $${pkg#*:})"; exit 1; fi; \
	done
	BENCH_COMMAND="make bench$(if $(BENCH_ARGS), BENCH_ARGS='$(BENCH_ARGS)')" $(PYTHON) bench/run.py $(BENCH_ARGS)
