# syntax=docker/dockerfile:1
#
# ResNet18/50 ImageNet inference server (ONNX Runtime, FastAPI, dynamic batching).
#
# Targets (see docs/DEPLOYMENT.md):
#   cpu  - DEFAULT (last stage): Python 3.11 + onnxruntime (CPU) + the OpenVINO runtime.
#   gpu  - the same base + onnxruntime-gpu, with CUDA 13 and cuDNN 9 from NVIDIA's pip wheels.
#
#   docker build --target cpu -t resnet-server:cpu .
#   docker build --target gpu -t resnet-server:gpu .
#   docker build --target cpu --build-arg WEIGHTS=random -t resnet-server:cpu-random .
#
# Models are exported at build time (stage `export`, CPU torch) and copied into the runtime
# images, so the runtime images contain no torch and need no network at start.
#
# Built and run for real by `make docker-test` (tests/docker/), with buildah and a base image
# made by debootstrap, on a machine with no registry access: see docs/DEPLOYMENT.md.
#
# Base image: PYTHON_IMAGE must provide `python3` (3.11, with the venv module) and
# useradd/groupadd; python:3.11-slim and Debian 12 with python3-venv both do. It is pinned by
# full version tag; pin a digest in your mirror with
#   --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>
#
# CUDA / cuDNN: onnxruntime-gpu 1.31.1 from PyPI is built against CUDA 13 (its
# libonnxruntime_providers_cuda.so links libcudart.so.13, libcublas.so.13, libcublasLt.so.13,
# libcurand.so.10 and libcuda.so.1; it dlopens libcudnn.so.9). Its `cuda` and `cudnn` extras
# install exactly those libraries as NVIDIA's pip wheels (nvidia-cuda-runtime, nvidia-curand,
# nvidia-cudnn-cu13 -> nvidia-cublas, ...), so the GPU image needs no nvidia/cuda base image.
# libcuda.so.1 is the driver's: the NVIDIA Container Toolkit mounts it at run time. Host driver
# must support CUDA 13 (>= 580).
#
# Layer order, most stable first: the dependencies (/opt/venv, changes with pyproject.toml),
# the models (/models, changes with export/ or the weights), the application (/opt/app, changes
# with every commit). A change to server/ rebuilds only the last, small layer.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------------------------------------
# torch-wheels: local wheels offered to the export stage's torch install. Empty by default;
# a machine that keeps the CPU torch wheel on disk instead of reaching download.pytorch.org
# replaces it with  --build-context torch-wheels=/path/to/wheels  (see docs/DEPLOYMENT.md).
# ---------------------------------------------------------------------------------------------
FROM scratch AS torch-wheels

# ---------------------------------------------------------------------------------------------
# venv: an empty virtualenv on the base interpreter (Debian's python3 refuses system-wide pip
# installs, PEP 668; python:3.11-slim allows them, the venv works on both).
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS venv
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
WORKDIR /src

# ---------------------------------------------------------------------------------------------
# export: CPU torch, exports the ONNX models to /models at build time.
# ---------------------------------------------------------------------------------------------
FROM venv AS export
ARG TORCH_VERSION=2.13.0
# The `+cpu` build only: PyPI's torch of the same version pulls the multi-GB CUDA stack. The
# index also serves torch's own dependencies (sympy, networkx, ...).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG ORT_VERSION=1.31.1
ENV PYTHONUNBUFFERED=1 \
    RESNET_WEIGHTS_CACHE=/tmp/weights-cache
RUN --mount=type=bind,from=torch-wheels,target=/wheels \
    pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" --find-links /wheels \
        "torch==${TORCH_VERSION}+cpu"
COPY pyproject.toml ./
COPY docker/requirements.py docker/requirements.py
# The rest of `.[export]` (onnx, onnxscript, tqdm, numpy, scikit-image's photos for INT8
# calibration) and `.[openvino]`: the export verifies each model, and measures each INT8
# model's agreement, on the engine the CPU image serves it with. torch==2.13.0 is already met
# by the +cpu wheel.
RUN python docker/requirements.py --ort "onnxruntime==${ORT_VERSION}" --extra "export openvino" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt
# The export verifies with the contract's preprocessing and verification photos (contract/) on
# the server's own engines (server/models/engines), so it needs both: a change re-exports the models.
COPY contract/ contract/
COPY export/ export/
COPY server/ server/
RUN pip install --no-cache-dir --no-deps .
COPY docker/export_models.py docker/export_models.py
COPY docker/weights/ docker/weights/
# WEIGHTS: imagenet (default, downloads at build time) | random | docker/weights/<file>.pth
# MODELS:  which architectures to export (one only when WEIGHTS is a file).
# QUANTIZE: reduced precisions to export beside each fp32 model, e.g. "int8" (calibrated on
#          scikit-image's photos, verified on OpenVINO, the CPU image's provider)
ARG WEIGHTS=imagenet
ARG MODELS="resnet18 resnet50"
ARG QUANTIZE=""
ENV WEIGHTS=${WEIGHTS} \
    MODELS=${MODELS} \
    QUANTIZE=${QUANTIZE} \
    MODEL_DIR=/models
RUN python docker/export_models.py

# ---------------------------------------------------------------------------------------------
# app: the project itself (contract/, server/, export/ and its dist-info for the version),
# apart from its dependencies, so that a code change does not rebuild or re-ship the dependency
# layer.
# ---------------------------------------------------------------------------------------------
FROM venv AS app
COPY pyproject.toml ./
COPY contract/ contract/
COPY export/ export/
COPY server/ server/
RUN pip install --no-cache-dir --no-deps --target /opt/app .

# ---------------------------------------------------------------------------------------------
# cpu-deps / gpu-deps: the server's dependencies from pyproject.toml, with onnxruntime replaced
# by the CPU or the GPU build; pip and setuptools removed afterwards.
# ---------------------------------------------------------------------------------------------
FROM venv AS cpu-deps
ARG ORT_VERSION=1.31.1
# Optional-dependency groups of pyproject.toml to add, space separated ("" for none).
ARG CPU_EXTRAS=openvino
COPY pyproject.toml docker/requirements.py ./
RUN python requirements.py --ort "onnxruntime==${ORT_VERSION}" --extra "${CPU_EXTRAS}" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && pip uninstall -q -y pip setuptools

FROM venv AS gpu-deps
ARG ORT_GPU_VERSION=1.31.1
COPY pyproject.toml docker/requirements.py ./
RUN python requirements.py --ort "onnxruntime-gpu[cuda,cudnn]==${ORT_GPU_VERSION}" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && pip uninstall -q -y pip setuptools

# ---------------------------------------------------------------------------------------------
# runtime: what both images share. Non-root user, settings, probes, signal, entry point.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 resnet \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin resnet
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RESNET_MODEL_DIR=/models \
    RESNET_PORT=8000 \
    RESNET_GRPC_PORT=8001
WORKDIR /tmp
EXPOSE 8000
# gRPC: the v2 GRPCInferenceService (tritonclient.grpc) and grpc.health.v1.
EXPOSE 8001
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RESNET_PORT', '8000'), timeout=2)"]
STOPSIGNAL SIGTERM
# Exec form: python is PID 1 and receives SIGTERM directly (uvicorn handles it and the server
# drains for RESNET_DRAIN_TIMEOUT_S). No shell wrapper.
ENTRYPOINT ["python", "-m", "server"]
CMD ["--host", "0.0.0.0"]

# ---------------------------------------------------------------------------------------------
# gpu: onnxruntime-gpu + CUDA 13 / cuDNN 9 wheels, non-root, models baked in.
# ---------------------------------------------------------------------------------------------
FROM runtime AS gpu
COPY --from=gpu-deps /opt/venv /opt/venv
# The CUDA and cuDNN libraries live in the wheels' site-packages/nvidia/*/lib folders: register
# them with the dynamic loader, so onnxruntime's CUDA provider finds them without code changes.
RUN find /opt/venv -type d -path '*/site-packages/nvidia/*/lib' > /etc/ld.so.conf.d/resnet-nvidia-pip.conf \
    && ldconfig
COPY --from=export /models /models
COPY --from=app /opt/app /opt/app
ENV RESNET_PROVIDER=cuda \
    RESNET_ALLOW_CPU_FALLBACK=false
LABEL org.opencontainers.image.title="resnet-server" \
      org.opencontainers.image.description="ResNet18/50 ImageNet inference on ONNX Runtime (CUDA 13, cuDNN 9)" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 10001:10001

# ---------------------------------------------------------------------------------------------
# cpu (DEFAULT target): OpenVINO (onnxruntime's CPU provider also installed), non-root, models baked in.
# ---------------------------------------------------------------------------------------------
FROM runtime AS cpu
COPY --from=cpu-deps /opt/venv /opt/venv
COPY --from=export /models /models
COPY --from=app /opt/app /opt/app
# auto = OpenVINO where installed (CPU_EXTRAS=openvino, the default): fp32 as exact as ORT's CPU
# provider, and the CPU's matrix units for bf16 / INT8 (docs/PRECISION.md); ONNX Runtime's CPU
# provider in an image built with CPU_EXTRAS=. RESNET_PROVIDER=cpu forces the latter.
ENV RESNET_PROVIDER=auto
LABEL org.opencontainers.image.title="resnet-server" \
      org.opencontainers.image.description="ResNet18/50 ImageNet inference on OpenVINO or ONNX Runtime (CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 10001:10001
