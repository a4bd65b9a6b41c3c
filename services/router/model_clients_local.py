"""Scoring with registry models in this process, through the model server's own code.

`anomaly replay --models registry` (a laptop backtest, no servers) needs model clients that
answer exactly as the V2 servers would. `InProcessModelClient` therefore does not score on
its own: it builds the same KServe `InferRequest` the gRPC door decodes, hands it to the same
`VersionedModel` the server runs (validation, dynamic batcher, runtime choice, calibration),
and reads the same outputs back. Only the network hop is missing, so a served and an
in-process replay of one stream give the same scores.

It is a `ModelClient` (the scoring core's protocol, as `V2ModelClient` is), with the same
failure contract: anything the model refuses is a `ModelCallError`, so the core leaves the
model out of the vote and marks the decisions degraded.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from kserve.errors import InvalidInput, ModelNotFound
from kserve.protocol.infer_type import InferInput, InferRequest
from prometheus_client import CollectorRegistry

from services.common.config import PlatformConfig
from services.common.model_names import ModelName
from services.router.model_clients import ModelCallError, ModelOutput
from services.serving.metrics import ServingMetrics
from services.serving.server import build_models
from services.serving.v2_model import INPUT_NAME, VersionedModel


class InProcessModelClient:
    """One registry model kind, loaded here, called like a V2 endpoint."""

    def __init__(self, model: VersionedModel) -> None:
        self.name = model.kind
        self.model = model

    @property
    def default_version(self) -> str:
        """The version that answers when a call names none (flags, else promoted, else latest)."""
        return self.model.default_version

    async def infer(self, x: npt.NDArray[np.float32], version: str | None = None) -> ModelOutput:
        """Score a batch; raises ModelCallError when the model refuses it."""
        tensor = InferInput(INPUT_NAME, list(x.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(x, dtype=np.float32), binary_data=True)
        # from_grpc: answers come back as raw bytes, as they do for the router's gRPC calls.
        request = InferRequest(
            self.name.value, [tensor], from_grpc=True, model_version=version or None
        )
        try:
            response = await self.model.predict(request)
        except (InvalidInput, ModelNotFound) as exc:
            raise ModelCallError(f"{self.name.value}: {exc}") from None
        outputs = {out.name: out.as_numpy() for out in response.outputs}
        score = outputs.get("score")
        if score is None or score.size != len(x):
            got = None if score is None else score.size
            raise ModelCallError(f"{self.name.value}: expected {len(x)} scores, got {got}")
        types = outputs.get("anomaly_type")
        return ModelOutput(
            score=score.astype(np.float64),
            anomaly_type=types.astype(np.int64) if types is not None else None,
            version=str(response.model_version),
        )

    async def close(self) -> None:
        """Stop the model's batching workers, which belong to the caller's event loop."""
        await self.model.close()


def load_in_process_clients(
    config: PlatformConfig, names: list[ModelName]
) -> dict[ModelName, InProcessModelClient]:
    """Clients for `names`, loading the versions the flags (else the registry) select.

    Raises RegistryError when a model or pinned version is missing or fails verification.
    """
    metrics = ServingMetrics(CollectorRegistry())  # not the process-wide registry: no clashes
    out: dict[ModelName, InProcessModelClient] = {}
    for model in build_models(config, names, "default", metrics):
        out[model.kind] = InProcessModelClient(model)
    return out
