# Two entry points: `make serve` (the service with embedded defaults) and `make test`.
# Each creates .venv from pyproject.toml when it is missing or older than pyproject.toml.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: serve test lint typecheck unit openapi fuzz clean

$(BIN)/moesched: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(BIN)/moesched

serve: $(BIN)/moesched
	$(BIN)/moesched serve

test: $(BIN)/moesched lint typecheck unit

lint: $(BIN)/moesched
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/moesched
	$(BIN)/mypy

# The tests run beside a real Ray head and a real PostgreSQL server on loopback, started (and
# PostgreSQL installed when missing) by tests/with_services.sh for the run's duration.
unit: $(BIN)/moesched
	bash tests/with_services.sh $(BIN)/pytest

fuzz: $(BIN)/moesched
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-50} $(BIN)/pytest tests/service/test_fuzz.py

openapi: $(BIN)/moesched
	$(BIN)/python -m service.openapi_export

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
