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

.PHONY: help install models serve test lint typecheck test-tools bench bench-quick soak gpu-check clean grpc-stubs
.PHONY: docker-tools docker-base docker-build docker-run docker-test

help:
	@echo "make serve      set up, export the models if missing, serve on $(HOST):$(PORT)"
	@echo "make test       lint, type-check and run the whole test suite"
	@echo "make models     export $(MODELS) into models/ (WEIGHTS=imagenet|random|PATH, QUANTIZE=int8)"
	@echo "make bench      benchmark (docs/BENCHMARKS.md, ~30 min); make bench-quick (~5 min)"
	@echo "make soak       2-minute steady-load memory test (opt-in)"
	@echo "make grpc-stubs regenerate the gRPC stubs in server/grpc/proto (after make install)"
	@echo "make docker-build  build the image (TARGET=cpu|gpu) with buildah, no registry needed"
	@echo "make docker-run    run that image's server on :$(PORT)"
	@echo "make docker-test   build the CPU and GPU images and test them running (~20 min, root)"

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

# Tools the tests drive for real, from Debian, installed when missing: promtool/prometheus
# (tests/deploy, tests/monitoring), chromium + chromedriver (tests/browser). One apt-get for all;
# the lock timeout lets it wait for another apt-get on a shared machine instead of failing.
test-tools:
	@missing=""; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get -o DPkg::Lock::Timeout=600 update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq $$missing >/dev/null; \
	  else echo "missing tools: sudo apt-get install$$missing"; exit 1; fi; fi

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy

test: $(BIN)/.installed test-tools lint typecheck
	$(BIN)/python -m pytest

soak: $(BIN)/.installed
	$(BIN)/python -m pytest -m soak -p no:cacheprovider tests/reliability

# Every variant (provider x precision) whose file is in models/: INT8 files come from
# `python -m export ARCH --precision int8`; bf16 runs where the CPU has bf16 units. A subset:
# make bench BENCH_ARGS='--variants resnet50@cpu,resnet50-int8@openvino'
bench: models
	$(BIN)/pip install -q -e '.[export,dev,bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: models
	$(BIN)/pip install -q -e '.[export,dev,bench]'
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

gpu-check:
	bash bench/gpu_check.sh

# Images without a registry or a Docker engine (docs/DEPLOYMENT.md): buildah builds the
# Dockerfile, debootstrap makes the base image Docker users pull. Root only.
DOCKER_BASE_DEFAULT := localhost/resnet-base:bookworm
DOCKER_BASE ?= $(DOCKER_BASE_DEFAULT)
TARGET      ?= cpu
LOCALBUILD  := python3 docker/localbuild.py
# The default base is made when missing; another one must exist (the build pulls nothing).
DOCKER_BASE_DEP := $(if $(filter $(DOCKER_BASE_DEFAULT),$(DOCKER_BASE)),docker-base)

docker-tools:
	@command -v buildah >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap >/dev/null; \
	  else echo "buildah/debootstrap missing, and they need root: sudo apt-get install buildah debootstrap"; exit 1; fi; }

docker-base: docker-tools
	$(LOCALBUILD) base --tag $(DOCKER_BASE_DEFAULT)

docker-build: docker-tools $(DOCKER_BASE_DEP)
	$(LOCALBUILD) build --target $(TARGET) --base $(DOCKER_BASE) --weights $(WEIGHTS) --models "$(MODELS)"

docker-run: docker-tools
	$(LOCALBUILD) run localhost/resnet-server:$(TARGET) --port $(PORT)

docker-test: $(BIN)/.installed docker-tools $(DOCKER_BASE_DEP)
	RESNET_DOCKER_TEST=1 RESNET_DOCKER_BASE=$(DOCKER_BASE) $(BIN)/python -m pytest tests/docker -p no:cacheprovider

# The checked-in gRPC stubs of server/grpc/proto/*.proto (Triton's, vendored: see its README),
# made with the grpcio-tools pinned in pyproject.toml. protoc writes `import model_config_pb2`
# (a top-level module); the sed makes those imports relative to the package.
GRPC_PROTO := server/grpc/proto
grpc-stubs:
	cd $(GRPC_PROTO) && $(abspath $(BIN))/python -m grpc_tools.protoc -I. --python_out=. \
	  --pyi_out=. model_config.proto && $(abspath $(BIN))/python -m grpc_tools.protoc -I. \
	  --python_out=. --pyi_out=. --grpc_python_out=. grpc_service.proto
	sed -i -E 's/^import (model_config|grpc_service)_pb2 as /from . import \1_pb2 as /' \
	  $(GRPC_PROTO)/*_pb2*.py $(GRPC_PROTO)/*_pb2.pyi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
