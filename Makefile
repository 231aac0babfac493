# One task runner. Every target works from a fresh clone with only Python 3.10+ and pip.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test demo lint format typecheck bench bench-quick emulator clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python  ## the workspace, editable, with test and dev tools
	$(BIN)/pip install --quiet -e '.[dev]' -e ./integrations/langchain -e ./integrations/llama-index

test: install  ## the whole test suite (what CI runs)
	$(BIN)/python -m pytest

demo: $(BIN)/python  ## haikucache demo (emulator, or the real API when ANTHROPIC_API_KEY is set)
	$(BIN)/pip install --quiet -e '.[cli]'
	$(BIN)/haikucache demo

emulator: $(BIN)/python  ## serve the emulator on 127.0.0.1:8765
	$(BIN)/pip install --quiet -e '.[cli]'
	$(BIN)/haikucache emulator --port 8765

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: install
	$(BIN)/mypy

bench: install  ## benchmark figures quoted in the README
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/bench_overhead.py --json bench-overhead.json
	$(BIN)/python benchmarks/bench_cost.py --json bench-cost.json --png docs/bench_cost.png
	$(BIN)/python benchmarks/bench_cache.py --json bench-cache.json
	$(BIN)/python benchmarks/bench_semantic.py --json bench-semantic.json --sample 8000
	$(BIN)/python benchmarks/bench_batch.py --json bench-batch.json
	$(BIN)/python benchmarks/bench_langchain.py --json bench-langchain.json

bench-quick: install
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/bench_overhead.py --quick --json bench-overhead.json
	$(BIN)/python benchmarks/bench_cost.py --quick --json bench-cost.json
	$(BIN)/python benchmarks/bench_cache.py --quick --json bench-cache.json
	$(BIN)/python benchmarks/bench_semantic.py --quick --json bench-semantic.json
	$(BIN)/python benchmarks/bench_batch.py --quick --json bench-batch.json
	$(BIN)/python benchmarks/bench_langchain.py --quick --json bench-langchain.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .cache build dist
