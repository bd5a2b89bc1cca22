# The two commands of the README: `make run` and `make test`. Each creates .venv
# when it is missing and installs the project into it first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: run test lint serve tables status clean-results reference docs docs-serve

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/collide run mnist
	$(BIN)/collide compare data/reference/mnist-mlp.parquet data/results/mnist.parquet

# One test worker per core, each on one thread (tests/conftest.py); a file's tests stay in
# one worker (--dist loadfile), so its module-scoped fixtures are built once.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

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

# The published tables: the pipeline itself writes them from the shipped checkpoints
# (collide/models/shipped/); the documentation's results pages read them when built.
# About 30 minutes on 2 cores (LeNet-5 13, the spread over 5 seeds x 4 targets 10, frontier,
# baselines and transfer 3). `make run` compares
# its table with data/reference/mnist-mlp.parquet.
REF_WORK := data/reference-work
reference: $(STAMP)
	rm -rf $(REF_WORK)
	$(BIN)/collide run mnist --no-prefect --results-root $(REF_WORK)/mlp
	$(BIN)/collide run mnist --no-prefect --results-root $(REF_WORK)/lenet5 --set train.arch=lenet5 --set layer=relu3
	cp $(REF_WORK)/mlp/mnist.parquet data/reference/mnist-mlp.parquet
	$(BIN)/collide run spread --no-prefect --results-root $(REF_WORK)/spread
	$(BIN)/collide run frontier --no-prefect --results-root $(REF_WORK)/frontier
	$(BIN)/collide run baselines --no-prefect --results-root $(REF_WORK)/baselines
	$(BIN)/collide run transfer --no-prefect --results-root $(REF_WORK)/transfer
	cp $(REF_WORK)/frontier/frontier.parquet $(REF_WORK)/baselines/baselines.parquet data/reference/
	cp $(REF_WORK)/transfer/transfer-summary.parquet data/reference/
	cp $(REF_WORK)/lenet5/mnist.parquet data/reference/mnist-lenet5.parquet
	cp $(REF_WORK)/spread/spread-summary.parquet $(REF_WORK)/spread/spread-paper.parquet data/reference/
	$(MAKE) docs

# The documentation site (mkdocs.yml, docs/): references and results pages are generated
# as it builds (docs/hooks.py); --strict fails on a broken link, reference or block.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

docs-serve: $(STAMP)
	$(BIN)/mkdocs serve
