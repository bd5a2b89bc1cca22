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
# one worker (--dist loadfile), so its module-scoped fixtures are built once, and the files
# that build pynndescent indexes share one (tests/support.py's SHARED_WORKER).
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

# The GPU path in one run, on a machine with CUDA (refused without it; at most about 5
# minutes on an H200-class card): VGG-16 fc6 solver steps per second against the card's
# measured matmul rate, the patch composition at 224 px, 10,000 MNIST targets as one
# batch, and CPU-vs-GPU agreement of vertices with TF32 off. Rewrites benchmarks/gpu.json.
# BENCH_GPU_ARGS="--device cpu --tiny --out /tmp/gpu.json" checks it on a CPU in seconds.
.PHONY: bench-gpu
BENCH_GPU_ARGS ?=
bench-gpu: $(STAMP)
	$(BIN)/python -m benchmarks.gpu_suite $(BENCH_GPU_ARGS)

# The published tables: the pipeline itself writes them from the shipped checkpoints
# (collide/models/shipped/); the documentation's results pages read them when built.
# About 45 minutes on 2 cores (LeNet-5 13, the spread over 5 seeds x 4 targets 10, activations 15, frontier,
# baselines 2 and transfer 6, their sets sampled until they mix), then the paper's §5 experiments (thin on the shipped checkpoints;
# mislabelled and regularisers train their models here: about an hour more on a loaded
# 2-core machine). `make run` compares its table with data/reference/mnist-mlp.parquet.
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
	$(BIN)/collide run activations --no-prefect --results-root $(REF_WORK)/activations
	cp $(REF_WORK)/frontier/frontier.parquet $(REF_WORK)/baselines/baselines.parquet data/reference/
	cp $(REF_WORK)/transfer/transfer-summary.parquet data/reference/
	cp $(REF_WORK)/lenet5/mnist.parquet data/reference/mnist-lenet5.parquet
	cp $(REF_WORK)/spread/spread-summary.parquet $(REF_WORK)/spread/spread-paper.parquet data/reference/
	cp $(REF_WORK)/activations/activations-summary.parquet data/reference/
	$(BIN)/collide run thin --no-prefect --results-root $(REF_WORK)/thin
	$(BIN)/collide run mislabelled --no-prefect --results-root $(REF_WORK)/mislabelled
	$(BIN)/collide run regularisers --no-prefect --results-root $(REF_WORK)/regularisers
	cp $(REF_WORK)/thin/thin-summary.parquet $(REF_WORK)/mislabelled/mislabelled-summary.parquet \
		$(REF_WORK)/regularisers/regularisers-summary.parquet data/reference/
	$(MAKE) docs

# The documentation site (mkdocs.yml, docs/): references and results pages are generated
# as it builds (docs/hooks.py); --strict fails on a broken link, reference or block.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

docs-serve: $(STAMP)
	$(BIN)/mkdocs serve
