# The two commands of the README, and the benchmarks. Every target creates the virtual
# environment and installs the project into it first, so a fresh checkout needs only
# Python 3.11 and make.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench bench-evaluator bench-graph bench-store bench-collector bench-campaigns bench-flink bench-decide bench-decide-instructions bench-analytics bench-analytics-instructions clean clean-data

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[flink,collector,test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/orion run $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: bench-evaluator bench-graph bench-store bench-collector bench-campaigns bench-flink bench-decide bench-analytics

bench-evaluator: $(STAMP)
	$(BIN)/python -m benchmarks.bench_evaluator $(ARGS)

bench-graph: $(STAMP)
	$(BIN)/python -m benchmarks.bench_graph $(ARGS)

bench-store: $(STAMP)
	$(BIN)/python -m benchmarks.bench_store $(ARGS)

bench-collector: $(STAMP)
	$(BIN)/python -m benchmarks.bench_collector $(ARGS)

bench-campaigns: $(STAMP)
	$(BIN)/python -m benchmarks.bench_campaigns $(ARGS)

bench-flink: $(STAMP)
	$(BIN)/python -m benchmarks.bench_flink $(ARGS)

bench-decide: $(STAMP)
	$(BIN)/python -m benchmarks.bench_decide $(ARGS)

bench-decide-instructions: $(STAMP)  # needs valgrind
	$(BIN)/python -m benchmarks.decide_instructions $(ARGS)

bench-analytics: $(STAMP)
	$(BIN)/python -m benchmarks.bench_analytics $(ARGS)

bench-analytics-instructions: $(STAMP)  # needs valgrind
	$(BIN)/python -m benchmarks.analytics_instructions $(ARGS)

clean:  # the environment and the test caches; the data in orion-data/ stays (make clean-data)
	rm -rf $(VENV) .pytest_cache .hypothesis

clean-data:  # what the commands wrote by default: store, outbox, collector keys, Flink state
	rm -rf orion-data
