# syntax=docker/dockerfile:1
#
# ResNet18/50 ImageNet inference server (ONNX Runtime, FastAPI, dynamic batching).
#
# Targets (see docs/DEPLOYMENT.md):
#   cpu  - DEFAULT (last stage): python:3.11 slim + onnxruntime (CPU). `docker build .` builds it.
#   gpu  - nvidia/cuda 13.0 + cuDNN 9 runtime (Ubuntu 24.04, Python 3.12) + onnxruntime-gpu.
#
#   docker build --target cpu -t resnet-server:cpu .
#   docker build --target gpu -t resnet-server:gpu .
#   docker build --target cpu --build-arg WEIGHTS=random -t resnet-server:cpu-random .
#
# Models are exported at build time (stage `export`, CPU torch) and copied into the runtime
# images, so the runtime images contain no torch and need no network at start.
#
# Base image pinning: bases are pinned by full version tag. No digest is pinned because none
# could be verified from this environment (no registry access, no Docker engine); a digest
# copied from memory would be worse than none. Pin digests in your registry mirror, e.g.
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm
# and pass --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>.
#
# CUDA / cuDNN pairing: onnxruntime-gpu 1.31.1 from PyPI is built against CUDA 13 (its
# libonnxruntime_providers_cuda.so links libcudart.so.13, libcublas.so.13, libcublasLt.so.13,
# libcurand.so.10; its `cudnn` extra asks for nvidia-cudnn-cu13~=9.0), i.e. CUDA 13.x + cuDNN 9.
# nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 ships CUDA 13.0.1 runtime libraries and
# cuDNN 9.13 for CUDA 13 (libcudnn9-cuda-13). Host driver must support CUDA 13 (>= 580).
# The CUDA 12 build of onnxruntime-gpu is only on Microsoft's own feed, not PyPI.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------
# export: CPU torch, exports the ONNX models to /models at build time.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS export
ARG TORCH_VERSION=2.13.0
ARG ORT_VERSION=1.31.1
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RESNET_WEIGHTS_CACHE=/tmp/weights-cache
WORKDIR /src
# CPU-only torch wheel from PyTorch's index (the PyPI one pulls the CUDA stack).
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml ./
COPY docker/requirements.py docker/requirements.py
# The rest of `.[export]` (onnx, onnxscript, tqdm, numpy, onnxruntime for the export's own
# verification); torch==2.13.0 is already met by the +cpu wheel.
RUN python docker/requirements.py --ort "onnxruntime==${ORT_VERSION}" --extra export > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt
# export/ imports the metadata contract (server/modelmeta.py, stdlib only) from server/.
COPY export/ export/
COPY server/ server/
RUN pip install --no-cache-dir --no-deps .
COPY docker/export_models.py docker/export_models.py
COPY docker/weights/ docker/weights/
# WEIGHTS: imagenet (default, downloads at build time) | random | docker/weights/<file>.pth
# MODELS:  which architectures to export (one only when WEIGHTS is a file).
ARG WEIGHTS=imagenet
ARG MODELS="resnet18 resnet50"
ENV WEIGHTS=${WEIGHTS} \
    MODELS=${MODELS} \
    MODEL_DIR=/models
RUN python docker/export_models.py

# ---------------------------------------------------------------------------------------------
# gpu-build: virtualenv with the server + onnxruntime-gpu (discarded; only /opt/venv is kept).
# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu-build
ARG ORT_GPU_VERSION=1.31.1
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Unpinned apt versions (DL3008) on purpose: the base image is pinned by tag, and Ubuntu's
# archive drops superseded python3.12 security builds, so an exact `=version` pin breaks the
# build within weeks instead of making it reproducible. The interpreter comes from the pinned
# Ubuntu 24.04 release (python3.12); the Python packages below are pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml ./
COPY docker/requirements.py docker/requirements.py
RUN python docker/requirements.py --ort "onnxruntime-gpu==${ORT_GPU_VERSION}" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt
COPY server/ server/
COPY export/ export/
RUN pip install --no-cache-dir --no-deps . \
    && pip uninstall -y pip \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# ---------------------------------------------------------------------------------------------
# gpu: NVIDIA CUDA 13 + cuDNN 9 runtime, non-root, models baked in.
# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu
ENV DEBIAN_FRONTEND=noninteractive
# See gpu-build for why the apt version is not pinned. Only the interpreter: no pip, no venv
# module, no compilers.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 resnet \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin resnet
COPY --from=gpu-build /opt/venv /opt/venv
COPY --from=export --chown=10001:10001 /models /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RESNET_MODEL_DIR=/models \
    RESNET_PORT=8000 \
    RESNET_PROVIDER=cuda \
    RESNET_ALLOW_CPU_FALLBACK=false
LABEL org.opencontainers.image.title="resnet-server" \
      org.opencontainers.image.description="ResNet18/50 ImageNet inference on ONNX Runtime (CUDA 13, cuDNN 9)" \
      org.opencontainers.image.licenses="Apache-2.0"
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RESNET_PORT', '8000'), timeout=2)"]
STOPSIGNAL SIGTERM
# Exec form: python is PID 1 and receives SIGTERM directly (uvicorn handles it and the server
# drains for RESNET_DRAIN_TIMEOUT_S). No shell wrapper.
ENTRYPOINT ["python", "-m", "server"]
CMD ["--host", "0.0.0.0"]

# ---------------------------------------------------------------------------------------------
# cpu-build: virtualenv with the server + onnxruntime (CPU).
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu-build
ARG ORT_VERSION=1.31.1
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml ./
COPY docker/requirements.py docker/requirements.py
RUN python docker/requirements.py --ort "onnxruntime==${ORT_VERSION}" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt
COPY server/ server/
COPY export/ export/
RUN pip install --no-cache-dir --no-deps . \
    && pip uninstall -y pip \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# ---------------------------------------------------------------------------------------------
# cpu (DEFAULT target): slim Python + onnxruntime, non-root, models baked in.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu
RUN groupadd --system --gid 10001 resnet \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin resnet
COPY --from=cpu-build /opt/venv /opt/venv
COPY --from=export --chown=10001:10001 /models /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RESNET_MODEL_DIR=/models \
    RESNET_PORT=8000 \
    RESNET_PROVIDER=cpu
LABEL org.opencontainers.image.title="resnet-server" \
      org.opencontainers.image.description="ResNet18/50 ImageNet inference on ONNX Runtime (CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RESNET_PORT', '8000'), timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "server"]
CMD ["--host", "0.0.0.0"]
