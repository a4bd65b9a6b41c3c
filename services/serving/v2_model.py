"""One KServe model per model kind, serving one or more registry versions over V2.

Request: one input tensor `features`, FP32, shape [n, 25] (rows) or [n, L, 25] (the
Transformer's sequences), with L and 22 fixed by the version's metadata. Response:
`score` (FP32 [n], calibrated to [0, 1]), `raw` (FP32 [n], the score before calibration) and,
for XGBoost, `anomaly_type` (INT32 [n], index into `AnomalyType`). The response names the
version that scored it; a request may ask for a version (gRPC `model_version`, or the REST
path `/v2/models/<name>/versions/<version>/infer`), otherwise the default version answers.

Every client mistake is a KServe `InvalidInput` (HTTP 400 / gRPC INVALID_ARGUMENT) naming the
problem; an unknown version is `ModelNotFound` (404); nothing a client sends can cause a 500.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import numpy as np
import numpy.typing as npt
from kserve import Model
from kserve.errors import InvalidInput, ModelNotFound
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from models.detector import InputKind
from models.registry import LoadedModel, ScoreBatch
from services.common.features.definition import FEATURE_NAMES
from services.common.model_names import ModelName
from services.serving.batching import DynamicBatcher
from services.serving.metrics import ServingMetrics
from services.serving.runtime import ModelRunner, RuntimePolicy

log = logging.getLogger(__name__)

INPUT_NAME = "features"


def _split(result: tuple[ScoreBatch, str], start: int, stop: int) -> tuple[ScoreBatch, str]:
    batch, runtime = result
    types = batch.anomaly_type[start:stop] if batch.anomaly_type is not None else None
    return ScoreBatch(batch.score[start:stop], batch.raw[start:stop], types), runtime


class VersionedModel(Model):  # type: ignore[misc]
    """A V2 model whose versions come from the registry; each version has its own batcher."""

    def __init__(
        self,
        name: ModelName,
        versions: list[LoadedModel],
        default_version: str,
        policy: RuntimePolicy,
        *,
        max_batch_rows: int,
        max_batch_delay_s: float,
        max_request_rows: int,
        metrics: ServingMetrics,
    ) -> None:
        super().__init__(name.value)
        self.kind = name
        self.default_version = default_version
        self.max_request_rows = max_request_rows
        self._policy = policy
        self._metrics = metrics
        self._versions = {m.version: m for m in versions}
        self._runners: dict[str, ModelRunner] = {}
        self._batchers: dict[str, DynamicBatcher[tuple[ScoreBatch, str]]] = {}
        self._max_batch_rows = max_batch_rows
        self._max_batch_delay_s = max_batch_delay_s
        if default_version not in self._versions:
            raise ValueError(f"default version {default_version} is not among the loaded ones")

    @property
    def versions(self) -> list[str]:
        """Loaded versions."""
        return sorted(self._versions, key=int)

    def load(self) -> bool:
        """Open every version's runtimes now, so the first request pays nothing."""
        for version, model in self._versions.items():
            runner = ModelRunner(model, self._policy)
            self._runners[version] = runner
            self._batchers[version] = DynamicBatcher(
                self._scorer(runner),
                _split,
                max_rows=self._max_batch_rows,
                max_delay_s=self._max_batch_delay_s,
                on_batch=self._observer(version),
            )
        self.ready = True
        return True

    async def close(self) -> None:
        """Not ready, and every version's batcher stopped (worker task and thread), for owners
        that run the model in their own event loop and must not leave its workers behind (the
        in-process replay clients).

        Separate from KServe's `stop()`, which the ModelServer calls from its SIGTERM handler
        and which therefore only marks the model not ready: the servers then drain requests
        in flight through these batchers for the grace period, and stopped batchers would
        leave those requests waiting until it ends.
        """
        self.stop()
        for batcher in self._batchers.values():
            await batcher.close()

    def _scorer(self, runner: ModelRunner) -> Any:
        def run(x: npt.NDArray[np.float32]) -> tuple[ScoreBatch, str]:
            batch, runtime = runner.score(x)
            if len(batch.score) != len(x):
                raise RuntimeError(f"model returned {len(batch.score)} scores for {len(x)} rows")
            return batch, runtime

        return run

    def _observer(self, version: str) -> Any:
        def observe(requests: int, rows: int, seconds: float) -> None:
            self._metrics.observe_batch(self.kind.value, version, requests, rows, seconds)

        return observe

    # ------------------------------------------------------------------ V2

    def _model_for(self, version: str | None) -> LoadedModel:
        chosen = version or self.default_version
        model = self._versions.get(chosen)
        if model is None:
            raise ModelNotFound(
                f"{self.kind.value} version {chosen} (loaded: {', '.join(self.versions)})"
            )
        return model

    def decode(self, request: InferRequest, model: LoadedModel) -> npt.NDArray[np.float32]:
        """The validated input tensor, or InvalidInput saying exactly what is wrong."""
        inputs = {i.name: i for i in request.inputs}
        tensor = inputs.get(INPUT_NAME)
        if tensor is None or len(inputs) != 1:
            names = ", ".join(sorted(inputs)) or "none"
            raise InvalidInput(f"expected exactly one input named {INPUT_NAME!r}, got: {names}")
        if tensor.datatype != "FP32":
            raise InvalidInput(f"input {INPUT_NAME!r} must be FP32, got {tensor.datatype}")
        width = len(FEATURE_NAMES)
        expected: tuple[int | None, ...]
        if model.input_kind is InputKind.SEQUENCES:
            expected = (None, model.sequence_length, width)
        else:
            expected = (None, width)
        shape = tuple(int(d) for d in tensor.shape)
        if len(shape) != len(expected) or any(
            e is not None and s != e for s, e in zip(shape, expected, strict=True)
        ):
            wanted = "[" + ", ".join("n" if e is None else str(e) for e in expected) + "]"
            raise InvalidInput(f"input {INPUT_NAME!r} must have shape {wanted}, got {list(shape)}")
        rows = shape[0]
        if rows < 1:
            raise InvalidInput("the batch is empty")
        if rows > self.max_request_rows:
            raise InvalidInput(
                f"batch of {rows} rows exceeds the limit of "
                f"{self.max_request_rows} rows per request"
            )
        try:
            x = np.ascontiguousarray(tensor.as_numpy(), dtype=np.float32)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(
                f"input {INPUT_NAME!r} data does not match its shape: {exc}"
            ) from None
        if x.shape != shape:
            raise InvalidInput(f"input {INPUT_NAME!r} data has shape {x.shape}, declared {shape}")
        finite = np.isfinite(x)
        if model.input_kind is InputKind.SEQUENCES:
            # A young entity's sequence is padded at the front with all-NaN rows (see
            # models.sequences); only those may hold NaN, and nothing may be infinite. The
            # last row is the event being scored: a sequence without it (all padding) would
            # be scored as the most anomalous there is.
            padding = np.asarray(np.isnan(x).all(axis=-1))
            after_event = np.maximum.accumulate(~padding, axis=-1) & padding
            if after_event.any():
                seq, pos = np.argwhere(after_event)[0].tolist()
                raise InvalidInput(
                    f"input {INPUT_NAME!r} sequence {seq} has an all-NaN row at {pos} after an "
                    "event: padding goes only before the first event"
                )
            if padding[:, -1].any():
                seq = int(np.flatnonzero(padding[:, -1])[0])
                raise InvalidInput(
                    f"input {INPUT_NAME!r} sequence {seq} ends with padding: its last row must "
                    "be the event being scored"
                )
            finite |= padding[..., None]
        if not finite.all():
            bad = np.argwhere(~finite)[0].tolist()
            raise InvalidInput(f"input {INPUT_NAME!r} holds NaN or infinity (first at {bad})")
        return x

    async def predict(
        self,
        payload: InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        """Validate, batch with concurrent requests, score, answer with scores and version."""
        if not isinstance(payload, InferRequest):
            raise InvalidInput("expected a V2 inference request")
        started = time.perf_counter()
        version = payload.model_version or None
        model = self._model_for(version)
        x = self.decode(payload, model)
        batch, runtime = await self._batchers[model.version].submit(x)
        # gRPC answers carry raw little-endian bytes (cheap for the router to decode); REST
        # answers plain JSON lists, which any HTTP client reads.
        binary = bool(payload.from_grpc)
        outputs = [
            _output("score", batch.score.astype(np.float32), binary),
            _output("raw", batch.raw.astype(np.float32), binary),
        ]
        if batch.anomaly_type is not None:
            outputs.append(_output("anomaly_type", batch.anomaly_type.astype(np.int32), binary))
        self._metrics.observe_request(
            self.kind.value, model.version, runtime, len(x), time.perf_counter() - started
        )
        return InferResponse(
            response_id=payload.id or str(uuid.uuid4()),
            model_name=self.name,
            model_version=model.version,
            infer_outputs=outputs,
            from_grpc=payload.from_grpc,
        )


def _output(name: str, values: npt.NDArray[Any], binary: bool) -> InferOutput:
    datatype = "FP32" if values.dtype == np.float32 else "INT32"
    out = InferOutput(name=name, shape=list(values.shape), datatype=datatype)
    out.set_data_from_numpy(values, binary_data=binary)
    return out
