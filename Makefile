# The few verbs a newcomer needs. `make serve` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 0.0.0.0
PORT   ?= 8000
MODELS ?= resnet18 resnet50
WEIGHTS ?= imagenet
# Reduced-precision files to make next to each fp32 one: empty (default), int8, fp16 or both.
# Opt-in: INT8 of the offline fallback's random ResNet50 misses the agreement floors
# (docs/PRECISION.md, "Making reduced-precision models").
QUANTIZE ?=

.PHONY: help install models serve test lint typecheck test-tools bench bench-quick soak gpu-check clean

help:
	@echo "make serve      set up, export the models if missing, serve on $(HOST):$(PORT)"
	@echo "make test       lint, type-check and run the whole test suite"
	@echo "make models     export $(MODELS) into models/ (WEIGHTS=imagenet|random|PATH, QUANTIZE=int8)"
	@echo "make bench      benchmark (docs/BENCHMARKS.md); make bench-quick for a smoke run"
	@echo "make soak       2-minute steady-load memory test (opt-in)"

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[export,dev,openvino]'
	touch $@

install: $(BIN)/.installed

# $(call export_model,ARCH,EXTRA ARGS). Exit code 3 from the exporter means "ImageNet weights
# could not be downloaded": only then fall back to seeded random weights, and say so loudly (the
# server says it again in /models and in the resnet_model_info metric).
define export_model
@$(BIN)/python -m export $(1) --weights $(WEIGHTS) --out-dir models $(2); rc=$$?; \
if [ $$rc -eq 3 ]; then \
  echo; echo "!!! ImageNet weights for $(1) could not be downloaded (offline?)."; \
  echo "!!! Exporting SEEDED RANDOM weights instead: predictions will be meaningless."; echo; \
  $(BIN)/python -m export $(1) --weights random --seed 0 --out-dir models $(2); \
elif [ $$rc -ne 0 ]; then exit $$rc; fi
endef

models/%.onnx: | $(BIN)/.installed
	$(call export_model,$*)

# The shorter stem wins, so models/resnet50-int8.onnx is made here, not by the rule above.
models/%-int8.onnx: | $(BIN)/.installed
	$(call export_model,$*,--precision int8)

models/%-fp16.onnx: | $(BIN)/.installed
	$(call export_model,$*,--precision fp16)

models: $(foreach m,$(MODELS),models/$(m).onnx $(foreach q,$(QUANTIZE),models/$(m)-$(q).onnx))

serve: models
	$(BIN)/python -m server --model-dir models --host $(HOST) --port $(PORT)

# Tools the tests drive for real: promtool/prometheus (Debian), installed when missing.
test-tools:
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; \
	  else echo "promtool missing: sudo apt-get install prometheus"; exit 1; fi; }

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy

test: $(BIN)/.installed test-tools lint typecheck
	$(BIN)/python -m pytest

soak: $(BIN)/.installed
	$(BIN)/python -m pytest -m soak -p no:cacheprovider tests/reliability

bench: models
	$(BIN)/pip install -q -e '.[export,dev,bench]'
	$(BIN)/python -m bench

bench-quick: models
	$(BIN)/pip install -q -e '.[export,dev,bench]'
	$(BIN)/python -m bench --quick

gpu-check:
	bash bench/gpu_check.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
