# The two quick-start commands of the README: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Where the demo keeps its state (DuckDB warehouse, Dagster home, tokens); override freely.
DEMO_DIR ?= .demo

.PHONY: demo sql test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

## Run the product on the embedded default: emulator + demo portal + DuckDB + Dagster UI on localhost.
## Starts fresh every time (removes the previous run's state from $(DEMO_DIR); --keep-state keeps it).
demo: $(VENV)/.installed
	$(BIN)/python -m pipelines.demo --state-dir $(DEMO_DIR)

## A read-only SQL shell on the demo's analysts' snapshot (`make demo` running or run before).
sql: $(VENV)/.installed
	$(BIN)/python -m connectors.warehouse.shell $(DEMO_DIR)/warehouse.snapshot.duckdb

## Run the whole test suite. PostgreSQL tests use $B24_TEST_PG_DSN (default 127.0.0.1:5432/bitrix24_test):
## the database is created if missing; without a server they skip with a hint (fail under CI=true).
test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check .

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/emulator_speed.py

clean:
	rm -rf $(DEMO_DIR) .tmp_dagster_home_* .pytest_cache
