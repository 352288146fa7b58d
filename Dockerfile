# syntax=docker/dockerfile:1
# The meshserve image (CPU): every process of the fabric (`meshserve runtime`, `router`,
# `controller`, `agent`, `operator`, ...) from one image; the first argument picks the process.
# Build from the repository root:
#   docker build -t ghcr.io/meshserve/meshserve:0.1.0 .
# The GPU variant (CUDA torch, onnxruntime-gpu) is Dockerfile.gpu. See docs/kubernetes.md,
# "Container image"; tests/test_image.py checks this file (CI has no Docker engine to build it).

ARG PYTHON_IMAGE=python:3.11-slim

# -- builder: the meshserve wheel from this repository, installed into a venv -------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/meshserve
ENV PATH=/opt/meshserve/bin:$PATH

# PyTorch for a CPU image: the CPU build, torch==2.13.0+cpu from PyTorch's CPU wheel index.
# PyPI's Linux torch 2.13.0 wheel is the CUDA 13 build and pulls in gigabytes of cuda-toolkit
# and nvidia-* wheels that a CPU image never uses. It goes in first, without dependencies
# (those come from PyPI below, under the constraints), and stays: the pin `torch==2.13.0` of
# the torch extra and of requirements/constraints.txt names no local label, so by PEP 440
# 2.13.0+cpu satisfies it and pip keeps it instead of fetching PyPI's build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --no-deps --index-url "${TORCH_INDEX_URL}" "torch==2.13.0+cpu"

WORKDIR /src
# What the wheel is built from, and nothing else (see also .dockerignore).
COPY pyproject.toml ./
COPY requirements/constraints.txt requirements/constraints.txt
COPY protos protos
COPY runtimes runtimes
COPY puller puller
COPY mesh mesh
COPY router router
# The router's native front (router/native_front, C++ on Debian's gRPC C++), beside the venv's commands.
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends g++ make pkgconf libgrpc++-dev \
 && rm -rf /var/lib/apt/lists/* \
 && make -C router/native_front clean meshserve-native-front \
 && install -m 0755 router/native_front/meshserve-native-front /opt/meshserve/bin/
RUN pip wheel --no-deps -c requirements/constraints.txt --wheel-dir /wheels . \
 && pip install -c requirements/constraints.txt "$(ls /wheels/meshserve-*.whl)[torch,classic]" \
 && pip check \
 && python -m pip uninstall --yes pip

# -- runtime: the venv alone, run as an unprivileged user ---------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="meshserve" \
      org.opencontainers.image.description="A ModelMesh-style multi-model serving fabric (CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/meshserve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# uid/gid 1000, and USER by number: a pod with `runAsNonRoot: true` (the operator's runtime and
# router pods) can only be checked against a numeric user. /models is where the operator mounts
# the model cache (an emptyDir); owned by that user for `docker run` without a volume.
RUN groupadd --gid 1000 meshserve \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/meshserve --shell /usr/sbin/nologin meshserve \
 && install -d -o 1000 -g 1000 /models
COPY --from=builder /opt/meshserve /opt/meshserve
# gRPC C++'s shared libraries, for the router's native front (`meshserve router --native-front`).
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends libgrpc++1.51 \
 && rm -rf /var/lib/apt/lists/*
USER 1000:1000
WORKDIR /home/meshserve
# Router gRPC (V2 + mmesh.ModelMesh), router REST, Prometheus metrics.
EXPOSE 8033 8008 2112
ENTRYPOINT ["meshserve"]
CMD ["--help"]
