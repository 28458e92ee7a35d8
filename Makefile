# audit-forwarder — every target creates what it needs; `make run` and `make test`
# work on a fresh machine with only Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test test-tools lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(STAMP)

## run: start a debug receiver and the daemon with config.example.yaml, send demo events
run: $(STAMP)
	./scripts/run-demo.sh

## test: lint, type-check and run the whole test suite
test: lint test-tools
	$(BIN)/pytest

## test-tools: the Debian packages the tests drive (promtool, prometheus, nats-server)
test-tools:
	./scripts/install-test-tools.sh

## lint: ruff check, ruff format --check, mypy --strict, the import contracts
lint: $(DEV_STAMP)
	$(BIN)/python scripts/check_imports.py
	$(BIN)/ruff check forwarder tests bench scripts
	$(BIN)/ruff format --check forwarder tests bench scripts
	$(BIN)/mypy --strict forwarder

format: $(DEV_STAMP)
	$(BIN)/ruff format forwarder tests bench scripts
	$(BIN)/ruff check --fix forwarder tests bench scripts

## bench: every benchmark scenario next to syslog-ng (see README, Performance);
## BENCH_ARGS="--quick" or "--only 1,2" or "--events N" to scale it down
bench: $(STAMP)
	./scripts/install-bench-tools.sh
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) data build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
