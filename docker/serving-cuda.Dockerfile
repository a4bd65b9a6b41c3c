# syntax=docker/dockerfile:1.7
#
# CUDA model server: the project with the `gpu` extra (onnxruntime-gpu: CUDA execution
# provider) on an NVIDIA CUDA + cuDNN runtime image.
#
#   docker build -f docker/serving-cuda.Dockerfile -t anomaly-serving-cuda:dev .
#
# onnxruntime-gpu 1.x wheels on PyPI target CUDA 12 and cuDNN 9, hence the base below; the
# host needs an NVIDIA driver new enough for that CUDA release (the device plugin exposes
# nvidia.com/gpu to the chart). Python 3.11 comes from Ubuntu 22.04's own archive, so the
# builder and runtime stages share the exact interpreter the venv was made with.

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

# ------------------------------------------------------------------ base
FROM ${CUDA_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# ------------------------------------------------------------------ builder
FROM base AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY models ./models
# onnxruntime (CPU, a core dependency) and onnxruntime-gpu ship the same `onnxruntime`
# module: install both, remove the CPU one, then reinstall the GPU wheel over the files the
# removal took away (same resolved version, no dependency changes).
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --upgrade pip \
 && pip install ".[gpu]" \
 && gpu_pin="$(pip freeze | grep -i '^onnxruntime-gpu==')" \
 && pip uninstall -y onnxruntime \
 && pip install --no-deps --force-reinstall "$gpu_pin" \
 && pip check \
 && python -c "import onnxruntime as ort; assert 'CUDAExecutionProvider' in ort.get_available_providers(), ort.get_available_providers()" \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# ------------------------------------------------------------------ runtime
FROM base AS serving
RUN groupadd --system --gid 10001 anomaly \
 && useradd --system --uid 10001 --gid anomaly --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin anomaly \
 && mkdir -p /var/lib/anomaly /etc/anomaly /mnt/models \
 && chown anomaly:anomaly /var/lib/anomaly
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    ANOMALY_CONFIG=/etc/anomaly/platform.yaml
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY config/platform.yaml /etc/anomaly/platform.yaml
COPY feature_repo ./feature_repo
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["anomaly"]
CMD ["serve", "--help"]
