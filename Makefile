# The two commands of the README: `make run` and `make test`. Each creates .venv
# when it is missing and installs the project into it first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: run test lint serve tables status clean-results

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/collide run mnist

test: $(STAMP)
	$(BIN)/python -m pytest -q

serve: $(STAMP)
	$(BIN)/collide serve

tables: $(STAMP)
	$(BIN)/collide tables

status: $(STAMP)
	$(BIN)/collide status

lint: $(STAMP)
	$(BIN)/ruff check collide tasks flows tests

clean-results:
	rm -rf data/results

# Speed and scale against reference runs (not run by CI; about 15 minutes on 2 cores).
# Rewrites benchmarks/results.md and benchmarks/results.json.
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run
