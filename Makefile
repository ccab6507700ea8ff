# edgerun developer tasks. `make setup` makes .venv with everything; `make test` runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first and pinned: 2.13.0 is the CPU build on this machine's disk; an unpinned torch pulls
# several GB of CUDA wheels.
TORCH ?= torch==2.13.0

.PHONY: setup test test-fast lint docs demo bench-peers clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[all,dev]"

test:
	$(BIN)/python -m pytest -q -ra

test-fast:
	$(BIN)/python -m pytest -q -ra -m "not slow"

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	rm -rf build/typecheck && $(BIN)/pip install -q --no-deps --no-build-isolation --target build/typecheck .
	cd build/typecheck && ../../$(BIN)/mypy -p edgerun --config-file ../../pyproject.toml

docs:
	$(BIN)/python -m edgerun.cli.reference README.md

demo: setup
	$(BIN)/edgerun pull smollm2-135m
	$(BIN)/edgerun info $$($(BIN)/edgerun pull smollm2-135m 2>/dev/null)

bench-peers:
	$(BIN)/python -m benchmarks.peers

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
