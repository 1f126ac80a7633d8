# syntax=docker/dockerfile:1
# t2vserve on the NGC Triton image: TensorRT plans built with the TensorRT Triton serves them with.
# Used by docker-compose.yml (services engines and triton); see the README, "GPU host".
#
# The NGC release is pinned once: .env (TRITON_IMAGE_TAG, what docker compose passes) and this default,
# which tests/test_deployment.py keeps equal. 24.10 = Triton 2.51 (the server the nvidia-pytriton wheel
# embeds on the CPU path) with TensorRT 10.5.
ARG TRITON_IMAGE_TAG=24.10-py3
FROM nvcr.io/nvidia/tritonserver:${TRITON_IMAGE_TAG}

# TensorRT Python package of the image's TensorRT (t2vserve.engines.NGC_TENSORRT; verified at the end).
ARG TENSORRT_VERSION=10.5.0
# The pinned dependencies need Python 3.11 (diffusers 0.42.1 requires >= 3.11); the image's python3 is 3.10.
ARG PYTHON=python3.11

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends ${PYTHON} ${PYTHON}-venv lib${PYTHON} \
 && rm -rf /var/lib/apt/lists/*
RUN ${PYTHON} -m venv /opt/venv
# First on PATH: the Python backend's stub finds its interpreter (and site-packages) through python3 on PATH.
ENV PATH=/opt/venv/bin:${PATH} VIRTUAL_ENV=/opt/venv

WORKDIR /workspace
# The pinned dependencies first (a layer source changes do not invalidate). On Linux x86_64 PyPI's
# torch==2.13.0 is a CUDA build; tensorrt-cu12's libraries come from NVIDIA's index.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install --upgrade pip \
 && pip install -r /tmp/requirements.txt \
 && pip install --extra-index-url https://pypi.nvidia.com "tensorrt-cu12==${TENSORRT_VERSION}"

# Triton's Python backend runs model.py through a stub built for one Python version (the image's 3.10):
# use the stub for this Python that nvidia-pytriton ships, built from the same Triton release. A symlink,
# not a copy: the stub finds its bundled libraries (CUDA runtime) relative to its real location ($ORIGIN).
RUN stub="$(python -c 'import pathlib, sys, pytriton; print(pathlib.Path(pytriton.__file__).parent / "tritonserver" / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" / "triton_python_backend_stub")')" \
 && test -x "$stub" \
 && ln -sf "$stub" /opt/tritonserver/backends/python/triton_python_backend_stub

COPY t2vserve ./t2vserve
RUN pip install --no-deps .
COPY export ./export
COPY build ./build
COPY client ./client

# Refuse to build an image whose TensorRT Python package differs from the libnvinfer Triton loads plans with.
RUN python build/build_engines.py --tensorrt-info
