"""Calling the model servers over the Open Inference Protocol v2 (gRPC), defensively.

Each model endpoint gets one long-lived async gRPC channel, a per-call deadline, a few
retries with jittered backoff for transient failures, and a circuit breaker: after repeated
failures the model is skipped for a cool-down instead of making every batch wait for its
timeout, and the vote goes on with the other models (decisions are marked degraded).
Tensors travel as raw little-endian bytes (`raw_input_contents`), the cheapest encoding to
build and parse for batches of thousands of rows.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import numpy as np
import numpy.typing as npt
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

from services.common.config.model import EndpointConfig
from services.common.model_names import ModelName

log = logging.getLogger(__name__)

_DTYPES = {"FP32": np.float32, "INT32": np.int32, "INT64": np.int64, "FP64": np.float64}
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
}


MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""Largest tensor sent in one V2 call; bigger batches go as several concurrent calls. gRPC
servers refuse larger messages by default (4 MiB; the KServe server here allows 8 MiB), and a
stream batch of Transformer sequences (16 rows of 22 floats per event) passes that at ~3,000
events."""


class ModelCallError(RuntimeError):
    """A model could not score a batch (down, slow, refused, or circuit open)."""


@dataclass(frozen=True, slots=True)
class ModelOutput:
    """What one model returned for a batch."""

    score: npt.NDArray[np.float64]
    anomaly_type: npt.NDArray[np.int64] | None
    version: str


class ModelClient(Protocol):
    """What the scoring core needs from a model: a batch scored, and resources released.

    A protocol rather than the V2 client's class, so that a replay can hand the core models
    running in this process (`model_clients_local.InProcessModelClient`) and tests can hand
    it fakes, with the same failure contract: a model that cannot answer raises
    `ModelCallError` and is left out of the vote.
    """

    async def infer(self, x: npt.NDArray[np.float32], version: str | None = None) -> ModelOutput:
        """Score a batch with `version` (None: the default one); ModelCallError if it cannot."""
        ...

    async def close(self) -> None:
        """Release what the client holds (channels, batching workers)."""
        ...


class CircuitBreaker:
    """Closed -> open after `threshold` consecutive failures; half-open after `cooldown_s`.

    In half-open state one call is let through: success closes the circuit, failure opens it
    again for another cool-down.
    """

    def __init__(self, threshold: int = 3, cooldown_s: float = 5.0) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.failures = 0
        self.opened_at: float | None = None

    @property
    def state(self) -> str:
        """closed, open or half-open."""
        if self.opened_at is None:
            return "closed"
        if time.monotonic() - self.opened_at >= self.cooldown_s:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        """Whether a call may be attempted now."""
        return self.state != "open"

    def success(self) -> None:
        """A call succeeded."""
        self.failures = 0
        self.opened_at = None

    def failure(self) -> None:
        """A call failed (after its retries)."""
        self.failures += 1
        if self.failures >= self.threshold or self.opened_at is not None:
            self.opened_at = time.monotonic()


class V2ModelClient:
    """Async V2 gRPC client of one model endpoint."""

    def __init__(self, name: ModelName, endpoint: EndpointConfig, breaker: CircuitBreaker) -> None:
        if endpoint.grpc_target is None:
            raise ValueError(f"serving.endpoints.{name.value} has no grpc_target")
        self.name = name
        self.endpoint = endpoint
        self.breaker = breaker
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None

    def _ensure_channel(self) -> Any:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(
                self.endpoint.grpc_target or "",
                options=[
                    ("grpc.max_send_message_length", 64 * 1024 * 1024),
                    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ],
            )
            self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        return self._stub

    async def infer(self, x: npt.NDArray[np.float32], version: str | None = None) -> ModelOutput:
        """Score a batch; raises ModelCallError when the model cannot answer in time.

        Batches over MAX_REQUEST_BYTES are split into concurrent calls (a server refuses an
        oversized message outright, and the model would be left out of every large batch).
        """
        row_bytes = max(1, x[:1].nbytes)
        rows = max(1, MAX_REQUEST_BYTES // row_bytes)
        if len(x) <= rows:
            return await self._infer_one(x, version)
        parts = await asyncio.gather(
            *(self._infer_one(x[i : i + rows], version) for i in range(0, len(x), rows))
        )
        versions = {p.version for p in parts}
        if len(versions) > 1:  # a rollout between the calls: do not mix two models' scores
            raise ModelCallError(f"{self.name.value}: parts answered by versions {versions}")
        types = [p.anomaly_type for p in parts]
        return ModelOutput(
            score=np.concatenate([p.score for p in parts]),
            anomaly_type=None if any(t is None for t in types)
            else np.concatenate([t for t in types if t is not None]),
            version=parts[0].version,
        )  # fmt: skip

    async def _infer_one(self, x: npt.NDArray[np.float32], version: str | None) -> ModelOutput:
        if not self.breaker.allow():
            raise ModelCallError(f"{self.name.value}: circuit open after repeated failures")
        stub = self._ensure_channel()
        request = pb.ModelInferRequest(
            model_name=self.name.value,
            model_version=version or "",
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="features", datatype="FP32", shape=list(x.shape)
                )
            ],
            raw_input_contents=[np.ascontiguousarray(x, dtype="<f4").tobytes()],
        )
        timeout = self.endpoint.timeout_ms / 1000.0
        attempts = self.endpoint.retries + 1
        last: str = ""
        for attempt in range(attempts):
            try:
                response = await stub.ModelInfer(request, timeout=timeout)
                output = _decode(response, len(x))
                self.breaker.success()
                return output
            except grpc.aio.AioRpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
                if exc.code() not in _RETRYABLE or attempt + 1 == attempts:
                    break
                await asyncio.sleep(random.uniform(0.5, 1.5) * 0.01 * 2**attempt)
            except ValueError as exc:  # a malformed answer: no point retrying
                last = str(exc)
                break
        self.breaker.failure()
        raise ModelCallError(f"{self.name.value}: {last}")

    async def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None


def _decode(response: Any, rows: int) -> ModelOutput:
    tensors: dict[str, np.ndarray] = {}
    raw = list(response.raw_output_contents)
    for i, out in enumerate(response.outputs):
        dtype = _DTYPES.get(out.datatype)
        if dtype is None:
            raise ValueError(f"unexpected output datatype {out.datatype}")
        if i < len(raw):
            tensors[out.name] = np.frombuffer(raw[i], dtype=dtype)
        else:  # servers may answer with typed contents instead of raw bytes
            contents = out.contents
            values = (
                contents.fp32_contents if out.datatype == "FP32"
                else contents.int_contents if out.datatype == "INT32"
                else contents.int64_contents if out.datatype == "INT64"
                else contents.fp64_contents
            )  # fmt: skip
            tensors[out.name] = np.asarray(values, dtype=dtype)
    score = tensors.get("score")
    if score is None or score.size != rows:
        raise ValueError(f"expected {rows} scores, got {None if score is None else score.size}")
    types = tensors.get("anomaly_type")
    return ModelOutput(
        score=score.astype(np.float64),
        anomaly_type=types.astype(np.int64) if types is not None else None,
        version=response.model_version,
    )
