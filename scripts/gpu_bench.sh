#!/usr/bin/env bash
# ONNX Runtime on the CPU against CUDA for the registry's ONNX models, at batch 1, 64, 1024
# and 8192 (loadtest/bench_serving.py --compare-gpu): rows/s and per-call p50/p99.
#
# onnxruntime and onnxruntime-gpu ship the same `onnxruntime` module, so the GPU build lives
# in a virtualenv of its own, never in the project's: the CPU path and every other
# environment keep plain onnxruntime and never need CUDA. CUDA and cuDNN come from NVIDIA's
# wheels on PyPI (the onnxruntime-gpu[cuda,cudnn] extra), so the host needs only the driver.
# On a machine without an NVIDIA GPU this says so and exits 0.
#
#   scripts/gpu_bench.sh                          # trains a small registry first
#   MODEL_STORE=model_store scripts/gpu_bench.sh  # an existing registry
#
#   MODEL_STORE  registry to measure (default: train one into a temporary folder with the
#                project's .venv, which has torch when the `train` extra is installed, so the
#                Transformer is included)
#   MODEL_SIZE   fixture (default) or production: hyperparameters of that training
#   GPU_VENV     the GPU virtualenv (default: ~/.cache/anomaly-platform/venv-gpu)
#   ORT_GPU      the onnxruntime-gpu requirement (default: onnxruntime-gpu[cuda,cudnn]>=1.18,<2)
#   BENCH_ARGS   more options for bench_serving.py, e.g. "--inproc-duration 2"
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  echo "gpu_bench: no NVIDIA GPU on this machine (nvidia-smi is missing or lists no GPU):" \
    "nothing to compare, skipped."
  exit 0
fi
nvidia-smi -L

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
GPU_VENV="${GPU_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/anomaly-platform/venv-gpu}"
ORT_GPU="${ORT_GPU:-onnxruntime-gpu[cuda,cudnn]>=1.18,<2}"
MODEL_SIZE="${MODEL_SIZE:-fixture}"

# The GPU build as the project's serving code sees it (services.serving.runtime.cuda_available
# loads CUDA/cuDNN through preload_dlls only when the installed onnxruntime is the GPU build).
gpu_ready() {
  "$GPU_VENV/bin/python" - <<'PY'
import sys

from services.serving.runtime import cuda_available

import onnxruntime as ort

ok = cuda_available()
print(f"onnxruntime {ort.__version__} ({ort.get_device()}): {ort.get_available_providers()}")
sys.exit(0 if ok else 1)
PY
}

if [[ -x "$GPU_VENV/bin/python" ]] && gpu_ready 2>/dev/null; then
  echo "[gpu_bench] $GPU_VENV already has the project and onnxruntime-gpu: no install" >&2
else
  if [[ ! -x "$GPU_VENV/bin/python" ]]; then
    echo "[gpu_bench] creating $GPU_VENV" >&2
    "$PYTHON" -m venv "$GPU_VENV"
  fi
  # The project with its `gpu` extra, then both onnxruntime builds out and the GPU build in:
  # installed side by side they overwrite each other's files, and uninstalling either deletes
  # the shared module. (`pip check` will then name the missing CPU `onnxruntime`: intended.)
  # Offline (a GPU host that reaches no index): a wheelhouse made elsewhere with
  # `pip download -d wheels -e ".[gpu]" "$ORT_GPU"` serves through pip's own settings,
  # PIP_NO_INDEX=1 PIP_FIND_LINKS=wheels scripts/gpu_bench.sh.
  if ! { "$GPU_VENV/bin/python" -m pip install -q -e ".[gpu]" &&
    "$GPU_VENV/bin/python" -m pip uninstall -q -y onnxruntime onnxruntime-gpu &&
    "$GPU_VENV/bin/python" -m pip install -q "$ORT_GPU"; }; then
    echo "gpu_bench: installing the project and $ORT_GPU into $GPU_VENV failed; without" \
      "network access use a wheelhouse (PIP_NO_INDEX=1 PIP_FIND_LINKS=<dir>, see above)." >&2
    exit 1
  fi
fi

if ! gpu_ready; then
  echo "gpu_bench: a GPU is present but onnxruntime offers no CUDAExecutionProvider;" \
    "check the driver against the CUDA version of $ORT_GPU (nvidia-smi shows the driver)." >&2
  exit 1
fi

cleanup=""
if [[ -z "${MODEL_STORE:-}" ]]; then
  MODEL_STORE="$(mktemp -d)/model_store"
  cleanup="$(dirname "$MODEL_STORE")"
  trainer="$GPU_VENV/bin/python"
  [[ -x .venv/bin/python ]] && trainer=.venv/bin/python
  "$trainer" loadtest/bench_serving.py --train-store "$MODEL_STORE" --model-size "$MODEL_SIZE"
fi

# shellcheck disable=SC2086  # BENCH_ARGS is a list of options
"$GPU_VENV/bin/python" loadtest/bench_serving.py --compare-gpu --model-store "$MODEL_STORE" \
  ${BENCH_ARGS:-}

if [[ -n "$cleanup" ]]; then
  chmod -R u+w "$cleanup"
  rm -rf "$cleanup"
fi
