# edgerun developer tasks. `make setup` makes .venv with everything; `make test` runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first and pinned: 2.13.0 is the CPU build on this machine's disk; an unpinned torch pulls
# several GB of CUDA wheels.
TORCH ?= torch==2.13.0

.PHONY: setup test test-fast test-arm test-arm-gguf lint docs demo bench-peers clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Stamp of a complete install: `make test` on a fresh clone sets itself up first.
STAMP := $(VENV)/.installed

setup: $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[all,dev]"
	touch $(STAMP)

$(STAMP): pyproject.toml | $(BIN)/python
	$(MAKE) setup

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow"

# arm64 under qemu-user: the lean wheel on emulated Cortex-A53 / A72 / A76 / Neoverse-N1 (root;
# cached in /var/cache/edgerun-arm; EDGERUN_SKIP_ARM=1 skips it). See tests/arm/lane.sh.
test-arm: $(STAMP)
	HOST_PY=$(BIN)/python bash tests/arm/lane.sh

# Optional and slow (llama.cpp compiled under emulation): llama-cpp-python built for arm64 with
# GGML_NATIVE=OFF in the same root file system, then imported there.
test-arm-gguf:
	bash tests/arm/lane.sh gguf

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	rm -rf build/typecheck && $(BIN)/pip install -q --no-deps --no-build-isolation --target build/typecheck .
	cd build/typecheck && ../../$(BIN)/mypy -p edgerun --config-file ../../pyproject.toml

docs:
	$(BIN)/python -m edgerun.cli.reference README.md

DEMO_OUT ?= out/demo

demo: setup
	$(BIN)/edgerun pull smollm2-135m
	$(BIN)/edgerun info $$($(BIN)/edgerun pull smollm2-135m 2>/dev/null)
	$(BIN)/edgerun export smollm2-135m -f onnx-int4,gguf-q4_k_m -o $(DEMO_OUT) --overwrite
	$(BIN)/edgerun run $(DEMO_OUT)/onnx-int4 "The capital of France is" --max-tokens 24
	$(BIN)/edgerun run $(DEMO_OUT)/gguf-q4_k_m "Write a haiku about the sea." --chat --max-tokens 48
	$(BIN)/edgerun bench $(DEMO_OUT)/onnx-int4 $(DEMO_OUT)/gguf-q4_k_m --prompt-tokens 128 \
		--gen-tokens 64 --reps 3 --json $(DEMO_OUT)/bench-$$(date +%Y%m%d-%H%M%S).json

bench-peers:
	$(BIN)/python -m benchmarks.peers

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
