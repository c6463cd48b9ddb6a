# Two entry points: `make serve` (the service with embedded defaults) and `make test`.
# Each creates .venv from pyproject.toml (versions pinned by constraints.txt) when it is missing
# or older than either file.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: serve test lint typecheck unit openapi fuzz clean

$(BIN)/moesched: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(BIN)/moesched

serve: $(BIN)/moesched
	$(BIN)/moesched serve

test: $(BIN)/moesched lint typecheck unit

lint: $(BIN)/moesched
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/moesched
	$(BIN)/mypy

unit: $(BIN)/moesched
	$(BIN)/pytest

fuzz: $(BIN)/moesched
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-50} $(BIN)/pytest tests/service/test_fuzz.py

openapi: $(BIN)/moesched
	$(BIN)/python -m service.openapi_export

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
