"""Choosing the runtime that scores a batch: ONNX Runtime (CPU or CUDA) or the native library.

No runtime wins everywhere (MEASUREMENTS.md, one core): ONNX Runtime has the lowest per-call
cost (XGBoost, one row: 58 vs 604 us), while XGBoost's `inplace_predict` is faster from ~256
rows. So `auto` picks per batch by its row count, up to the limit each version's metadata
records for its exporter (`LoadedModel.onnx_max_rows`; `serving.onnx_max_rows` overrides it).
The Isolation Forest's single-node export beats scikit-learn at every batch size (older
versions, exported by skl2onnx as a 4,004-node graph, only up to ~256 rows), and the
Transformer always runs its ONNX export: as fast as torch on CPU, and it keeps torch out of
serving images.

On a GPU, a model whose whole ONNX graph can be placed on CUDA runs every batch there. The
tree ensembles' operators (`ai.onnx.ml` TreeEnsemble*) have no CUDA kernels: inside a CUDA
session they would run on ONNX Runtime's CPU kernels, slower than the native library at
large batches, so those models keep the CPU policy. Nothing CUDA-related is loaded unless the
installed onnxruntime is the GPU build (onnxruntime-gpu) and `serving.gpu` is `auto`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from models.detector import InputKind
from models.registry import LoadedModel, ScoreBatch
from services.common.config.model import ServingConfig
from services.common.model_names import ModelName

log = logging.getLogger(__name__)

Runtime = Literal["native", "onnx"]


CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def cuda_available() -> bool:
    """True when the installed onnxruntime is the GPU build (onnxruntime-gpu).

    Only then are CUDA and cuDNN loaded (`preload_dlls`, from NVIDIA's PyPI wheels when they
    are installed that way): the CPU build never touches them.
    """
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return False
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception as exc:  # a system-wide CUDA may still be found by the provider
            log.warning("onnxruntime.preload_dlls() failed: %s", exc)
    return True


def runs_fully_on_cuda(model: LoadedModel) -> bool:
    """Whether ONNX Runtime places every node of `model`'s graph on CUDA (no CPU fallback)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    try:
        ort.InferenceSession(str(model.onnx_path), sess_options=options, providers=[CUDA])
    except Exception as exc:  # unsupported operators, or no usable GPU after all
        log.info("%s stays on the CPU: %s", model.name.value, str(exc).splitlines()[0][:200])
        return False
    return True


@dataclass(frozen=True, slots=True)
class RuntimePolicy:
    """How batches of one model are routed to runtimes."""

    mode: Literal["auto", "native", "onnx"]
    onnx_max_rows: int | None
    """Overrides every model's own `LoadedModel.onnx_max_rows` when set."""
    threads: int
    use_cuda: bool

    @classmethod
    def from_config(cls, cfg: ServingConfig) -> RuntimePolicy:
        """Policy from configuration; probes CUDA once when `gpu: auto`."""
        use_cuda = cfg.gpu == "auto" and cuda_available()
        return cls(cfg.runtime, cfg.onnx_max_rows, cfg.intra_op_threads, use_cuda)

    def choose(self, model: LoadedModel, rows: int) -> Runtime:
        """The runtime for a batch of `rows` rows of `model`."""
        if model.input_kind is InputKind.SEQUENCES or model.name is ModelName.TRANSFORMER:
            return "onnx"
        if self.use_cuda or self.mode == "onnx":
            return "onnx"
        if self.mode == "native":
            return "native"
        limit = self.onnx_max_rows if self.onnx_max_rows is not None else model.onnx_max_rows
        return "onnx" if limit is None or rows <= limit else "native"


class ModelRunner:
    """Scores batches of one loaded version with the runtime the policy picks."""

    def __init__(self, model: LoadedModel, policy: RuntimePolicy) -> None:
        self.model = model
        if policy.use_cuda and not runs_fully_on_cuda(model):
            policy = replace(policy, use_cuda=False)
        self.policy = policy
        providers = (CUDA, CPU) if policy.use_cuda else (CPU,)
        self._providers = providers
        # Load both runtimes up front: the first request must not pay for loading.
        self._session = model.onnx_session(threads=policy.threads, providers=providers)
        if policy.use_cuda and self._session.get_providers()[0] != CUDA:
            log.warning(
                "%s: CUDA was chosen but ONNX Runtime runs it on %s",
                model.name.value,
                self._session.get_providers(),
            )
        if policy.choose(model, 1 << 30) == "native" or policy.mode == "native":
            model.native()
        self._set_native_threads()

    def _set_native_threads(self) -> None:
        """XGBoost would use every core by default; the server shares them."""
        if self.model.name is ModelName.XGBOOST:
            booster = getattr(self.model.native(), "_booster", None)
            if booster is not None:
                booster.set_param({"nthread": self.policy.threads})

    def score(self, x: npt.NDArray[np.float32]) -> tuple[ScoreBatch, Runtime]:
        """Calibrated scores (and types) of a validated batch, and the runtime used."""
        runtime = self.policy.choose(self.model, len(x))
        if runtime == "onnx":
            out = self._session.run([self.model.onnx_output], {"features": x})[0]
            raw = np.asarray(out, dtype=np.float32)
        else:
            raw = self.model.native().raw_output(x)
        return self.model.postprocess(raw), runtime
