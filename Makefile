# Two entry points: `make serve` (the service with embedded defaults) and `make test`.
# Each creates .venv from pyproject.toml (versions pinned by constraints.txt) when it is missing
# or older than either file.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: serve test lint typecheck unit openapi fuzz mutants planted load-check clean

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

# The tests run beside a real Ray head and a real PostgreSQL server on loopback, started (and
# PostgreSQL installed when missing) by tests/with_services.sh for the run's duration.
unit: $(BIN)/moesched
	bash tests/with_services.sh $(BIN)/pytest

fuzz: $(BIN)/moesched
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-50} $(BIN)/pytest tests/service/test_fuzz.py

# Mutation testing and planted bugs (slow, not in CI): docs/mutants.json, docs/planted_bugs.json.
# MUTANT_GROUPS picks module groups (executor costs placement eplb ordering prefetch);
# MUTANT_SAMPLE a glob on mutant names (e.g. '*__mutmut_*[05]' for 1 in 5); MUTANT_FRACTION a
# deterministic sample by name hash (e.g. 0.02), uniform over functions.
mutants: $(BIN)/moesched
	$(BIN)/python -m pip install --quiet -e '.[mutants]'
	nice -n 10 $(BIN)/python -m tests.mutants --json docs/mutants.json $(if $(MUTANT_GROUPS),--groups $(MUTANT_GROUPS)) $(if $(MUTANT_SAMPLE),--sample '$(MUTANT_SAMPLE)') $(if $(MUTANT_FRACTION),--fraction $(MUTANT_FRACTION))

planted: $(BIN)/moesched
	nice -n 10 $(BIN)/python -m tests.planted_bugs --json docs/planted_bugs.json

# The deterministic benchmarks' --quick figures as the machine is and beside 2 CPU burners:
# every figure but the timings must be equal (exit 1 otherwise); docs/load_independence.json.
# The script runs each benchmark under nice -n 10 itself (nicing it here too would put the
# benchmarks at 19, beside the burners', and starve them on a shared machine).
load-check: $(BIN)/moesched
	$(BIN)/python -m tests.load_independence --json docs/load_independence.json

openapi: $(BIN)/moesched
	$(BIN)/python -m service.openapi_export

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
